//! Helpers shared by the Redis integration tests: the test Redis from
//! `cargo xtask test`, stores with a private key prefix, session builders,
//! a raw connection to look at keys, and a Redis server of our own.

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different subset.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kairos_domain::{Event, Session, SessionConfig, SessionId, SessionStore, StoreError, machine};
use store_redis::{PARTITIONS, RedisConfig, RedisStore, partition_of};

pub use test_support::{free_port, redis_url};

/// A configuration for the shared Redis with a prefix of its own, so tests
/// running concurrently never see each other's keys.
pub fn config() -> RedisConfig {
    let mut config = RedisConfig::new(redis_url());
    config.key_prefix = format!("kt:{}:", uuid::Uuid::new_v4().simple());
    config
}

/// A store on a fresh prefix, outbox on.
pub async fn store() -> (RedisStore, RedisConfig) {
    let config = config();
    let store = RedisStore::connect(&config)
        .await
        .expect("connects to the test Redis");
    (store, config)
}

/// The sessions `claim_due` claimed, sorted, checking on the way that each
/// claim carries the session's current stored state.
pub async fn claim_ids(
    store: &RedisStore,
    now_ms: i64,
    limit: usize,
    lease_ms: i64,
) -> Result<Vec<SessionId>, StoreError> {
    let claimed = store.claim_due(now_ms, limit, lease_ms).await?;
    let mut ids = Vec::with_capacity(claimed.len());
    for c in claimed {
        let stored = store.load(c.id).await?;
        assert!(stored.is_some(), "claimed {} has no state", c.id);
        assert_eq!(
            c.state, stored,
            "the claim returns the stored state of {}",
            c.id
        );
        ids.push(c.id);
    }
    ids.sort();
    Ok(ids)
}

/// A raw connection, to inspect keys the way an operator would.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

/// The key names of a session, as documented in `store_redis::keys`.
pub struct SessionKeys {
    pub state: String,
    pub deadlines: String,
    pub outbox: String,
}

pub fn keys_of(config: &RedisConfig, id: &SessionId) -> SessionKeys {
    let tag = format!("{}{{p{:02}}}", config.key_prefix, partition_of(id));
    SessionKeys {
        state: format!("{tag}:s:{id}"),
        deadlines: format!("{tag}:deadlines"),
        outbox: format!("{tag}:outbox"),
    }
}

/// Every partition's outbox key.
pub fn outbox_keys(config: &RedisConfig) -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| format!("{}{{p{p:02}}}:outbox", config.key_prefix))
        .collect()
}

/// Redis `TIME` in ms.
pub async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

pub fn new_id() -> SessionId {
    SessionId::from_uuid(uuid::Uuid::new_v4())
}

/// A pending two-player chess clock and its `session_created` event.
pub fn chess(bank_ms: i64, now: i64) -> (Session, Event) {
    with_participants(2, bank_ms, now)
}

/// A pending per-participant session with `n` participants.
pub fn with_participants(n: usize, bank_ms: i64, now: i64) -> (Session, Event) {
    let participants: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"participant_id": format!("p{i}"), "total_time_ms": bank_ms}))
        .collect();
    let config = SessionConfig::parse(&serde_json::json!({
        "sync_mode": "per_participant",
        "participants": participants,
        "increment_ms": 1000,
        "metadata": {"table": 7}
    }))
    .expect("a valid config");
    machine::create(config, new_id(), Some("owner".into()), now)
}

/// The state after `state` with its version bumped (what a commit writes).
pub fn bumped(state: &Session) -> Session {
    let mut next = state.clone();
    next.version += 1;
    next.updated_at_ms += 1;
    next
}

/// A `redis-server` of the test's own, on a free loopback port, in a temp
/// directory, with AOF on so that restarts keep the data. Killed by pid on drop.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    /// Arguments after the common ones (or a config file first, for Sentinel).
    extra: Vec<String>,
    /// Listens on a TLS port only (`--port 0 --tls-port <port>`).
    tls: bool,
    child: Option<Child>,
}

impl OwnRedis {
    /// A plain server with AOF on.
    pub fn start() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with extra arguments (cluster mode, ...).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self::prepare();
        server.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        server.restart();
        server
    }

    /// A server listening only on a TLS port (its `port`), with `extra`
    /// arguments naming the certificate, key and CA files.
    pub fn start_tls(extra: &[&str]) -> Self {
        let mut server = Self::prepare();
        server.tls = true;
        server.extra = extra.iter().map(|s| (*s).to_owned()).collect();
        server.restart();
        server
    }

    /// A Sentinel monitoring the primary on `primary_port` as `master_name`
    /// (quorum 1: it is the only Sentinel).
    pub fn start_sentinel(master_name: &str, primary_port: u16) -> Self {
        Self::start_sentinel_with(master_name, primary_port, &[])
    }

    /// [`Self::start_sentinel`] with more `sentinel <option> <master_name>
    /// <value>` lines, e.g. `("down-after-milliseconds", "500")`.
    pub fn start_sentinel_with(
        master_name: &str,
        primary_port: u16,
        options: &[(&str, &str)],
    ) -> Self {
        let mut server = Self::prepare();
        let conf = server.dir.join("sentinel.conf");
        let mut text = format!("sentinel monitor {master_name} 127.0.0.1 {primary_port} 1\n");
        for (option, value) in options {
            text.push_str(&format!("sentinel {option} {master_name} {value}\n"));
        }
        std::fs::write(&conf, text).expect("writes sentinel.conf");
        // redis-server takes the config file first, then `--sentinel`.
        server.extra = vec![conf.display().to_string(), "--sentinel".into()];
        server.restart();
        server
    }

    fn prepare() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "kairos-store-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            port,
            dir,
            extra: Vec::new(),
            tls: false,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again, on the same port and directory) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let binary = test_support::redis_server_binary();
        let (config_file, options) = match self.extra.first() {
            Some(first) if !first.starts_with("--") => (vec![first.clone()], &self.extra[1..]),
            _ => (Vec::new(), &self.extra[..]),
        };
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new(binary)
            .args(config_file)
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.tls {
                // Up once the TLS port accepts connections.
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
            } else if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server by pid: a stopped
    /// server still accepts connections (the kernel does) but never answers.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("runs kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Kills the server (SIGKILL, by pid) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped (SIGSTOP) process still dies of SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A store on a Redis of the test's own (whose command counts are the
/// test's alone), without persistence, keys under `prefix`. Keep the
/// server: dropping it kills Redis.
pub async fn own_store(prefix: &str) -> (OwnRedis, store_redis::RedisStore) {
    let server = OwnRedis::start_with(&["--appendonly", "no"]);
    let mut config = store_redis::RedisConfig::new(server.url());
    config.key_prefix = prefix.into();
    let store = store_redis::RedisStore::connect(&config)
        .await
        .expect("connects");
    (server, store)
}

/// Script calls Redis has run, from `INFO commandstats` (`EVALSHA` and
/// `EVAL`, whichever the client used).
pub async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    command_calls(conn, &["evalsha", "eval"]).await
}

/// Calls Redis served so far of the commands `names` (lower case), those
/// run inside scripts included (`INFO commandstats`).
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, names: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .filter(|l| {
            l.strip_prefix("cmdstat_")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(name, _)| names.contains(&name))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
