//! [`RedisRateLimiter`]: GCRA state in Redis, one atomic script per check, so
//! every instance counts against the same limits.

use async_trait::async_trait;
use kairos_domain::StoreError;
use kairos_domain::ratelimit::{Limit, RateDecision, RateLimiter, gcra};
use redis::Script;

use crate::conn::RedisConnection;

/// The GCRA step of [`kairos_domain::ratelimit::gcra`], done where the TAT
/// lives. Returns the stored TAT before the step (or `false` for a new key);
/// the caller recomputes the decision from it with the same pure function,
/// so the Rust and Lua sides cannot disagree on what the headers say.
/// Lua numbers are doubles: epoch milliseconds stay exact far beyond 2100.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = tonumber(stored) end
local base = math.max(tat, now)
local new_tat = base + interval
if now >= new_tat - burst then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, new_tat - now))
end
return stored
";

/// A [`RateLimiter`] shared by all instances through Redis.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    conn: RedisConnection,
    prefix: String,
    script: std::sync::Arc<Script>,
}

impl RedisRateLimiter {
    /// A limiter on `conn`, keys under `prefix` (e.g. `kairos:`).
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            script: std::sync::Arc::new(Script::new(GCRA)),
        }
    }

    /// The Redis key of a limiter key (see [`crate::keys::tagged`]).
    fn key(&self, key: &str) -> String {
        crate::keys::tagged(&self.prefix, "rl", key)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    #[tracing::instrument(skip(self), level = "debug")]
    async fn check(
        &self,
        key: &str,
        limit: Limit,
        now_ms: i64,
    ) -> Result<RateDecision, StoreError> {
        let redis_key = self.key(key);
        let interval = (limit.period_ms / i64::from(limit.count.max(1))).max(1);
        let script = self.script.clone();
        let stored: Option<String> = self
            .conn
            .run("rate limit", |mut conn| {
                let script = script.clone();
                let redis_key = redis_key.clone();
                async move {
                    script
                        .key(redis_key)
                        .arg(now_ms)
                        .arg(interval)
                        .arg(limit.period_ms)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        let tat =
            match stored {
                None => None,
                Some(s) => Some(s.parse::<f64>().map_err(|_| {
                    StoreError::Other(format!("rate limit state {s:?} is not a number"))
                })? as i64),
            };
        Ok(gcra(tat, now_ms, limit).0)
    }
}
