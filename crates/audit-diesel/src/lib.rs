//! # audit-diesel
//!
//! The audit trail of SyncKairos on PostgreSQL: an
//! [`AuditSink`](kairos_domain::AuditSink) that the server's audit worker
//! feeds from the Redis outbox, and the history query behind
//! `GET /v1/sessions/{id}/events`. PostgreSQL is never on the hot path: a
//! database outage only delays the trail, because the outbox keeps the events
//! until [`PgAudit::write`](kairos_domain::AuditSink::write) succeeds, and
//! writes are idempotent on `event_id`, so a batch written twice is stored once.
//!
//! This is the only crate that knows SQL. It uses diesel's query builder
//! without libpq: connections go through diesel-async (tokio-postgres) and a
//! deadpool pool, and the embedded migrations run through diesel-async's
//! `AsyncConnectionWrapper`.
//!
//! # Wiring (for the server)
//!
//! ```no_run
//! # async fn wire() -> Result<(), kairos_domain::AuditError> {
//! use audit_diesel::{DatabaseUrl, PgAudit, DEFAULT_MONTHS_AHEAD};
//!
//! let url = DatabaseUrl::new("postgres://kairos:secret@db:5432/kairos");
//! audit_diesel::run_migrations(&url).await?; // serialized across instances
//! let audit = PgAudit::connect(&url, 8)?; // lazy: PostgreSQL may be down
//! audit.ensure_partitions(DEFAULT_MONTHS_AHEAD).await?; // then periodically:
//! // tokio::spawn(audit.clone().maintain_partitions(DEFAULT_MONTHS_AHEAD,
//! //     audit_diesel::PARTITION_MAINTENANCE_INTERVAL, shutdown_rx));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`url`]: [`DatabaseUrl`], the connection string with a redacting `Debug`
//!   and `Display`, so the password never reaches a log.
//! - `migrate`: [`run_migrations`], the embedded `migrations/` folder applied
//!   under an advisory lock.
//! - `audit`: [`PgAudit`]: the pool, [`AuditSink`](kairos_domain::AuditSink)
//!   (batched idempotent writes, history) and partition maintenance.
//! - `deliveries`: [`PgDeliveryLog`], the webhook delivery log
//!   ([`DeliveryLog`](kairos_domain::DeliveryLog)) in `webhook_deliveries`,
//!   on the same pool.
//! - `rows`: conversions between domain events and table rows, and the
//!   per-session summaries that feed `sync_sessions`.
//! - `schema`: diesel's description of `sync_events` and `webhook_deliveries`.
//! - `tls`: connections with the TLS the URL's `sslmode` asks for, as libpq
//!   reads it (`verify-full` with `sslrootcert` verifies the server).
//! - `error`: how pool, connection and query errors become
//!   [`AuditError`](kairos_domain::AuditError) (unreachable means `Unavailable`).
//!
//! # Tables
//!
//! `sync_events` (one row per event, range-partitioned by month on `at`,
//! primary key `(event_id, at)`) and `sync_sessions` (one summary row per
//! session: mode, lifecycle instants, final status, last version); and
//! `webhook_deliveries` (one row per webhook delivery attempt, kept whole:
//! the delivery log when PostgreSQL is configured). The SQL in
//! `migrations/` explains the choices.

#![warn(missing_docs)]

mod audit;
mod deliveries;
mod error;
mod migrate;
mod rows;
mod schema;
mod tls;
pub mod url;

pub use audit::{
    DEFAULT_MONTHS_AHEAD, MAX_ROWS_PER_INSERT, PARTITION_MAINTENANCE_INTERVAL, PgAudit,
};
pub use deliveries::PgDeliveryLog;
pub use migrate::run_migrations;
pub use url::DatabaseUrl;
