//! [`RedisRateLimiter`]: GCRA state in Redis, one atomic script per check, so
//! every instance counts against the same limits.

use async_trait::async_trait;
use kairos_domain::RateLimiter;
use kairos_domain::StoreError;
use kairos_domain::ratelimit::{Limit, RateDecision, US_PER_MS, gcra};
use redis::Script;

use crate::conn::RedisConnection;

/// The GCRA step of [`kairos_domain::ratelimit::gcra`], done where the TAT
/// lives (the Lua function the commit script shares, see `crate::scripts`).
/// KEYS: the limiter key. ARGV: now, interval, burst (µs). Returns the stored TAT
/// before the step (or nil for a new key); the caller recomputes the
/// decision from it with the same pure function, so the Rust and Lua sides
/// cannot disagree on what the headers say.
const GCRA: &str = concat!(
    crate::scripts::gcra_lua!(),
    r"
local _, stored = gcra(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if stored then return stored end
return nil
"
);

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
        crate::keys::tagged(&self.prefix, crate::keys::RATE_KIND, key)
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
        let script = self.script.clone();
        let stored: Option<String> = self
            .conn
            .run("rate limit", |mut conn| {
                let script = script.clone();
                let redis_key = redis_key.clone();
                async move {
                    script
                        .key(redis_key)
                        .arg(now_ms.saturating_mul(US_PER_MS))
                        .arg(limit.interval_us())
                        .arg(limit.burst_us())
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        let tat = stored.as_deref().map(parse_tat).transpose()?;
        Ok(gcra(tat, now_ms, limit).0)
    }
}

/// A stored TAT as the scripts write it (`%.0f`, µs), or an error naming it.
pub(crate) fn parse_tat(s: &str) -> Result<i64, StoreError> {
    // Written as a whole number of µs; parsed as a double like Lua did, so
    // a value in another notation still reads.
    s.parse::<f64>()
        .map(|t| t as i64)
        .map_err(|_| StoreError::Other(format!("rate limit state {s:?} is not a number")))
}
