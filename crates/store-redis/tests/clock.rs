//! `RedisClock` against a real Redis: instances agree on "now" whatever
//! their host's idea of time, and the refresh task stops on shutdown.

mod common;

use std::time::Duration;

use common::{raw, redis_now_ms, redis_url, store};
use kairos_domain::Clock;
use store_redis::RedisClock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_agree_even_when_one_host_is_five_seconds_off() {
    let (store, _) = store().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (honest, honest_task) = RedisClock::connect(
        store.connection(),
        Duration::from_millis(100),
        stopped.clone(),
    )
    .await
    .expect("clock");
    let (skewed, skewed_task) = RedisClock::connect_with_skew(
        store.connection(),
        Duration::from_millis(100),
        stopped,
        5_000,
    )
    .await
    .expect("clock");

    for _ in 0..20 {
        let before = honest.now_ms();
        let other = skewed.now_ms();
        let after = honest.now_ms();
        assert!(
            other >= before - 2 && other <= after + 2,
            "skewed clock read {other}, honest clock {before}..{after}"
        );
        // Let a few refreshes happen in between.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!((honest.offset_ms() - skewed.offset_ms() - 5_000).abs() <= 2);

    stop.send(true).expect("tasks listening");
    for task in [honest_task, skewed_task] {
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("refresh task stops on shutdown")
            .expect("no panic");
    }
}

#[tokio::test]
async fn now_follows_redis_time_and_never_goes_backwards() {
    let (store, _) = store().await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (clock, task) = RedisClock::connect(store.connection(), Duration::from_secs(60), stopped)
        .await
        .expect("clock");
    let mut conn = raw(&redis_url()).await;

    let before = redis_now_ms(&mut conn).await;
    let now = clock.now_ms();
    let after = redis_now_ms(&mut conn).await;

    assert!(
        now >= before - 2 && now <= after + 2,
        "{before} <= {now} <= {after}"
    );
    assert!(clock.sample_rtt() < Duration::from_millis(1_000));
    let mut last = clock.now_ms();
    for _ in 0..10_000 {
        let next = clock.now_ms();
        assert!(next >= last);
        last = next;
    }
    drop(_stop);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("a dropped shutdown sender stops the task")
        .expect("no panic");
}
