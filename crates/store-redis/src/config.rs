//! [`RedisConfig`]: where Redis is (the [`RedisTarget`] shared with the
//! bus) and how the store behaves there, built once by the server from its
//! settings and handed to [`crate::RedisStore`].

use std::time::Duration;

use redis_conn::{ConfigError, RedisTarget, check_key_prefix};

/// Default for [`RedisConfig::command_timeout`]: a dead Redis must turn into a
/// 503 within a fraction of a second, while a healthy one answers in well
/// under a millisecond on a local network.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Default for [`RedisConfig::session_ttl`] (contract: `SESSION_TTL_SECONDS` = 3600).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);

/// Default for [`RedisConfig::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "kairos:";

/// How to reach Redis and how the store behaves. Built by the server from
/// its settings (`REDIS_URL`, `REDIS_MODE`, `SESSION_TTL_SECONDS`, ...);
/// start from [`RedisConfig::new`] and set what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where Redis is: URL, mode, TLS roots (the same value the bus gets).
    pub redis: RedisTarget,
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
}

impl RedisConfig {
    /// A standalone configuration for `url` with the defaults: 250 ms command
    /// timeout, one hour TTL, outbox enabled, prefix `kairos:`.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_target(RedisTarget::new(url))
    }

    /// The defaults around a target.
    pub fn with_target(redis: RedisTarget) -> Self {
        Self {
            redis,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            outbox_enabled: true,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_key_prefix(&self.key_prefix)?;
        self.redis.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
