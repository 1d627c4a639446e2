//! [`PgAudit`]: the [`AuditSink`] on PostgreSQL, with the connection pool it
//! runs on and the partition maintenance the server schedules.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use diesel::pg::data_types::PgTimestamp;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use kairos_domain::{AuditError, AuditSink, Event, SessionId};
use tokio::sync::watch;

use crate::error;
use crate::rows::{self, EventColumns, EventRow, INSERT_EVENTS, SessionColumns, UPSERT_SESSIONS};
use crate::schema::sync_events;
use crate::url::DatabaseUrl;

/// Events per `INSERT` statement. The rows go as one array per column
/// (twelve parameters whatever their number); a larger batch is split into
/// several statements, still in one transaction, so that one statement's
/// arrays stay a few megabytes.
pub const MAX_ROWS_PER_INSERT: usize = 5_000;

/// Months of partitions to keep created ahead of the current one. Three
/// months leaves a whole quarter for a maintenance failure to be noticed
/// before events start landing in the default partition.
pub const DEFAULT_MONTHS_AHEAD: u32 = 3;

/// How often [`PgAudit::maintain_partitions`] runs. Partitions are created
/// months ahead, so this only has to run a few times a month; a few hours
/// also catches a database that was restored or recreated.
pub const PARTITION_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Settings of every pooled connection. `statement_timeout` turns a statement
/// stuck behind a lock into an error the worker retries instead of a stall;
/// `synchronous_commit = on` makes "committed" mean "durable" even if the
/// database's default was relaxed, as [`AuditSink::write`] promises.
const SESSION_SETTINGS: &str = "SET statement_timeout = 30000; \
     SET synchronous_commit = on; \
     SET application_name = 'kairos-audit'";

/// Backstop for a database that stops answering without closing the
/// connection (statement_timeout never fires then). Dropping the future drops
/// the connection, which the pool then discards.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The backstop for partition maintenance, which may move a month of rows.
const PARTITION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a caller waits for a free connection, and for a new one to be
/// established, before the database counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// The audit trail on PostgreSQL.
///
/// Cheap to clone (the pool is shared). Holds a pool of at most `pool_size`
/// connections, established on demand: [`PgAudit::connect`] does not contact
/// the database, so the server starts, and serves, while PostgreSQL is down;
/// the outbox keeps the events until a write succeeds.
#[derive(Clone)]
pub struct PgAudit {
    pool: Pool<AsyncPgConnection>,
    /// For `Debug` and logs: the connection string with its password masked.
    database: String,
}

impl fmt::Debug for PgAudit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgAudit")
            .field("database", &self.database)
            .field("pool_max_size", &status.max_size)
            .field("pool_size", &status.size)
            .finish()
    }
}

impl PgAudit {
    /// Builds the pool. Establishes no connection yet (see the type's
    /// documentation); run [`run_migrations`](crate::run_migrations) first
    /// and [`PgAudit::ensure_partitions`] after.
    ///
    /// # Errors
    ///
    /// [`AuditError::Other`] if `pool_size` is 0 or the pool cannot be built.
    pub fn connect(
        database_url: impl Into<DatabaseUrl>,
        pool_size: usize,
    ) -> Result<Self, AuditError> {
        let url: DatabaseUrl = database_url.into();
        if pool_size == 0 {
            return Err(AuditError::Other(
                "the audit pool needs at least one connection".into(),
            ));
        }
        let mut config = ManagerConfig::<AsyncPgConnection>::default();
        config.custom_setup = Box::new(|url| Box::pin(establish(url.to_owned())));
        let manager = AsyncDieselConnectionManager::new_with_config(url.expose(), config);
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| AuditError::Other(format!("building the audit pool: {e}")))?;
        Ok(Self {
            pool,
            database: url.redacted(),
        })
    }

    /// Creates the monthly partitions of `sync_events` from the current month
    /// (UTC, by the database's clock) to `months_ahead` months after it, and
    /// returns how many were missing. Idempotent, and safe to run from every
    /// instance at once (the SQL function serializes callers).
    ///
    /// Call it after [`run_migrations`](crate::run_migrations) and then
    /// periodically, e.g. with [`PgAudit::maintain_partitions`]. If it never
    /// runs, nothing is lost: events of a month without a partition go to the
    /// default partition, and are moved into their month's partition when it
    /// is created (a write racing that move fails once and is retried by the
    /// audit worker; see the SQL function's comment in `migrations/`).
    ///
    /// # Errors
    ///
    /// [`AuditError::Unavailable`] if the database cannot be reached,
    /// [`AuditError::Other`] if `months_ahead` is over 1200 or the DDL fails.
    #[tracing::instrument(skip(self))]
    pub async fn ensure_partitions(&self, months_ahead: u32) -> Result<u32, AuditError> {
        #[derive(QueryableByName)]
        struct Created {
            #[diesel(sql_type = Integer)]
            created: i32,
        }
        let months = i32::try_from(months_ahead)
            .map_err(|_| AuditError::Other(format!("months_ahead {months_ahead} is too large")))?;
        let created = self
            .timed("ensuring partitions", PARTITION_TIMEOUT, async |conn| {
                conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                    // Moving a month's rows out of the default partition can
                    // outlast the pool's statement timeout; it runs rarely.
                    conn.batch_execute("SET LOCAL statement_timeout = 0")
                        .await?;
                    diesel::sql_query("SELECT kairos_ensure_event_partitions(now(), $1) AS created")
                        .bind::<Integer, _>(months)
                        .get_result::<Created>(conn)
                        .await
                })
                .await
            })
            .await?
            .created;
        let created = u32::try_from(created).unwrap_or_default();
        if created > 0 {
            tracing::info!(created, months_ahead, "created audit partitions");
        }
        Ok(created)
    }

    /// Runs [`PgAudit::ensure_partitions`] now and then every `every` until
    /// `shutdown` turns true (or its sender is dropped). Failures are logged
    /// and retried at the next tick. Meant to be spawned by the server beside
    /// its other workers; any number of instances may run it.
    pub async fn maintain_partitions(
        self,
        months_ahead: u32,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.ensure_partitions(months_ahead).await {
                tracing::warn!(error = %e, "audit partition maintenance failed; retried later");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Cheap liveness probe (`SELECT 1`), for `/health`.
    ///
    /// # Errors
    ///
    /// [`AuditError::Unavailable`] if the database cannot be reached.
    #[tracing::instrument(skip(self))]
    pub async fn ping(&self) -> Result<(), AuditError> {
        self.timed("ping", OPERATION_TIMEOUT, async |conn| {
            conn.batch_execute("SELECT 1").await
        })
        .await
    }

    /// Takes a connection and runs `op` on it within `limit`, mapping every
    /// failure to an [`AuditError`].
    pub(crate) async fn timed<R>(
        &self,
        what: &str,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Object<AsyncPgConnection>) -> QueryResult<R>,
    ) -> Result<R, AuditError> {
        let run = async {
            let mut conn = self.pool.get().await.map_err(error::from_pool)?;
            op(&mut conn).await.map_err(error::from_query)
        };
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| error::timed_out(what))?
    }
}

/// Opens one pooled connection and applies [`SESSION_SETTINGS`].
async fn establish(url: String) -> ConnectionResult<AsyncPgConnection> {
    let mut conn = crate::tls::connect(&url).await?;
    conn.batch_execute(SESSION_SETTINGS)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Inserts one statement's worth of events (see [`INSERT_EVENTS`]).
async fn insert_events(conn: &mut AsyncPgConnection, c: &EventColumns<'_>) -> QueryResult<usize> {
    diesel::sql_query(INSERT_EVENTS)
        .bind::<Array<SqlUuid>, _>(&c.event_id)
        .bind::<Array<SqlUuid>, _>(&c.session_id)
        .bind::<Array<BigInt>, _>(&c.version)
        .bind::<Array<Text>, _>(&c.event_type)
        .bind::<Array<Nullable<Text>>, _>(&c.participant_id)
        .bind::<Array<Nullable<Text>>, _>(&c.group_id)
        .bind::<Array<BigInt>, _>(&c.at_ms)
        .bind::<Array<Timestamptz>, _>(&c.at)
        .bind::<Array<Nullable<BigInt>>, _>(&c.time_remaining_ms)
        .bind::<Array<Nullable<BigInt>>, _>(&c.time_elapsed_ms)
        .bind::<Array<Nullable<Text>>, _>(&c.action)
        .bind::<Array<Jsonb>, _>(&c.metadata)
        .execute(conn)
        .await
}

/// Upserts the batch's session summaries (see [`UPSERT_SESSIONS`]).
async fn upsert_sessions(conn: &mut AsyncPgConnection, s: &SessionColumns) -> QueryResult<usize> {
    diesel::sql_query(UPSERT_SESSIONS)
        .bind::<Array<SqlUuid>, _>(&s.session_id)
        .bind::<Array<Nullable<Text>>, _>(&s.sync_mode)
        .bind::<Array<Nullable<Timestamptz>>, _>(&s.created_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(&s.started_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(&s.completed_at)
        .bind::<Array<Nullable<Text>>, _>(&s.final_status)
        .bind::<Array<BigInt>, _>(&s.last_version)
        .bind::<Array<Timestamptz>, _>(&s.updated_at)
        .execute(conn)
        .await
}

#[async_trait]
impl AuditSink for PgAudit {
    /// One transaction: the events as `INSERT ... SELECT FROM UNNEST ... ON
    /// CONFLICT DO NOTHING` statements of at most [`MAX_ROWS_PER_INSERT`]
    /// rows, then one upsert of `sync_sessions`. Returns after the commit, which is durable.
    #[tracing::instrument(skip_all, fields(events = events.len()))]
    async fn write(&self, events: &[Event]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let statements = rows::event_columns(events, MAX_ROWS_PER_INSERT)?;
        let sessions = rows::session_columns(events)?;
        let (statements, sessions) = (&statements, &sessions);
        self.timed("audit write", OPERATION_TIMEOUT, async |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                for columns in statements {
                    insert_events(conn, columns).await?;
                }
                upsert_sessions(conn, sessions).await?;
                Ok(())
            })
            .await
        })
        .await
    }

    /// Newest first by version, then `at_ms`, then write order (several
    /// events can share a version; the later one comes first).
    #[tracing::instrument(skip(self, session_id), fields(session_id = %session_id))]
    async fn history(
        &self,
        session_id: SessionId,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<Event>, AuditError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        use sync_events::dsl;
        let mut query = dsl::sync_events
            .filter(dsl::session_id.eq(*session_id.as_uuid()))
            .order((
                dsl::version.desc(),
                dsl::at_ms.desc(),
                dsl::write_seq.desc(),
            ))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select(EventRow::as_select())
            .into_boxed();
        if let Some(before) = before_ms {
            // The exact condition is on at_ms; the one on `at` is implied by
            // it (at is a non-decreasing function of at_ms) and lets
            // PostgreSQL skip the partitions of later months.
            let bound: PgTimestamp = rows::at_of(before);
            query = query
                .filter(dsl::at_ms.lt(before))
                .filter(dsl::at.le(bound));
        }
        let found = self
            .timed("history", OPERATION_TIMEOUT, async |conn| {
                query.load::<EventRow>(conn).await
            })
            .await?;
        found.into_iter().map(EventRow::into_event).collect()
    }
}
