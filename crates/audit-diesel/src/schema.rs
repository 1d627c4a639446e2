//! diesel's description of `sync_events`, kept by hand in step with
//! `migrations/` (the SQL there is the source of truth and explains it).
//! `sync_sessions` is only written by one hand-written upsert (see `rows`),
//! so it needs no description here.

diesel::table! {
    /// One row per audit event; partitioned by month on `at`.
    sync_events (event_id, at) {
        event_id -> Uuid,
        session_id -> Uuid,
        version -> Int8,
        event_type -> Text,
        participant_id -> Nullable<Text>,
        group_id -> Nullable<Text>,
        at_ms -> Int8,
        at -> Timestamptz,
        time_remaining_ms -> Nullable<Int8>,
        time_elapsed_ms -> Nullable<Int8>,
        action -> Nullable<Text>,
        metadata -> Jsonb,
        write_seq -> Int8,
    }
}
