//! diesel's description of `sync_events` and `webhook_deliveries`, kept by
//! hand in step with `migrations/` (the SQL there is the source of truth and
//! explains it).
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

diesel::table! {
    /// One row per webhook delivery attempt.
    webhook_deliveries (webhook_id, sent_at_ms, event_id, attempt) {
        webhook_id -> Uuid,
        sent_at_ms -> Int8,
        event_id -> Uuid,
        attempt -> Int4,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
        latency_ms -> Int8,
    }
}
