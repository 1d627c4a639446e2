//! `RedisPlaceRegistry` on a real Redis: the cap holds, a release or an
//! expired lease frees a place, renewal keeps a place and never brings a
//! released one back, and concurrent acquires never overshoot.

mod common;

use std::sync::Arc;

use kairos_domain::PlaceRegistry;
use store_redis::RedisPlaceRegistry;

async fn registry() -> RedisPlaceRegistry {
    let (store, config) = common::store().await;
    RedisPlaceRegistry::new(store.connection(), config.key_prefix)
}

const LEASE: i64 = 1_000;

#[tokio::test]
async fn at_most_max_places_per_key_and_a_release_frees_one() {
    let r = registry().await;
    assert_eq!(r.acquire("bob", "h1", 2, 0, LEASE).await, Ok(true));
    assert_eq!(r.acquire("bob", "h2", 2, 0, LEASE).await, Ok(true));
    assert_eq!(r.acquire("bob", "h3", 2, 0, LEASE).await, Ok(false));
    // A holder that has its place keeps it (idempotent).
    assert_eq!(r.acquire("bob", "h2", 2, 0, LEASE).await, Ok(true));
    // Keys are independent, braces in a key included.
    assert_eq!(r.acquire("carol}{x", "h1", 2, 0, LEASE).await, Ok(true));
    r.release("bob", "h1").await.unwrap();
    assert_eq!(r.acquire("bob", "h3", 2, 10, LEASE).await, Ok(true));
    assert_eq!(r.acquire("bob", "h4", 2, 10, LEASE).await, Ok(false));
    // Releasing what is not held is fine.
    r.release("bob", "nobody").await.unwrap();
    r.release("nobody", "h1").await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_frees_its_place_and_a_renewed_one_does_not() {
    let r = registry().await;
    assert_eq!(r.acquire("bob", "kept", 2, 0, LEASE).await, Ok(true));
    assert_eq!(r.acquire("bob", "lapsed", 2, 0, LEASE).await, Ok(true));
    // At 900 only "kept" is renewed, to 1,900.
    r.renew(&[("bob".into(), "kept".into())], 900, LEASE)
        .await
        .unwrap();
    // At 1,000 "lapsed" has run out; "kept" has not.
    assert_eq!(r.acquire("bob", "new", 2, 1_000, LEASE).await, Ok(true));
    assert_eq!(r.acquire("bob", "more", 2, 1_000, LEASE).await, Ok(false));
    // At 1,900 "kept" runs out too.
    assert_eq!(r.acquire("bob", "more", 2, 1_900, LEASE).await, Ok(true));
}

#[tokio::test]
async fn renewal_never_brings_back_a_released_place() {
    let r = registry().await;
    assert_eq!(r.acquire("bob", "h1", 1, 0, LEASE).await, Ok(true));
    r.release("bob", "h1").await.unwrap();
    // A late renewal from the instance that just closed the socket.
    r.renew(&[("bob".into(), "h1".into())], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(r.acquire("bob", "h2", 1, 20, LEASE).await, Ok(true));
    // Renewing many keys at once works for each of them.
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("user{i}"), format!("h{i}")))
        .collect();
    for (k, h) in &many {
        assert_eq!(r.acquire(k, h, 1, 0, LEASE).await, Ok(true));
    }
    r.renew(&many, 900, LEASE).await.unwrap();
    for (k, _) in &many {
        assert_eq!(
            r.acquire(k, "other", 1, 1_500, LEASE).await,
            Ok(false),
            "{k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_never_overshoot() {
    let r = Arc::new(registry().await);
    let tries = (0..50).map(|i| {
        let r = Arc::clone(&r);
        tokio::spawn(async move { r.acquire("bob", &format!("h{i}"), 5, 0, 60_000).await })
    });
    let mut taken = 0;
    for t in tries {
        if t.await.unwrap() == Ok(true) {
            taken += 1;
        }
    }
    assert_eq!(taken, 5);
}
