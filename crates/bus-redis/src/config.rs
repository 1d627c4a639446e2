//! [`RedisBusConfig`]: where the bus finds Redis (the [`RedisTarget`] shared
//! with the store) and how hard it tries, built by the server from its
//! settings and handed over in one piece.
//!
//! The bus picks its Pub/Sub flavour from the target's mode: classic
//! `PUBLISH`/`SUBSCRIBE` on a single primary (standalone, Sentinel), sharded
//! `SPUBLISH`/`SSUBSCRIBE` on Cluster, so a message only travels to the shard
//! that owns the session's slot instead of being broadcast to every node.

use std::time::Duration;

use redis_conn::{RedisMode, RedisTarget};

/// Default for [`RedisBusConfig::command_timeout`]. Longer than the store's:
/// a call here is a pipeline of up to [`RedisBusConfig::publish_batch`]
/// messages or a ping on the connection every subscription shares, and a
/// timed-out one costs a reconnection and a resync of every subscriber, not
/// one request's 503.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything [`crate::RedisBus::connect`] needs. Start from
/// [`RedisBusConfig::new`] (or [`RedisBusConfig::standalone`],
/// [`RedisBusConfig::sentinel`], [`RedisBusConfig::cluster`]) and adjust
/// the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBusConfig {
    /// Where Redis is: URL, mode, TLS roots (the same value the store gets).
    /// In Sentinel mode the URL's credentials log in to the primary.
    pub redis: RedisTarget,
    /// First segment of every channel name (`<prefix>:{<session id>}:bus`), so
    /// that several deployments can share one Redis without hearing each other.
    pub channel_prefix: String,
    /// Messages waiting for the publisher task. When full, `publish` drops the
    /// message (counted): a burst must not grow memory without bound, and
    /// clients recover a missed version from the store.
    pub publish_queue: usize,
    /// Most messages sent in one pipeline; bounds one round trip's size.
    pub publish_batch: usize,
    /// Messages a slow local subscriber may fall behind by before it receives
    /// `BusMessage::Lagged` instead of what it missed.
    pub local_capacity: usize,
    /// Time allowed for one Redis call (connect, `SUBSCRIBE`, `PING`, one
    /// pipeline of `PUBLISH`es) before it counts as failed.
    pub command_timeout: Duration,
    /// How often the idle subscriber connection is pinged. A connection that
    /// died without a TCP reset (a partition, a frozen host) is noticed within
    /// `ping_interval + command_timeout`.
    pub ping_interval: Duration,
    /// First wait before reconnecting the subscriber connection; doubles on
    /// each failure up to [`Self::reconnect_max`].
    pub reconnect_min: Duration,
    /// Longest wait between two reconnection attempts.
    pub reconnect_max: Duration,
}

impl RedisBusConfig {
    /// Defaults for a single Redis server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::new(RedisTarget::new(url))
    }

    /// Defaults for a primary found through the given Sentinels, without credentials.
    pub fn sentinel(sentinels: Vec<String>, master_name: impl Into<String>) -> Self {
        Self::new(RedisTarget::sentinel(master_name, sentinels))
    }

    /// Defaults for a Redis Cluster reachable through `nodes`.
    pub fn cluster(nodes: Vec<String>) -> Self {
        let url = nodes.first().cloned().unwrap_or_default();
        Self::new(RedisTarget {
            mode: RedisMode::Cluster { nodes },
            ..RedisTarget::new(url)
        })
    }

    /// The defaults around a target.
    pub fn new(redis: RedisTarget) -> Self {
        Self {
            redis,
            channel_prefix: "kairos".to_owned(),
            publish_queue: 16_384,
            publish_batch: 512,
            local_capacity: 256,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            ping_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let config = RedisBusConfig::standalone("redis://user:s3cret@host:6379/0");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://user:***@host:6379/0"), "{shown}");

        let sentinel = RedisTarget {
            url: "redis://:s3cret@primary/0".into(),
            ..RedisBusConfig::sentinel(vec!["redis://:pw@s1:26379".into()], "mymaster").redis
        };
        let shown = format!("{sentinel:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains(":pw@"),
            "{shown}"
        );
    }

    #[test]
    fn urls_without_credentials_are_shown_as_given() {
        let shown = format!("{:?}", RedisTarget::new("redis://127.0.0.1:6379/"));
        assert!(shown.contains("\"redis://127.0.0.1:6379/\""), "{shown}");
    }
}
