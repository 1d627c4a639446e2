//! [`MemoryRateLimiter`]: GCRA state in a map, for a single instance.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use kairos_domain::RateLimiter;
use kairos_domain::StoreError;
use kairos_domain::ratelimit::{Limit, RateDecision, gcra};

/// Above this many keys, keys whose limit has fully recovered are dropped,
/// so a flood of distinct clients cannot grow the map without bound.
const SWEEP_AT: usize = 100_000;

/// An in-process [`RateLimiter`]. Std mutex: one map lookup per check, never
/// held across an await.
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    tats: Mutex<HashMap<String, i64>>,
}

impl MemoryRateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(
        &self,
        key: &str,
        limit: Limit,
        now_ms: i64,
    ) -> Result<RateDecision, StoreError> {
        let mut tats = self
            .tats
            .lock()
            .map_err(|_| StoreError::Other("rate limiter lock poisoned".into()))?;
        if tats.len() >= SWEEP_AT {
            // A TAT in the past means the key's full burst is available again:
            // forgetting it changes no decision.
            tats.retain(|_, tat| *tat > now_ms);
        }
        let (decision, tat) = gcra(tats.get(key).copied(), now_ms, limit);
        tats.insert(key.to_owned(), tat);
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_limited_independently() {
        let l = MemoryRateLimiter::new();
        let limit = Limit::per_second(2);
        assert!(l.check("a", limit, 0).await.unwrap().allowed);
        assert!(l.check("a", limit, 0).await.unwrap().allowed);
        assert!(!l.check("a", limit, 0).await.unwrap().allowed);
        assert!(l.check("b", limit, 0).await.unwrap().allowed);
        assert!(l.check("a", limit, 500).await.unwrap().allowed);
    }
}
