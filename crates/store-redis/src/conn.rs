//! [`RedisConnection`]: one handle over the three ways of reaching Redis
//! (standalone, Sentinel, Cluster), with the time limit every call gets and
//! the one place where Redis errors become [`StoreError`]s.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_domain::StoreError;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};
use redis_conn::{RedisMode, RedisTarget};

use crate::config::RedisConfig;

/// A cheap-to-clone handle to Redis in any [`RedisMode`]. Commands may be
/// sent concurrently through clones: they are multiplexed (and thereby
/// pipelined) over one connection per server.
///
/// Obtained from [`RedisConnection::connect`] or
/// [`crate::RedisStore::connection`]; [`crate::RedisClock`] takes one.
#[derive(Clone)]
pub struct RedisConnection {
    kind: ConnKind,
    timeout: Duration,
    /// Standalone only: how to open a connection of the calling thread's
    /// own (see [`keep_connections_on_this_thread`]).
    local: Option<Arc<LocalSpec>>,
}

/// What a thread needs to open its own connection to the same server.
struct LocalSpec {
    /// Tells this handle's connections apart from other handles' in the
    /// thread's table.
    key: usize,
    /// The standalone server's client (URL and TLS roots).
    client: redis::Client,
}

thread_local! {
    /// Whether this thread keeps connections of its own.
    static KEEPS_LOCAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread's own connections, by [`LocalSpec::key`]; `None` while
    /// one is being opened.
    static LOCAL: std::cell::RefCell<Vec<(usize, Option<ConnectionManager>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A thread's connection being opened: drops the `None` placeholder of its
/// key when dropped (a stored connection stays).
struct Opening(usize);

impl Drop for Opening {
    fn drop(&mut self) {
        let key = self.0;
        LOCAL.with(|l| {
            l.borrow_mut()
                .retain(|(k, conn)| *k != key || conn.is_some())
        });
    }
}

/// Marks the calling thread as one that sends its Redis commands over
/// connections of its own (standalone mode only; Sentinel and Cluster
/// always share).
///
/// For threads that each drive their own single-threaded runtime for the
/// life of the process, such as the HTTP server's workers. A command sent
/// over a shared connection hands off twice between threads (to the
/// connection's task on another runtime, and back with the reply), and a
/// thread woken from sleep costs tens of microseconds on a virtual machine.
/// With a connection of its own, the task that reads the reply runs on the
/// same thread as the request that waits for it. The connection is opened
/// by the thread's first command; until it is open, and whenever opening
/// fails, commands go over the shared connection.
pub fn keep_connections_on_this_thread() {
    KEEPS_LOCAL.with(|k| k.set(true));
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            ConnKind::Standalone(_) => "standalone",
            ConnKind::Sentinel(_) => "sentinel",
            ConnKind::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisConnection")
            .field("mode", &kind)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The connection kinds. Each implements [`ConnectionLike`], so scripts and
/// commands run the same way on all three.
#[derive(Clone)]
pub(crate) enum ConnKind {
    /// Reconnects by itself after a failed command (see [`connect_standalone`]).
    Standalone(ConnectionManager),
    /// Asks Sentinel for the primary and re-asks after a connection error.
    Sentinel(SentinelConn),
    /// Routes each command by the slot of its first key.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Connects in the configured mode. Fails with
    /// [`StoreError::Unavailable`] within `config.command_timeout` when Redis
    /// cannot be reached, and with [`StoreError::Other`] when the
    /// configuration itself is unusable (a malformed URL).
    pub async fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let timeout = config.command_timeout;
        let target = &config.redis;
        let (kind, standalone) = within(timeout, "connect", async {
            Ok(match &target.mode {
                RedisMode::Standalone => {
                    let client = target.client().map_err(other)?;
                    let conn = connect_standalone(client.clone(), timeout).await?;
                    (ConnKind::Standalone(conn), Some(client))
                }
                RedisMode::Sentinel {
                    master_name,
                    sentinels,
                } => {
                    let client = target
                        .sentinel_client(master_name, sentinels)
                        .map_err(other)?;
                    let conn = SentinelConn::connect(client, timeout).await?;
                    (ConnKind::Sentinel(conn), None)
                }
                RedisMode::Cluster { .. } => (
                    ConnKind::Cluster(connect_cluster(target, timeout).await?),
                    None,
                ),
            })
        })
        .await
        .map_err(|e| match e {
            StoreError::Other(m) => StoreError::Other(format!(
                "cannot connect to Redis at {}: {m}",
                target.redacted()
            )),
            other => other,
        })?;
        static NEXT_KEY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let local = standalone.map(|client| {
            Arc::new(LocalSpec {
                key: NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                client,
            })
        });
        Ok(Self {
            kind,
            timeout,
            local,
        })
    }

    /// The limit applied to every call made through this handle.
    pub fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether this is a Redis Cluster connection, where one script may
    /// touch only the keys of one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.kind, ConnKind::Cluster(_))
    }

    /// A clone of the underlying connection, to send commands through.
    pub(crate) fn kind(&self) -> ConnKind {
        self.kind.clone()
    }

    /// The connection to send through from this thread: its own when it
    /// keeps one (opened here on first use), the shared one otherwise.
    async fn kind_here(&self) -> ConnKind {
        let Some(spec) = &self.local else {
            return self.kind();
        };
        if !KEEPS_LOCAL.with(std::cell::Cell::get) {
            return self.kind();
        }
        let found = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            match l.iter().find(|(k, _)| *k == spec.key) {
                Some((_, conn)) => Some(conn.clone()),
                None => {
                    l.push((spec.key, None));
                    None
                }
            }
        });
        match found {
            Some(Some(conn)) => ConnKind::Standalone(conn),
            // Being opened by another task of this thread.
            Some(None) => self.kind(),
            None => {
                // Clears the placeholder unless the connection was stored,
                // also when this call is cancelled (its command timed out)
                // while connecting: the next command tries again.
                let _opening = Opening(spec.key);
                match connect_standalone(spec.client.clone(), self.timeout).await {
                    Ok(conn) => {
                        LOCAL.with(|l| {
                            let mut l = l.borrow_mut();
                            if let Some(slot) = l.iter_mut().find(|(k, _)| *k == spec.key) {
                                slot.1 = Some(conn.clone());
                            }
                        });
                        ConnKind::Standalone(conn)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open this thread's own Redis connection; sharing");
                        self.kind()
                    }
                }
            }
        }
    }

    /// Runs the request `make` builds (on a clone of this connection) under
    /// the command timeout, mapping errors. `what` names the operation in
    /// error messages.
    ///
    /// A request refused at connect time never reached a server, so it is
    /// sent once more: the refusal may be the stale outcome of a reconnect
    /// attempted while Redis was down, and the retry (which starts a fresh
    /// attempt) lets the first call after Redis is back succeed.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        mut make: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(ConnKind) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        within(self.timeout, what, async {
            let kind = self.kind_here().await;
            match make(kind.clone()).await {
                Err(e) if e.is_connection_refusal() => make(kind).await,
                other => other,
            }
            .map_err(|e| map_error(what, e))
        })
        .await
    }

    /// Runs `script` with `keys` and `args` in one round trip (under
    /// [`Self::run`]'s time limit and error mapping).
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        script: &redis::Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        self.eval_with(what, script, keys, args).await
    }

    /// [`Self::eval`] with arguments of any byte form (borrowed ones are
    /// not copied first).
    pub(crate) async fn eval_with<T: redis::FromRedisValue, A: AsRef<[u8]> + Sync>(
        &self,
        what: &'static str,
        script: &redis::Script,
        keys: &[&str],
        args: &[A],
    ) -> Result<T, StoreError> {
        self.run(what, |mut conn| async move {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(arg.as_ref());
            }
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Redis `TIME` as microseconds since the Unix epoch. In Cluster mode it
    /// always asks the primary of one fixed slot, so that every instance
    /// reads the same server's clock.
    pub(crate) async fn server_time_us(&self) -> Result<i64, StoreError> {
        let value = self
            .run("TIME", |conn| async move {
                let cmd = redis::cmd("TIME");
                match conn {
                    ConnKind::Cluster(mut c) => {
                        let route = Route::with_key("{p00}", SlotAddr::Master);
                        c.route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await
                    }
                    mut other => cmd.query_async::<Value>(&mut other).await,
                }
            })
            .await?;
        let (secs, micros): (i64, i64) = redis::from_redis_value(value)
            .map_err(|e| StoreError::Other(format!("unexpected TIME reply: {e}")))?;
        Ok(secs.saturating_mul(1_000_000).saturating_add(micros))
    }
}

/// Runs `fut` for at most `limit`; past it, [`StoreError::Unavailable`].
async fn within<T>(
    limit: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: no answer from Redis within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Whether an error means "Redis is not reachable (right now)": the caller
/// gets a 503 and may retry. Everything else (a refused password, a script
/// error, a reply of the wrong shape) is a fault worth a 500: retrying
/// would not help.
pub(crate) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// The one mapping from Redis errors to store errors.
pub(crate) fn map_error(what: &'static str, e: RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("{what}: {e}"))
    } else {
        StoreError::Other(format!("{what}: {e}"))
    }
}

/// A configuration the client library refused (a malformed URL): retrying
/// will not help.
fn other(e: RedisError) -> StoreError {
    StoreError::Other(e.to_string())
}

/// A standalone connection that reconnects by itself.
///
/// The manager reconnects when a command fails on a dropped connection; the
/// attempt is shared by all callers. It is given no retries of its own: a
/// refused connect then fails at once (a fast 503) and the next call starts
/// a fresh attempt, so the store recovers on the first call after Redis is
/// back instead of after a backoff. Connect and response timeouts equal the
/// command timeout, which bounds a black-holed server the same way.
async fn connect_standalone(
    client: redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| map_error("connect", e))
}

/// A cluster connection from the target's seed nodes.
async fn connect_cluster(
    target: &RedisTarget,
    timeout: Duration,
) -> Result<ClusterConnection, StoreError> {
    let client = target
        .cluster_builder(timeout)
        // Redirections (MOVED/ASK) during resharding need a few quick retries;
        // the command timeout still bounds the whole call.
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(50)
        .build()
        .map_err(other)?;
    client
        .get_async_connection()
        .await
        .map_err(|e| map_error("connect", e))
}

/// A connection to the primary Sentinel names, re-resolved after errors.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    inner: Arc<SentinelInner>,
}

struct SentinelInner {
    /// A tokio mutex: resolving the primary awaits Sentinel, and concurrent
    /// callers should wait for that one resolution rather than start their own.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The current primary's connection. A std mutex: it is only held to
    /// clone or replace the handle, never across an await.
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    /// Resolves the primary once, so an unreachable Sentinel fails the start.
    async fn connect(client: SentinelClient, timeout: Duration) -> Result<Self, StoreError> {
        let conn = Self {
            inner: Arc::new(SentinelInner {
                client: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout)),
            }),
        };
        conn.get().await.map_err(|e| map_error("connect", e))?;
        Ok(conn)
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        // A poisoned lock only means a panic while swapping an Option: the
        // value inside is still a valid (possibly stale) handle.
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, conn: Option<MultiplexedConnection>) {
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
    }

    /// The primary's connection, asking Sentinel when there is none.
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let mut client = self.inner.client.lock().await;
        // Another caller may have resolved it while we waited for the lock.
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = client
            .async_get_client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        self.set(Some(conn.clone()));
        Ok(conn)
    }

    /// Forgets the primary after an error that suggests it moved or died
    /// (a failover demotes it to a read-only replica), so the next call asks Sentinel.
    fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result
            && (is_unavailable(e) || e.is_unrecoverable_error())
        {
            self.set(None);
        }
        result
    }
}

impl ConnectionLike for ConnKind {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(s) => Box::pin(async move {
                let result = async { s.get().await?.req_packed_command(cmd).await }.await;
                s.check(result)
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(s) => Box::pin(async move {
                let result = async {
                    s.get()
                        .await?
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                .await;
                s.check(result)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Sentinel(s) => s.cached().map_or(0, |c| c.get_db()),
        }
    }
}
