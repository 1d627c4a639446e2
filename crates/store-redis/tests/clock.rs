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
    // Each clock measures its offset from its own monotonic origin, taken
    // when it connects; the origins differ by at most this.
    let connecting = std::time::Instant::now();
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
    let origins_apart_ms = i64::try_from(connecting.elapsed().as_millis()).unwrap_or(i64::MAX) + 1;

    // Each clock's offset is exact to within half the round trip of the
    // sample it adopted; on an idle loopback that is well under 1 ms, so the
    // bound stays 2 to 3 ms, but a loaded machine's slow round trips widen it
    // honestly instead of failing.
    let tolerance = |a: &RedisClock, b: &RedisClock| {
        2 + i64::try_from((a.sample_rtt() + b.sample_rtt()).as_millis() / 2 + 1).unwrap_or(i64::MAX)
    };
    for _ in 0..20 {
        let before = honest.now_ms();
        let other = skewed.now_ms();
        let after = honest.now_ms();
        let tol = tolerance(&honest, &skewed);
        assert!(
            other >= before - tol && other <= after + tol,
            "skewed clock read {other}, honest clock {before}..{after}, tolerance {tol} ms"
        );
        // Let a few refreshes happen in between.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The skew is real: the skewed host's offset makes up 5 s (less the
    // time between the two clocks' origins), which is why the readings
    // above agree.
    let tol = tolerance(&honest, &skewed);
    let diff = honest.offset_ms() - skewed.offset_ms();
    assert!(
        diff <= 5_000 + tol && diff >= 5_000 - origins_apart_ms - tol,
        "offsets differ by {diff} ms, expected 5000 - [0, {origins_apart_ms}] ± {tol}"
    );

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
    // The same instant to the µs: never before the start of the last
    // millisecond handed out, and within that millisecond's neighbourhood.
    for _ in 0..10_000 {
        let ms = clock.now_ms();
        let us = clock.now_us();
        assert!(us >= ms * 1000, "{us} µs before {ms} ms");
        assert!(us < (ms + 5) * 1000, "{us} µs far after {ms} ms");
    }
    drop(_stop);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("a dropped shutdown sender stops the task")
        .expect("no panic");
}
