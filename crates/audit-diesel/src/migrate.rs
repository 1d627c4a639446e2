//! [`run_migrations`]: applies the SQL in `migrations/`, embedded in the
//! binary so a deployment needs no diesel CLI and no files beside the server.
//!
//! diesel's migration harness is synchronous, and without libpq the only
//! synchronous connection is diesel-async's `AsyncConnectionWrapper`, which
//! blocks on the runtime; hence `spawn_blocking`.

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use kairos_domain::AuditError;

use crate::error;
use crate::url::DatabaseUrl;

/// The workspace's `migrations/` folder, compiled in.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory lock key held while migrating ('kairos_m' in hex). Several
/// instances starting at once would otherwise race on the migrations table
/// and on `CREATE TABLE`; with it, one migrates and the others then find
/// nothing pending.
const MIGRATION_LOCK: i64 = 0x6b61_6972_6f73_5f6d;

/// Applies every pending migration and returns the versions it applied
/// (empty when the schema was up to date).
///
/// Safe to call from every instance at start-up, concurrently: callers are
/// serialized by a PostgreSQL advisory lock. Call
/// [`PgAudit::ensure_partitions`](crate::PgAudit::ensure_partitions) after it.
///
/// # Errors
///
/// [`AuditError::Unavailable`] if the database cannot be reached,
/// [`AuditError::Other`] if a migration fails (nothing of it is applied: each
/// runs in a transaction).
#[tracing::instrument(skip_all, fields(database = tracing::field::Empty))]
pub async fn run_migrations(
    database_url: impl Into<DatabaseUrl>,
) -> Result<Vec<String>, AuditError> {
    let url: DatabaseUrl = database_url.into();
    // Display is redacted: the password never reaches the span.
    tracing::Span::current().record("database", tracing::field::display(&url));
    let applied = tokio::task::spawn_blocking(move || migrate_blocking(&url))
        .await
        .map_err(|e| AuditError::Other(format!("migration task failed: {e}")))??;
    if !applied.is_empty() {
        tracing::info!(applied = ?applied, "audit schema migrated");
    }
    Ok(applied)
}

fn migrate_blocking(url: &DatabaseUrl) -> Result<Vec<String>, AuditError> {
    // Our own connect (TLS per `sslmode`), driven by the runtime this
    // blocking thread belongs to.
    let conn = tokio::runtime::Handle::current()
        .block_on(crate::tls::connect(url.expose()))
        .map_err(error::from_connection)?;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .map_err(error::from_query)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| AuditError::Other(format!("migration failed: {e}")));
    // Also released when the connection closes, which follows at once; the
    // explicit unlock only avoids relying on that.
    if let Err(e) = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")) {
        tracing::debug!(error = %e, "releasing the migration lock failed; closing the connection releases it");
    }
    result
}
