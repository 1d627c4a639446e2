//! The Redis rate limiter against real Redis: it decides exactly as the
//! domain's GCRA, and two limiters (two instances) share one budget.

mod common;

use kairos_domain::RateLimiter;
use kairos_domain::ratelimit::{Limit, gcra};
use store_redis::RedisRateLimiter;

#[tokio::test]
async fn two_instances_share_one_budget_and_agree_with_the_pure_gcra() {
    let (a, config) = common::store().await;
    let b = store_redis::RedisStore::connect(&config).await.unwrap();
    let la = RedisRateLimiter::new(a.connection(), config.key_prefix.clone());
    let lb = RedisRateLimiter::new(b.connection(), config.key_prefix.clone());
    let limit = Limit::per_second(10);
    let key = format!("switch:{}", uuid::Uuid::new_v4());
    let now = 1_700_000_000_000_i64;
    let mut tat = None;
    for i in 0..12 {
        // Alternate instances, as a round-robin balancer would.
        let limiter = if i % 2 == 0 { &la } else { &lb };
        let got = limiter.check(&key, limit, now).await.unwrap();
        let (want, next) = gcra(tat, now, limit);
        if want.allowed {
            tat = Some(next);
        }
        assert_eq!(got, want, "check {i}");
        assert_eq!(got.allowed, i < 10, "check {i}");
    }
    // 100 ms later one more fits, on either instance.
    assert!(lb.check(&key, limit, now + 100).await.unwrap().allowed);
    assert!(!la.check(&key, limit, now + 100).await.unwrap().allowed);
    // Other keys are independent; braces cannot change the hash tag.
    assert!(
        la.check("create:sub:{evil}", Limit::per_minute(1), now)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !lb.check("create:sub:{evil}", Limit::per_minute(1), now)
            .await
            .unwrap()
            .allowed
    );
}
