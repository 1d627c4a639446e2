//! [`RedisTarget`]: the one description of where Redis is (URL, mode, TLS
//! roots) and the one place that turns it into clients, so the store and
//! the bus cannot drift apart on how a `rediss://` server is verified or
//! how a Sentinel primary is logged in to.

use std::fmt;
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, RedisResult};

use crate::mode::{ConfigError, RedisMode};
use crate::url::redact_url;

/// The URL of a Sentinel primary when none is configured: no credentials,
/// database 0. Its host is a placeholder (Sentinel names the real one), but
/// a URL without one does not parse.
pub const SENTINEL_PRIMARY_URL: &str = "redis://sentinel-primary/";

/// Where Redis is. Built once by the server from its settings (`REDIS_URL`,
/// `REDIS_MODE`, `REDIS_SENTINEL_MASTER`, `REDIS_SENTINELS`,
/// `REDIS_CLUSTER_NODES`, `REDIS_TLS_CA_FILE`) and handed to both adapters.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// The server in standalone mode; the credentials and database of the
    /// primary in Sentinel mode; the seed node in Cluster mode when the mode
    /// lists none. `rediss://` for TLS, `#insecure` at the end to skip the
    /// certificate check (redis-rs reads both from the URL).
    pub url: String,
    /// Standalone, Sentinel or Cluster.
    pub mode: RedisMode,
    /// PEM certificates of the CAs a `rediss://` server's certificate is
    /// verified against, instead of the public web roots (a private CA).
    /// Standalone and Cluster.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl fmt::Debug for RedisTarget {
    // The URL may carry a password; the PEM is long and says nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|_| "<PEM>"),
            )
            .finish()
    }
}

impl RedisTarget {
    /// One standalone server at `url`, verified against the public web roots
    /// when it is a `rediss://` URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mode: RedisMode::Standalone,
            tls_root_cert: None,
        }
    }

    /// A primary found through `sentinels` under `master_name`, logged in
    /// to without credentials, database 0 (set [`Self::url`] for others).
    pub fn sentinel(master_name: impl Into<String>, sentinels: Vec<String>) -> Self {
        Self {
            mode: RedisMode::Sentinel {
                master_name: master_name.into(),
                sentinels,
            },
            ..Self::new(SENTINEL_PRIMARY_URL)
        }
    }

    /// Checks what can be checked without connecting: a URL scheme Redis
    /// clients understand, and a Sentinel mode that names its primary and
    /// at least one Sentinel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|scheme| self.url.starts_with(scheme))
        {
            return Err(ConfigError::BadUrl(redact_url(&self.url)));
        }
        match &self.mode {
            RedisMode::Sentinel { master_name, .. } if master_name.is_empty() => {
                Err(ConfigError::MissingMasterName)
            }
            RedisMode::Sentinel { sentinels, .. } if sentinels.is_empty() => {
                Err(ConfigError::MissingSentinels)
            }
            _ => Ok(()),
        }
    }

    /// The URL with its password hidden, for logs and error messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// The cluster's seed nodes: the mode's list, or the URL when it is empty.
    pub fn seeds(&self) -> &[String] {
        match &self.mode {
            RedisMode::Cluster { nodes } if !nodes.is_empty() => nodes,
            _ => std::slice::from_ref(&self.url),
        }
    }

    /// A client for the one server at [`Self::url`] (standalone), with the
    /// target's TLS roots. Does not connect.
    pub fn client(&self) -> RedisResult<Client> {
        let info = self
            .url
            .as_str()
            .into_connection_info()?
            .set_tcp_settings(tcp_settings());
        match self.tls_roots() {
            None => Client::open(info),
            Some(roots) => Client::build_with_tls(info, roots),
        }
    }

    /// A client that asks `sentinels` for the primary monitored as
    /// `master_name` and logs in to it with the username, password and
    /// database of [`Self::url`]. Does not connect.
    pub fn sentinel_client(
        &self,
        master_name: &str,
        sentinels: &[String],
    ) -> RedisResult<SentinelClient> {
        let info = self.url.as_str().into_connection_info()?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(info.redis_settings().clone())
            .set_tcp_settings(tcp_settings());
        SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master_name,
            Some(node),
            SentinelServerType::Master,
        )
    }

    /// A cluster client builder over [`Self::seeds`], with the target's TLS
    /// roots, connecting and answering within `timeout`. Callers add what
    /// is theirs (retries, RESP3 push delivery) and build.
    pub fn cluster_builder(&self, timeout: Duration) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.seeds().iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .tcp_settings(tcp_settings());
        if let Some(roots) = self.tls_roots() {
            builder = builder.certs(roots);
        }
        builder
    }

    /// `rediss://` servers verified against the CAs of the PEM only.
    fn tls_roots(&self) -> Option<redis::TlsCertificates> {
        self.tls_root_cert
            .as_ref()
            .map(|pem| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            })
    }
}

/// The TCP settings of every connection to a Redis server: `TCP_NODELAY`
/// on (redis-rs leaves it off). Commands are small and multiplexed: with
/// Nagle's algorithm, a command written while an earlier one is still
/// unacknowledged waits for that acknowledgement, so a busy connection
/// adds up to a round trip to its commands, and a lone write after a quiet
/// spell can wait for the server's delayed ACK (40 ms on Linux).
pub fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The contents of a PEM file of CA certificates (`REDIS_TLS_CA_FILE`),
/// refused when unreadable or without a certificate: a wrong path should
/// stop the start, not every connect.
pub fn read_ca_file(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_turn_nagle_off_and_keep_the_url_s_login() {
        let client = RedisTarget::new("redis://alice:hunter2@127.0.0.1:6380/3")
            .client()
            .expect("a client");
        let info = client.get_connection_info();
        assert!(info.tcp_settings().nodelay());
        assert_eq!(info.redis_settings().username(), Some("alice"));
        assert_eq!(info.redis_settings().password(), Some("hunter2"));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(
            info.addr(),
            &redis::ConnectionAddr::Tcp("127.0.0.1".into(), 6380)
        );
        assert!(!TcpSettings::default().nodelay(), "redis-rs leaves it off");
    }

    #[test]
    fn seeds_fall_back_to_the_url_and_debug_hides_passwords() {
        let mut target = RedisTarget::new("redis://:hunter2@localhost:6379");
        assert_eq!(target.validate(), Ok(()));
        assert_eq!(target.seeds(), ["redis://:hunter2@localhost:6379"]);
        assert!(!format!("{target:?}").contains("hunter2"));
        target.mode = RedisMode::Cluster {
            nodes: vec!["redis://:pw@a:7000".into()],
        };
        assert_eq!(target.seeds(), ["redis://:pw@a:7000"]);
        assert!(!format!("{target:?}").contains(":pw@"));
    }

    #[test]
    fn what_cannot_work_is_refused_before_connecting() {
        assert!(matches!(
            RedisTarget::new("http://x").validate(),
            Err(ConfigError::BadUrl(_))
        ));
        let target = RedisTarget::sentinel("m", Vec::new());
        assert_eq!(target.validate(), Err(ConfigError::MissingSentinels));
        let target = RedisTarget::sentinel("m", vec!["redis://127.0.0.1:26379".into()]);
        assert!(
            target
                .sentinel_client("m", &["redis://127.0.0.1:26379".into()])
                .is_ok()
        );
        let target = RedisTarget::new("redis://127.0.0.1:6379/");
        assert!(target.client().is_ok());
        assert!(
            target
                .cluster_builder(Duration::from_secs(1))
                .build()
                .is_ok()
        );
    }
}
