//! `PreciseSleep` against the kernel's timer.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use precise_sleep::PreciseSleep;

/// Never returns before the instant asked, returns at once for one passed
/// (no timer is armed, so it would hang if it waited for one), and a wait
/// dropped half way does not cut the next one short.
#[tokio::test]
async fn never_early_never_stuck_and_a_dropped_wait_leaves_nothing() {
    let sleep = PreciseSleep::new().unwrap();
    for micros in [1_u64, 50, 300, 1_500, 250, 4_000] {
        let at = Instant::now() + Duration::from_micros(micros);
        sleep.until(at).await.unwrap();
        assert!(
            Instant::now() >= at,
            "returned before a wait of {micros} µs"
        );
    }
    let past = Instant::now()
        .checked_sub(Duration::from_millis(5))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), sleep.until(past))
        .await
        .expect("an instant passed returns at once")
        .unwrap();
    // Armed for 1 ms, dropped after 0.1 ms, and expired meanwhile ...
    let short = Instant::now() + Duration::from_millis(1);
    let _ = tokio::time::timeout(Duration::from_micros(100), sleep.until(short)).await;
    std::thread::sleep(Duration::from_millis(2));
    // ... the next wait still waits its own time.
    let at = Instant::now() + Duration::from_millis(20);
    sleep.until(at).await.unwrap();
    assert!(Instant::now() >= at, "the stale expiry ended the next wait");
}
