//! [`RedisMode`]: how a deployment runs Redis, parsed once from the strings
//! it configures, and [`ConfigError`], why such a configuration was refused.

use std::fmt;

use crate::url::{redact_all, split_urls};

/// How to reach Redis. The store runs the same Lua scripts on the same key
/// layout in every mode and the bus picks its Pub/Sub flavour from it; only
/// the way a connection finds its server differs.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server at [`RedisTarget::url`](crate::RedisTarget::url)
    /// (`redis://[user:password@]host:port[/db]`, or `rediss://` for TLS,
    /// verified against the public web roots or the target's own CA;
    /// `rediss://...#insecure` skips the verification).
    Standalone,
    /// A primary found through Redis Sentinel. `sentinels` are the Sentinel
    /// nodes (`redis://host:26379`, with their own credentials if Sentinel
    /// requires them) and `master_name` the monitored primary's name.
    /// Username, password and database of the target's URL are used to log
    /// in to the primary (its host and port are ignored: Sentinel names
    /// them). The primary is asked from Sentinel again after a connection
    /// error, so a failover is followed without a restart.
    Sentinel {
        /// The name Sentinel monitors the primary under (`sentinel monitor <name> ...`).
        master_name: String,
        /// Sentinel node URLs; at least one.
        sentinels: Vec<String>,
    },
    /// A Redis Cluster (7.0 or later for the bus's sharded Pub/Sub). `nodes`
    /// are seed node URLs (any subset of the cluster; credentials in the
    /// URLs); when empty, the target's URL is the only seed.
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
                .field("sentinels", &redact_all(sentinels))
                .finish(),
            Self::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field("nodes", &redact_all(nodes))
                .finish(),
        }
    }
}

/// Why a Redis configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The mode is not one of `standalone`, `sentinel`, `cluster`.
    #[error("unknown Redis mode {0:?}: expected standalone, sentinel or cluster")]
    UnknownMode(String),
    /// Sentinel mode without a master name.
    #[error("sentinel mode needs the monitored master's name")]
    MissingMasterName,
    /// Sentinel mode without any Sentinel URL.
    #[error("sentinel mode needs at least one sentinel URL")]
    MissingSentinels,
    /// The URL is not one Redis clients understand (the value is redacted).
    #[error("expected a redis:// URL, got {0:?}")]
    BadUrl(String),
    /// The key prefix would break the hash-tag layout of keys and channels.
    #[error(
        "key prefix {0:?} must not contain '{{', '}}' or spaces (the partition hash tag must be the only one)"
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
    /// use redis_conn::{RedisMode, ConfigError};
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

/// Refuses a key or channel prefix that would add a second hash tag (or
/// spaces) to the names both adapters build from it.
pub fn check_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.contains(['{', '}']) || prefix.chars().any(char::is_whitespace) {
        return Err(ConfigError::BadKeyPrefix(prefix.to_owned()));
    }
    Ok(())
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
    fn a_prefix_with_braces_or_spaces_is_refused() {
        assert_eq!(check_key_prefix("kairos:"), Ok(()));
        assert!(check_key_prefix("a{b}:").is_err());
        assert!(check_key_prefix("a b:").is_err());
    }
}
