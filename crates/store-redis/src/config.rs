//! [`RedisConfig`]: everything needed to reach Redis and lay out keys, parsed
//! once by the server from its environment and handed to [`crate::RedisStore`].

use std::fmt;
use std::time::Duration;

/// Default for [`RedisConfig::command_timeout`]: a dead Redis must turn into a
/// 503 within a fraction of a second, while a healthy one answers in well
/// under a millisecond on a local network.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Default for [`RedisConfig::session_ttl`] (contract: `SESSION_TTL_SECONDS` = 3600).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);

/// Default for [`RedisConfig::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "kairos:";

/// How to reach Redis. Every mode runs the same Lua scripts on the same key
/// layout; only the way a connection finds its server differs.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server at [`RedisConfig::url`] (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` for TLS, verified against the public web roots;
    /// `rediss://...#insecure` skips the verification). The connection
    /// reconnects by itself after the server comes back.
    Standalone,
    /// A primary found through Redis Sentinel. `sentinels` are the Sentinel
    /// nodes (`redis://host:26379`, with their own credentials if Sentinel
    /// requires them) and `master_name` the monitored primary's name.
    /// Username, password and database of [`RedisConfig::url`] are used to
    /// log in to the primary (its host and port are ignored: Sentinel names
    /// them). After a connection error the primary is asked from Sentinel
    /// again, so a failover is followed without a restart.
    Sentinel {
        /// The name Sentinel monitors the primary under (`sentinel monitor <name> ...`).
        master_name: String,
        /// Sentinel node URLs; at least one.
        sentinels: Vec<String>,
    },
    /// A Redis Cluster. `nodes` are seed node URLs (any subset of the
    /// cluster; credentials in the URLs); when empty, [`RedisConfig::url`]
    /// is the only seed. Every key one commit touches shares a hash tag, so
    /// each script runs on one node.
    Cluster {
        /// Seed node URLs.
        nodes: Vec<String>,
    },
}

impl fmt::Debug for RedisMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: print them redacted.
        match self {
            Self::Standalone => f.write_str("Standalone"),
            Self::Sentinel {
                master_name,
                sentinels,
            } => f
                .debug_struct("Sentinel")
                .field("master_name", master_name)
                .field(
                    "sentinels",
                    &sentinels.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
                )
                .finish(),
            Self::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

/// Why a Redis configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `REDIS_MODE` is not one of `standalone`, `sentinel`, `cluster`.
    #[error("unknown Redis mode {0:?}: expected standalone, sentinel or cluster")]
    UnknownMode(String),
    /// Sentinel mode without a master name.
    #[error("sentinel mode needs the monitored master's name")]
    MissingMasterName,
    /// Sentinel mode without any Sentinel URL.
    #[error("sentinel mode needs at least one sentinel URL")]
    MissingSentinels,
    /// The key prefix would break the hash-tag layout.
    #[error(
        "key prefix {0:?} must not contain '{{' or '}}' (the partition hash tag must be the only one)"
    )]
    BadKeyPrefix(String),
}

impl RedisMode {
    /// Builds the mode from the strings a deployment configures (for example
    /// `REDIS_MODE`, `REDIS_SENTINEL_MASTER`, `REDIS_SENTINELS`,
    /// `REDIS_CLUSTER_NODES`). `mode` is case-insensitive and defaults to
    /// standalone when empty; lists are comma- or whitespace-separated URLs
    /// (see [`split_urls`]). Arguments a mode does not use are ignored.
    ///
    /// ```
    /// use store_redis::{RedisMode, ConfigError};
    /// let m = RedisMode::parse("sentinel", Some("mymaster"), Some("redis://s1:26379, redis://s2:26379"), None).unwrap();
    /// assert_eq!(m, RedisMode::Sentinel {
    ///     master_name: "mymaster".into(),
    ///     sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
    /// });
    /// assert_eq!(RedisMode::parse("", None, None, None), Ok(RedisMode::Standalone));
    /// assert_eq!(RedisMode::parse("sentinel", None, Some("redis://s1"), None), Err(ConfigError::MissingMasterName));
    /// ```
    pub fn parse(
        mode: &str,
        master_name: Option<&str>,
        sentinels: Option<&str>,
        cluster_nodes: Option<&str>,
    ) -> Result<Self, ConfigError> {
        match mode.trim().to_ascii_lowercase().as_str() {
            "" | "standalone" => Ok(Self::Standalone),
            "sentinel" => {
                let master_name = master_name
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .ok_or(ConfigError::MissingMasterName)?
                    .to_owned();
                let sentinels = split_urls(sentinels.unwrap_or(""));
                if sentinels.is_empty() {
                    return Err(ConfigError::MissingSentinels);
                }
                Ok(Self::Sentinel {
                    master_name,
                    sentinels,
                })
            }
            "cluster" => Ok(Self::Cluster {
                nodes: split_urls(cluster_nodes.unwrap_or("")),
            }),
            other => Err(ConfigError::UnknownMode(other.to_owned())),
        }
    }
}

/// Splits a list of URLs separated by commas and/or whitespace, dropping empties.
///
/// ```
/// assert_eq!(store_redis::split_urls(" redis://a:1,redis://b:2  redis://c:3,"),
///            vec!["redis://a:1", "redis://b:2", "redis://c:3"]);
/// ```
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`,
/// for logs and `Debug` output.
///
/// ```
/// assert_eq!(store_redis::redact_url("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
/// assert_eq!(store_redis::redact_url("redis://:secret@h"), "redis://:***@h");
/// assert_eq!(store_redis::redact_url("redis://h:6379"), "redis://h:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// How to reach Redis and how the store behaves. Built by the server from
/// its environment (`REDIS_URL`, `REDIS_MODE`, `SESSION_TTL_SECONDS`, ...);
/// start from [`RedisConfig::new`] and set what differs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The server URL in standalone mode; the credentials and database in
    /// Sentinel mode; the seed node in Cluster mode when `mode` lists none.
    pub url: String,
    /// Standalone, Sentinel or Cluster.
    pub mode: RedisMode,
    /// Upper bound on every store call, connecting included. Past it the
    /// call fails with `StoreError::Unavailable` (a 503), so a dead Redis
    /// is reported quickly instead of hanging requests.
    pub command_timeout: Duration,
    /// How long a session lives after its last change (renewed by every commit).
    pub session_ttl: Duration,
    /// Whether commits append their events to the outbox streams. Off when
    /// there is no audit store: nothing would drain the streams, and they
    /// must not grow without bound.
    pub outbox_enabled: bool,
    /// Prepended to every key (default `kairos:`). Tests use a random one to
    /// share a Redis. Must not contain `{` or `}`: the partition hash tag
    /// that follows it must be the key's only one.
    pub key_prefix: String,
    /// PEM certificates of the CAs a `rediss://` server's certificate is
    /// verified against, instead of the public web roots (a private CA).
    /// Standalone and Cluster.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("command_timeout", &self.command_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("outbox_enabled", &self.outbox_enabled)
            .field("key_prefix", &self.key_prefix)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|_| "<PEM>"),
            )
            .finish()
    }
}

impl RedisConfig {
    /// A standalone configuration for `url` with the defaults: 250 ms command
    /// timeout, one hour TTL, outbox enabled, prefix `kairos:`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            mode: RedisMode::Standalone,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            outbox_enabled: true,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            tls_root_cert: None,
        }
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::BadKeyPrefix(self.key_prefix.clone()));
        }
        match &self.mode {
            RedisMode::Sentinel {
                master_name,
                sentinels,
            } => {
                if master_name.is_empty() {
                    return Err(ConfigError::MissingMasterName);
                }
                if sentinels.is_empty() {
                    return Err(ConfigError::MissingSentinels);
                }
                Ok(())
            }
            RedisMode::Standalone | RedisMode::Cluster { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_refuse_what_they_cannot_use() {
        assert_eq!(
            RedisMode::parse("Cluster", None, None, Some("redis://a:1,redis://b:2")),
            Ok(RedisMode::Cluster {
                nodes: vec!["redis://a:1".into(), "redis://b:2".into()]
            })
        );
        assert_eq!(
            RedisMode::parse("sentinel", Some("m"), Some(" , "), None),
            Err(ConfigError::MissingSentinels)
        );
        assert_eq!(
            RedisMode::parse("replicated", None, None, None),
            Err(ConfigError::UnknownMode("replicated".into()))
        );
    }

    #[test]
    fn prefix_with_braces_is_refused_and_debug_hides_passwords() {
        let mut config = RedisConfig::new("redis://:hunter2@localhost:6379");
        assert_eq!(config.validate(), Ok(()));
        assert!(!format!("{config:?}").contains("hunter2"));
        config.key_prefix = "a{b}:".into();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BadKeyPrefix(_))
        ));
    }
}
