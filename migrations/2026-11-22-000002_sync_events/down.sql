DROP FUNCTION kairos_ensure_event_partitions(timestamptz, int);
-- Dropping a partitioned table drops its partitions.
DROP TABLE sync_events;
