//! [`Connector`]: turns the configured topology into Redis clients, so the
//! publisher and subscriber tasks ask one place "where is Redis now?" and a
//! Sentinel failover is followed wherever a connection is (re)made.

use std::fmt;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ProtocolVersion, PushInfo, RedisConnectionInfo, RedisResult};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use crate::config::RedisTopology;

/// The configured topology, parsed once at construction so that a typo in a
/// URL fails the constructor, not every reconnection attempt.
pub(crate) enum Connector {
    Standalone(Client),
    /// Tokio mutex: resolving the primary is a network call made under the
    /// lock (the client caches its Sentinel connections and needs `&mut`).
    Sentinel(Mutex<SentinelClient>),
    /// The seed nodes, and the private CA of `rediss://` nodes if any.
    Cluster(Vec<String>, Option<Vec<u8>>),
}

/// `rediss://` servers verified against the CAs of `pem` only.
fn tls_roots(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
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
    /// Parses the topology; does not connect.
    pub(crate) fn new(topology: &RedisTopology, root_cert: Option<&[u8]>) -> RedisResult<Self> {
        Ok(match topology {
            RedisTopology::Standalone { url } => Self::Standalone(match root_cert {
                None => Client::open(url.as_str())?,
                Some(pem) => Client::build_with_tls(url.as_str(), tls_roots(pem))?,
            }),
            RedisTopology::Sentinel {
                sentinels,
                service_name,
                username,
                password,
            } => {
                let mut info = RedisConnectionInfo::default();
                if let Some(username) = username {
                    info = info.set_username(username);
                }
                if let Some(password) = password {
                    info = info.set_password(password);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                Self::Sentinel(Mutex::new(SentinelClient::build(
                    sentinels.clone(),
                    service_name.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?))
            }
            RedisTopology::Cluster { nodes } => {
                // Fail now on a malformed node URL rather than at first connect.
                ClusterClient::new(nodes.clone())?;
                Self::Cluster(nodes.clone(), root_cert.map(<[u8]>::to_vec))
            }
        })
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
            Self::Cluster(nodes, root_cert) => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout);
                if let Some(pem) = root_cert {
                    builder = builder.certs(tls_roots(pem));
                }
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
