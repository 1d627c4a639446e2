//! [`Connector`]: turns the configured target into Redis clients, so the
//! publisher and subscriber tasks ask one place "where is Redis now?" and a
//! Sentinel failover is followed wherever a connection is (re)made.

use std::fmt;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::sentinel::SentinelClient;
use redis::{Client, ProtocolVersion, PushInfo, RedisResult};
use redis_conn::{RedisMode, RedisTarget};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

/// The configured target, parsed once at construction so that a typo in a
/// URL fails the constructor, not every reconnection attempt.
pub(crate) enum Connector {
    Standalone(Client),
    /// Tokio mutex: resolving the primary is a network call made under the
    /// lock (the client caches its Sentinel connections and needs `&mut`).
    Sentinel(Mutex<SentinelClient>),
    /// The seed nodes and TLS roots: a cluster client is built per
    /// connection, as the subscriber's carries its own push channel.
    Cluster(RedisTarget),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the kind: the clients hold credentials.
        f.write_str(match self {
            Self::Standalone(_) => "Connector::Standalone",
            Self::Sentinel(_) => "Connector::Sentinel",
            Self::Cluster(..) => "Connector::Cluster",
        })
    }
}

impl Connector {
    /// Checks and parses the target; does not connect.
    pub(crate) fn new(target: &RedisTarget) -> Result<Self, String> {
        target.validate().map_err(|e| e.to_string())?;
        let parsed = match &target.mode {
            RedisMode::Standalone => target.client().map(Self::Standalone),
            RedisMode::Sentinel {
                master_name,
                sentinels,
            } => target
                .sentinel_client(master_name, sentinels)
                .map(|client| Self::Sentinel(Mutex::new(client))),
            RedisMode::Cluster { .. } => {
                // Fail now on a malformed node URL rather than at first connect.
                ClusterClient::new(target.seeds().to_vec()).map(|_| Self::Cluster(target.clone()))
            }
        };
        parsed.map_err(|e| e.to_string())
    }

    /// Where Redis is now. For Cluster, `push` asks for a RESP3 connection
    /// that delivers Pub/Sub messages there: redis-rs offers `SSUBSCRIBE` on
    /// Cluster only that way. Standalone and Sentinel ignore it (their
    /// subscriber uses a dedicated RESP2 Pub/Sub connection instead).
    pub(crate) async fn target(
        &self,
        push: Option<UnboundedSender<PushInfo>>,
        timeout: Duration,
    ) -> RedisResult<Target> {
        match self {
            Self::Standalone(client) => Ok(Target::Primary(Box::new(client.clone()))),
            Self::Sentinel(sentinel) => Ok(Target::Primary(Box::new(
                sentinel.lock().await.async_get_client().await?,
            ))),
            Self::Cluster(target) => {
                let mut builder = target.cluster_builder(timeout);
                if let Some(push) = push {
                    builder = builder
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(push);
                }
                Ok(Target::Cluster(Box::new(builder.build()?)))
            }
        }
    }
}

/// A client for where Redis is now.
pub(crate) enum Target {
    /// The one primary (standalone, or the one Sentinel named; boxed, as
    /// the client carries its TLS settings).
    Primary(Box<Client>),
    /// The cluster (boxed: the client is large and this is made once per connection).
    Cluster(Box<ClusterClient>),
}
