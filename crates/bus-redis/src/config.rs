//! [`RedisBusConfig`]: where the bus finds Redis and how hard it tries, parsed
//! by the server from its environment and handed over in one piece.

use std::fmt;
use std::time::Duration;

/// How the deployment runs Redis.
///
/// The bus picks its Pub/Sub flavour from this: classic `PUBLISH`/`SUBSCRIBE`
/// on a single primary (standalone, Sentinel), sharded `SPUBLISH`/`SSUBSCRIBE`
/// on Cluster, so a message only travels to the shard that owns the session's
/// slot instead of being broadcast to every node of the cluster.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One Redis server (or a managed endpoint that looks like one).
    Standalone {
        /// A `redis://` or `rediss://` URL, credentials and database included.
        url: String,
    },
    /// A primary found through Redis Sentinel. The primary is asked for again
    /// on every reconnection, so a failover is followed.
    Sentinel {
        /// `redis://host:port` URLs of the Sentinel nodes (not of the data nodes).
        sentinels: Vec<String>,
        /// The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`).
        service_name: String,
        /// The ACL user on the data nodes, if any.
        username: Option<String>,
        /// The password on the data nodes, if any.
        password: Option<String>,
    },
    /// A Redis Cluster (7.0 or later: sharded Pub/Sub). Needs RESP3 on the
    /// subscriber connection, which the bus asks for itself.
    Cluster {
        /// `redis://host:port` URLs of some cluster nodes; the rest is discovered.
        nodes: Vec<String>,
    },
}

/// Hides the password inside a URL, so that configuration can be logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

// Hand-written so that `{:?}` on the configuration never prints a secret.
impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standalone { url } => f
                .debug_struct("Standalone")
                .field("url", &redact(url))
                .finish(),
            Self::Sentinel {
                sentinels,
                service_name,
                username,
                password,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|s| redact(s)).collect::<Vec<_>>(),
                )
                .field("service_name", service_name)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "***"))
                .finish(),
            Self::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|s| redact(s)).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// Everything [`crate::RedisBus::connect`] needs. Start from
/// [`RedisBusConfig::standalone`], [`RedisBusConfig::sentinel`] or
/// [`RedisBusConfig::cluster`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBusConfig {
    /// Where Redis is.
    pub topology: RedisTopology,
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
    /// PEM certificates of the CAs a `rediss://` server's certificate is
    /// verified against, instead of the public web roots (a private CA).
    /// Standalone and Cluster.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl RedisBusConfig {
    /// Defaults for a single Redis server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::with_topology(RedisTopology::Standalone { url: url.into() })
    }

    /// Defaults for a primary found through the given Sentinels, without credentials.
    pub fn sentinel(sentinels: Vec<String>, service_name: impl Into<String>) -> Self {
        Self::with_topology(RedisTopology::Sentinel {
            sentinels,
            service_name: service_name.into(),
            username: None,
            password: None,
        })
    }

    /// Defaults for a Redis Cluster reachable through `nodes`.
    pub fn cluster(nodes: Vec<String>) -> Self {
        Self::with_topology(RedisTopology::Cluster { nodes })
    }

    /// The defaults around a topology.
    pub fn with_topology(topology: RedisTopology) -> Self {
        Self {
            topology,
            channel_prefix: "kairos".to_owned(),
            publish_queue: 16_384,
            publish_batch: 512,
            local_capacity: 256,
            command_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            tls_root_cert: None,
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
        assert!(shown.contains("redis://***@host:6379/0"), "{shown}");

        let sentinel = RedisTopology::Sentinel {
            sentinels: vec!["redis://:pw@s1:26379".into()],
            service_name: "mymaster".into(),
            username: None,
            password: Some("s3cret".into()),
        };
        let shown = format!("{sentinel:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains(":pw@"),
            "{shown}"
        );
    }

    #[test]
    fn urls_without_credentials_are_shown_as_given() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
