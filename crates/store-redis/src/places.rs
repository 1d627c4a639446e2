//! [`RedisPlaceRegistry`]: the per-user WebSocket cap shared by every
//! instance. One sorted set per key (a user), members the holders (one per
//! socket), scores the time each lease runs out; one atomic script per
//! acquire, so two instances can never both take the last place.

use async_trait::async_trait;
use futures_util::StreamExt;
use kairos_domain::{PlaceRegistry, StoreError};
use redis::Script;

use crate::conn::RedisConnection;

/// Drops expired places, then takes one unless `max` are held. Returns 1
/// when taken (or already held by this holder), 0 when full.
const ACQUIRE: &str = r"
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
";

/// Extends the places of ARGV[3..] that are still held (`XX`: a released
/// place is not brought back) and the key's own expiry with them.
const RENEW: &str = r"
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
local kept = 0
for i = 3, #ARGV do
  kept = kept + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[i])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return kept
";

/// How many keys are renewed at once (each is one script call; the calls
/// share the connection and are pipelined on it).
const RENEW_CONCURRENCY: usize = 64;

/// A [`PlaceRegistry`] shared by all instances through Redis.
#[derive(Debug, Clone)]
pub struct RedisPlaceRegistry {
    conn: RedisConnection,
    prefix: String,
    acquire: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
}

impl RedisPlaceRegistry {
    /// A registry on `conn`, keys under `prefix` (e.g. `kairos:`).
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            acquire: std::sync::Arc::new(Script::new(ACQUIRE)),
            renew: std::sync::Arc::new(Script::new(RENEW)),
        }
    }

    /// The Redis key of a registry key (see [`crate::keys::tagged`]).
    fn key(&self, key: &str) -> String {
        crate::keys::tagged(&self.prefix, "places", key)
    }
}

#[async_trait]
impl PlaceRegistry for RedisPlaceRegistry {
    #[tracing::instrument(skip(self), level = "debug")]
    async fn acquire(
        &self,
        key: &str,
        holder: &str,
        max: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let redis_key = self.key(key);
        let script = self.acquire.clone();
        let taken: i64 = self
            .conn
            .run("acquire a place", |mut conn| {
                let (script, redis_key) = (script.clone(), redis_key.clone());
                async move {
                    script
                        .key(redis_key)
                        .arg(now_ms)
                        .arg(lease_ms.max(1))
                        .arg(max)
                        .arg(holder)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(taken == 1)
    }

    #[tracing::instrument(skip(self), level = "debug")]
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let redis_key = self.key(key);
        let _: i64 = self
            .conn
            .run("release a place", |mut conn| {
                let redis_key = redis_key.clone();
                async move {
                    redis::cmd("ZREM")
                        .arg(redis_key)
                        .arg(holder)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(places = places.len()), level = "debug")]
    async fn renew(
        &self,
        places: &[(String, String)],
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, holder) in places {
            by_key
                .entry(self.key(key))
                .or_default()
                .push(holder.clone());
        }
        let calls = by_key.into_iter().map(|(redis_key, holders)| {
            let conn = self.conn.clone();
            let script = self.renew.clone();
            async move {
                let _: i64 = conn
                    .run("renew places", |mut conn| {
                        let (script, redis_key) = (script.clone(), redis_key.clone());
                        let holders = holders.clone();
                        async move {
                            let mut call = script.key(redis_key);
                            call.arg(now_ms).arg(lease_ms.max(1));
                            for h in holders {
                                call.arg(h);
                            }
                            call.invoke_async(&mut conn).await
                        }
                    })
                    .await?;
                Ok::<(), StoreError>(())
            }
        });
        let mut results = futures_util::stream::iter(calls).buffer_unordered(RENEW_CONCURRENCY);
        let mut first_error = None;
        while let Some(result) = results.next().await {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
