-- sync_events: the audit trail, one row per event of contract section 5,
-- written in batches by the audit writer from the Redis outbox.
--
-- Partitioned by month on `at` so that old months can be detached, archived
-- or dropped without a long DELETE, and so that time-bounded queries prune.
--
-- Idempotence on event_id. PostgreSQL requires every unique constraint of a
-- partitioned table to include the partition key, so the key is
-- (event_id, at) rather than event_id alone. That still makes
-- `INSERT ... ON CONFLICT DO NOTHING` idempotent because `at` is not an
-- independent value: the writer derives it from the event's own at_ms (the
-- instant the event took effect, clamped to years 1..9999), and an event id
-- always comes with the same at_ms (ids are derived from session, creation
-- instant, version and position, and the outbox redelivers the committed
-- event verbatim). A duplicate therefore carries the same (event_id, at),
-- is routed to the same partition, and hits the same key. The one thing
-- that could split them, a row sitting in the DEFAULT partition while its
-- month's partition is created, is handled by kairos_ensure_event_partitions,
-- which moves such rows into the new partition before attaching it.
CREATE TABLE sync_events (
    event_id          uuid        NOT NULL,
    session_id        uuid        NOT NULL,
    version           bigint      NOT NULL,
    event_type        text        NOT NULL,
    participant_id    text,
    group_id          text,
    at_ms             bigint      NOT NULL,
    at                timestamptz NOT NULL,
    time_remaining_ms bigint,
    time_elapsed_ms   bigint,
    action            text,
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- Write order. Several events can share a version (a timeout that
    -- expires a participant and ends the session); within a version the
    -- history lists the later one first, and a batch is inserted in commit
    -- order, so this sequence is the tie-breaker.
    write_seq         bigserial   NOT NULL,
    PRIMARY KEY (event_id, at)
) PARTITION BY RANGE (at);

-- The history query: one session, newest first by version
-- (GET /v1/sessions/{id}/events). Each partition answers from its own copy
-- and a Merge Append keeps the order, so LIMIT stops early.
CREATE INDEX idx_sync_events_session_version
    ON sync_events (session_id, version DESC, at_ms DESC, write_seq DESC);
-- The seed's (session, time) index: one session over a time range.
CREATE INDEX idx_sync_events_session_at ON sync_events (session_id, at DESC);
-- The seed's event-type index, with time so "all timeouts last week" prunes too.
CREATE INDEX idx_sync_events_type_at ON sync_events (event_type, at DESC);

-- Anything outside the monthly partitions lands here rather than failing
-- the whole batch (and wedging the drain): an event from far in the past or
-- future, or a month whose partition was not created in time.
CREATE TABLE sync_events_default PARTITION OF sync_events DEFAULT;

-- Creates the monthly partitions (UTC months) from the month of from_ts to
-- `months` months after it, both included, skipping those that exist.
-- Returns how many it created. Safe to call concurrently and repeatedly:
-- callers are serialized by a transaction-scoped advisory lock.
--
-- A month whose rows already sit in the DEFAULT partition cannot simply be
-- created (PostgreSQL refuses while the default holds rows of the new
-- range), so the partition is built as a plain table, those rows are moved
-- into it, and it is attached. The default partition stays locked against
-- writes from the move to the commit, so no row of that month can slip in
-- between: a write blocked on that lock then fails PostgreSQL's partition
-- check on the default partition ("violates partition constraint") and the
-- audit worker retries it, rerouted to the new partition. This only happens
-- when a month is created while it is already receiving events, i.e. when
-- maintenance had stopped; months created ahead see no such race.
CREATE FUNCTION kairos_ensure_event_partitions(from_ts timestamptz, months int)
RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_first   timestamp := date_trunc('month', from_ts AT TIME ZONE 'UTC');
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_name    text;
    v_created int := 0;
BEGIN
    IF months IS NULL OR months < 0 OR months > 1200 THEN
        RAISE EXCEPTION 'months must be in 0..1200, got %', months;
    END IF;
    -- Serializes concurrent callers (instances starting together, the
    -- periodic maintenance of several instances). Key: 'kairos_part' in hex.
    PERFORM pg_advisory_xact_lock(x'6b6169726f735f70'::bigint);
    FOR i IN 0..months LOOP
        -- Month arithmetic on UTC wall time, so that boundaries do not move
        -- with the session's TimeZone setting.
        v_lo := (v_first + make_interval(months => i)) AT TIME ZONE 'UTC';
        v_hi := (v_first + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        v_name := 'sync_events_p' || to_char(v_first + make_interval(months => i), 'YYYY_MM');
        CONTINUE WHEN to_regclass(quote_ident(v_name)) IS NOT NULL;

        EXECUTE format('CREATE TABLE %I (LIKE sync_events INCLUDING DEFAULTS)', v_name);
        IF to_regclass('sync_events_default') IS NOT NULL THEN
            LOCK TABLE sync_events_default IN EXCLUSIVE MODE;
            EXECUTE format(
                'WITH moved AS (DELETE FROM sync_events_default WHERE at >= $1 AND at < $2 RETURNING *)
                 INSERT INTO %I SELECT * FROM moved', v_name)
                USING v_lo, v_hi;
        END IF;
        EXECUTE format('ALTER TABLE sync_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_lo, v_hi);
        v_created := v_created + 1;
    END LOOP;
    RETURN v_created;
END;
$$;

-- A database migrated by hand (diesel CLI) is usable at once; the service
-- keeps months ahead created (PgAudit::ensure_partitions).
SELECT kairos_ensure_event_partitions(now(), 2);
