//! How pool, connection and query errors become [`AuditError`]. The split
//! matters to operators, not to the audit worker (it retries either way):
//! `Unavailable` means "PostgreSQL cannot be reached or refused us for now",
//! `Other` means "something is wrong with what we sent or stored".
//!
//! Messages come from the driver and never contain the connection string.

use diesel::ConnectionError;
use diesel::result::{DatabaseErrorKind, Error as QueryError};
use diesel_async::pooled_connection::PoolError as ManagerError;
use diesel_async::pooled_connection::deadpool::PoolError;
use kairos_domain::AuditError;

/// An error from taking a connection out of the pool.
pub(crate) fn from_pool(e: PoolError) -> AuditError {
    match e {
        PoolError::Backend(ManagerError::ConnectionError(e)) => from_connection(e),
        PoolError::Backend(ManagerError::QueryError(e)) => from_query(e),
        PoolError::Timeout(kind) => AuditError::Unavailable(format!(
            "timed out waiting for a database connection ({kind:?})"
        )),
        PoolError::Closed => AuditError::Unavailable("the connection pool is closed".into()),
        other => AuditError::Other(format!("connection pool: {other}")),
    }
}

/// An error from establishing a connection: every kind but a malformed
/// connection string means the database is out of reach (down, refusing,
/// wrong credentials, not accepting connections yet).
pub(crate) fn from_connection(e: ConnectionError) -> AuditError {
    match e {
        ConnectionError::InvalidConnectionUrl(_) => {
            AuditError::Other("invalid database connection string".into())
        }
        other => AuditError::Unavailable(format!("cannot connect to the database: {other}")),
    }
}

/// An error from running a statement.
pub(crate) fn from_query(e: QueryError) -> AuditError {
    match &e {
        // The connection broke, or the server is a read-only standby (a
        // failover in progress), or a serialization conflict: all pass.
        QueryError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ReadOnlyTransaction
            | DatabaseErrorKind::SerializationFailure,
            _,
        )
        | QueryError::BrokenTransactionManager => AuditError::Unavailable(format!("database: {e}")),
        _ => AuditError::Other(format!("database: {e}")),
    }
}

/// The whole operation took longer than the adapter allows (a database that
/// stopped answering without closing the connection).
pub(crate) fn timed_out(what: &str) -> AuditError {
    AuditError::Unavailable(format!("{what} timed out"))
}
