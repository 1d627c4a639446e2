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

/// Commits `next` over `current` (no events, no deadline, nothing to
/// publish), counting `rate` when given.
async fn commit_over(
    store: &store_redis::RedisStore,
    current: &kairos_domain::Session,
    next: &kairos_domain::Session,
    rate: Option<kairos_domain::RateCheck>,
) -> Result<Option<kairos_domain::RateDecision>, kairos_domain::StoreError> {
    use kairos_domain::{Commit, SessionStore};
    store
        .commit(&Commit {
            rate,
            expected_version: current.version,
            deadline: None,
            events: vec![],
            state: next.clone(),
            publish: Vec::new(),
        })
        .await
}

/// The per-session switch limit folded into the commit script: on the same
/// inputs (instants with gaps of every size, limits whose interval divides
/// the period and limits whose does not) it decides as the pure GCRA, stores
/// the TAT the pure GCRA computes, and a refused commit writes nothing.
#[tokio::test]
async fn the_commit_scripts_switch_limit_agrees_with_the_pure_gcra() {
    use kairos_domain::{RateCheck, SessionStore, StoreError};
    use redis::AsyncCommands;

    let (store, config) = common::store().await;
    let mut conn = common::raw(&common::redis_url()).await;
    // Periods of a minute and more: the TAT key expires in real time at
    // the end of its simulated budget, which a slow run must not reach.
    let limits = [
        Limit::per_minute(10),
        Limit {
            count: 7,
            period_ms: 60_000,
        },
        Limit {
            count: 3,
            period_ms: 100_000,
        },
    ];
    // Gaps between commits: bursts (0), less than, about and more than an
    // interval, and a whole period.
    let gaps = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 999, 5_999, 6_000, 6_001, 0, 8_571, 0, 33_333, 1, 0,
        60_000, 0, 0, 0, 17, 100_001,
    ];
    for limit in limits {
        let (session, created) = common::chess(60_000, 1_000);
        store.create(&session, &[created]).await.unwrap();
        // `<prefix>{pNN}:<kind>:<uuid>`, a key of the session's.
        let session_key = |kind: &str| {
            format!(
                "{}{{p{:02}}}:{kind}:{}",
                config.key_prefix,
                store_redis::partition_of(&session.id),
                session.id
            )
        };
        let state_key = session_key("s");
        let mut current = session.clone();
        let mut tat: Option<i64> = None;
        let mut now = 1_765_000_000_123_i64;
        let (mut allowed, mut refused) = (0, 0);
        for (i, gap) in gaps.iter().enumerate() {
            now += gap;
            let next = common::bumped(&current);
            let got = commit_over(
                &store,
                &current,
                &next,
                Some(RateCheck { limit, now_ms: now }),
            )
            .await;
            let (want, next_tat) = gcra(tat, now, limit);
            if want.allowed {
                assert_eq!(got, Ok(Some(want)), "{limit:?}, commit {i}");
                tat = Some(next_tat);
                current = next;
                allowed += 1;
            } else {
                assert_eq!(
                    got,
                    Err(StoreError::RateLimited(want)),
                    "{limit:?}, commit {i}"
                );
                refused += 1;
            }
            assert_eq!(store.load(session.id).await, Ok(Some(current.clone())));
            // The TAT is the state hash's field `r`, and no other key holds one.
            let stored: Option<String> = conn.hget(&state_key, "r").await.unwrap();
            assert_eq!(
                stored.map(|s| s.parse::<i64>().unwrap()),
                tat,
                "{limit:?}, commit {i}"
            );
        }
        assert!(
            allowed > 0 && refused > 0,
            "{limit:?}: {allowed} / {refused}"
        );
        // A commit that counts no limit (a timeout, limits off) leaves the
        // TAT as it was.
        let next = common::bumped(&current);
        let got = commit_over(&store, &current, &next, None).await;
        assert_eq!(got, Ok(None), "{limit:?}");
        let stored: Option<String> = conn.hget(&state_key, "r").await.unwrap();
        assert_eq!(stored.map(|s| s.parse::<i64>().unwrap()), tat, "{limit:?}");
        // No key of its own: earlier builds kept the TAT in `{pNN}:rlu:<uuid>`.
        let own_key = session_key("rlu");
        assert!(
            !conn.exists::<_, bool>(&own_key).await.unwrap(),
            "{limit:?}"
        );
    }
}

/// Above 1,000 a second the spacing is below a millisecond: once the burst
/// of 4,000 a second is spent, each millisecond admits 4 requests (TATs in
/// µs), not 1. The spent burst is written directly (the TAT a full burst
/// leaves), so the test needs no 4,000 calls.
#[tokio::test]
async fn limits_above_a_thousand_a_second_hold_their_rate() {
    use redis::AsyncCommands;

    let (store, config) = common::store().await;
    let limiter = RedisRateLimiter::new(store.connection(), config.key_prefix.clone());
    let mut conn = common::raw(&common::redis_url()).await;
    let limit = Limit::per_second(4_000);
    let key = format!("time:ip:{}", uuid::Uuid::new_v4());
    let now = 1_765_000_000_000_i64;
    let spent = now * 1_000 + limit.burst_us();
    let _: () = conn
        .pset_ex(format!("{}rlu:{{{key}}}", config.key_prefix), spent, 60_000)
        .await
        .unwrap();
    let refused = limiter.check(&key, limit, now).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after_ms, 1, "a quarter ms, rounded up");
    for ms in 1..=5 {
        let mut allowed = 0;
        for _ in 0..6 {
            if limiter.check(&key, limit, now + ms).await.unwrap().allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 4, "at +{ms} ms");
    }
}
