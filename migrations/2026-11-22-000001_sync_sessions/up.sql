-- sync_sessions: one summary row per session id, for operators and
-- analytics ("which sessions ran yesterday, how did they end"). It is written
-- only by the audit writer (crates/audit-diesel), from the events it stores,
-- in the same transaction as those events; the hot path never touches it.
--
-- Adapted from the seed's table (seeds/003, "PostgreSQL Schema"):
-- * modes and statuses are text rather than enum types: a new mode or status
--   is then a constraint change, not an ALTER TYPE, and an unknown value can
--   never wedge the audit drain on an enum cast;
-- * sync_mode and created_at are nullable: the outbox may redeliver an older
--   batch after a newer one (a consumer died holding it), so a row can exist
--   before its session_created event has been written;
-- * the config columns (time_per_cycle_ms, ...) and metadata are left out:
--   events do not carry them, and the live state belongs to Redis;
-- * last_version and updated_at (the instant of the latest event applied)
--   tell how far the trail of a session has been written.
--
-- Every audit batch updates the rows of the sessions it touches, so the
-- table is updated far more than it grows: fillfactor 70 leaves room on each
-- page for HOT updates (no indexed column changes on an ordinary update),
-- which keeps the created_at index and the table from bloating between vacuums.
CREATE TABLE sync_sessions (
    session_id   uuid PRIMARY KEY,
    sync_mode    text,
    final_status text CHECK (final_status IN ('completed', 'cancelled', 'expired')),
    created_at   timestamptz,
    started_at   timestamptz,
    completed_at timestamptz,
    last_version bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);

CREATE INDEX idx_sync_sessions_created ON sync_sessions (created_at DESC);
