//! Helpers shared by the bus's integration tests: the Redis to test against,
//! Redis servers a test starts and kills itself, sessions, and waiting with
//! a deadline so that a broken bus fails a test instead of hanging it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bus_redis::{RedisBus, RedisBusConfig, RedisBusTasks};
use futures_util::StreamExt;
use kairos_domain::{BusMessage, Session, SessionConfig, SessionId, Subscription, machine};
use tokio::sync::watch;

#[allow(unused_imports)] // Each test binary uses its own part of this module.
pub(crate) use test_support::{free_port, redis_server_binary, redis_url};

/// A fresh random session id, so that concurrent tests never share a channel.
pub(crate) fn random_id() -> SessionId {
    SessionId::from_uuid(uuid::Uuid::new_v4())
}

/// A session with the given id and version.
pub(crate) fn session(id: SessionId, version: u64) -> Session {
    let config = SessionConfig::parse(&test_support::chess(60_000, 0)).expect("a valid config");
    let (mut state, _) = machine::create(config, id, None, 1_000);
    state.version = version;
    state
}

/// The `Updated` message of a session at a version.
pub(crate) fn update(id: SessionId, version: u64) -> BusMessage {
    BusMessage::Updated {
        state: Arc::new(session(id, version)),
        events: vec![],
        at_ms: 1_000 + version as i64,
    }
}

/// The version an `Updated` message carries.
pub(crate) fn version_of(message: &BusMessage) -> Option<u64> {
    match message {
        BusMessage::Updated { state, .. } => Some(state.version),
        _ => None,
    }
}

/// A bus instance (one "server") with its shutdown switch.
pub(crate) struct Instance {
    pub(crate) bus: RedisBus,
    stop: watch::Sender<bool>,
    tasks: Option<RedisBusTasks>,
}

impl Instance {
    /// Connects a bus with `config`, tuned for tests: fast pings and reconnects.
    pub(crate) async fn start(mut config: RedisBusConfig) -> Self {
        config.ping_interval = Duration::from_millis(200);
        config.command_timeout = Duration::from_millis(500);
        config.reconnect_min = Duration::from_millis(20);
        config.reconnect_max = Duration::from_millis(200);
        let (stop, shutdown) = watch::channel(false);
        let (bus, tasks) = RedisBus::connect(config, shutdown)
            .await
            .expect("the bus connects");
        Self {
            bus,
            stop,
            tasks: Some(tasks),
        }
    }

    /// Flips the shutdown signal and waits for the tasks, at most 5 s.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(tasks) = self.tasks.take() {
            tokio::time::timeout(Duration::from_secs(5), tasks.join())
                .await
                .expect("the bus tasks stop within 5 s of shutdown");
        }
    }
}

/// The next message of a subscription, failing the test after 5 s.
pub(crate) async fn next(subscription: &mut Subscription) -> BusMessage {
    tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a message within 5 s")
        .expect("the subscription is still open")
}

/// Polls `condition` every 20 ms until it holds, failing the test after `limit`.
pub(crate) async fn eventually(
    what: &str,
    limit: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A command connection to a Redis, for assertions (`PUBSUB NUMSUB`, ...).
pub(crate) async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// How many clients subscribe to a (classic or sharded) channel.
pub(crate) async fn subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    command: &str,
    channel: &str,
) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg(command)
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB answers");
    count
}

/// The channel a session's messages travel on, with the default prefix.
pub(crate) fn channel(id: SessionId) -> String {
    format!("kairos:{{{id}}}:bus")
}

/// A `redis-server` this test started; killed (by pid) and its directory
/// removed when dropped, whatever the test did.
pub(crate) struct RedisProcess {
    child: Option<Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisProcess {
    /// Starts a throwaway server on a free port, with `extra` arguments.
    pub(crate) async fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("bus-redis-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.restart().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a frozen host that
    /// keeps its TCP connections open but never answers.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Starts the server again on the same port and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        eventually(
            "redis-server answers PING",
            Duration::from_secs(5),
            async || match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            },
        )
        .await;
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
