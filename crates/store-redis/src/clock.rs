//! [`RedisClock`]: "now" for every instance of a deployment, taken from
//! Redis `TIME` so that a session reads the same whichever host serves it.
//!
//! Asking Redis on every read would put a round trip on every request, so
//! the clock tracks an offset instead: `redis_time - local_monotonic`,
//! measured with half the round trip as the estimate of when Redis read its
//! clock, keeping the sample with the smallest round trip (the tightest
//! bound) out of a few. `now_ms` is then the local monotonic reading plus
//! that offset. The host's wall clock is never read: a host whose clock is
//! wrong, or stepped by NTP, changes nothing. A background task refreshes
//! the offset, which absorbs the slow drift between the host's oscillator
//! and the Redis server's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use kairos_domain::{Clock, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::RedisConnection;

/// Samples taken when the clock starts (the best one wins).
const INITIAL_SAMPLES: usize = 7;
/// Samples per periodic refresh.
const REFRESH_SAMPLES: usize = 3;

/// A [`Clock`] that follows Redis `TIME`. Create it with
/// [`RedisClock::connect`]; share it as `Arc<RedisClock>`.
#[derive(Debug)]
pub struct RedisClock {
    state: Arc<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    /// The local monotonic origin every reading is measured from.
    origin: Instant,
    /// Added to every local reading (µs). Zero except in tests, where it
    /// stands for a host whose own idea of time is off.
    skew_us: i64,
    /// Redis time minus local reading (µs), from the best recent sample.
    offset_us: AtomicI64,
    /// Round trip of the sample the offset came from (µs), for diagnostics.
    rtt_us: AtomicI64,
    /// The largest value `now_ms` returned, so it never goes backwards when
    /// a refresh lowers the offset a little.
    last_ms: AtomicI64,
}

impl ClockState {
    /// The local monotonic reading in µs (plus the test skew).
    fn local_us(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_micros())
            .unwrap_or(i64::MAX)
            .saturating_add(self.skew_us)
    }

    /// Takes `samples` measurements and returns (offset, rtt) of the one with
    /// the smallest round trip.
    async fn measure(
        &self,
        conn: &RedisConnection,
        samples: usize,
    ) -> Result<(i64, i64), StoreError> {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..samples.max(1) {
            let before = self.local_us();
            let redis_us = conn.server_time_us().await?;
            let after = self.local_us();
            let rtt = after.saturating_sub(before).max(0);
            // Assume Redis read its clock halfway through the round trip.
            let offset = redis_us.saturating_sub(before.saturating_add(rtt / 2));
            if best.is_none_or(|(_, best_rtt)| rtt < best_rtt) {
                best = Some((offset, rtt));
            }
        }
        best.ok_or_else(|| StoreError::Other("no clock sample".into()))
    }

    fn adopt(&self, (offset, rtt): (i64, i64)) {
        self.offset_us.store(offset, Ordering::Release);
        self.rtt_us.store(rtt, Ordering::Release);
    }
}

impl RedisClock {
    /// Measures the offset to Redis `TIME` (failing with
    /// [`StoreError::Unavailable`] when Redis does not answer) and starts
    /// the task that re-measures it every `refresh_every`. The task ends when
    /// `shutdown` turns `true` or its sender is dropped; await the returned
    /// handle to be sure it has. While Redis is unreachable the task keeps
    /// the last offset: the clock goes on from the local monotonic clock.
    pub async fn connect(
        conn: RedisConnection,
        refresh_every: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Self>, JoinHandle<()>), StoreError> {
        Self::connect_with_skew(conn, refresh_every, shutdown, 0).await
    }

    /// TEST HOOK: as [`RedisClock::connect`], with every local reading
    /// shifted by `skew_ms`, standing for a host whose clock is that far off.
    /// Production code calls [`RedisClock::connect`]; tests use this to show
    /// that the shift does not reach `now_ms`.
    pub async fn connect_with_skew(
        conn: RedisConnection,
        refresh_every: Duration,
        mut shutdown: watch::Receiver<bool>,
        skew_ms: i64,
    ) -> Result<(Arc<Self>, JoinHandle<()>), StoreError> {
        let state = Arc::new(ClockState {
            origin: Instant::now(),
            skew_us: skew_ms.saturating_mul(1000),
            offset_us: AtomicI64::new(0),
            rtt_us: AtomicI64::new(0),
            last_ms: AtomicI64::new(i64::MIN),
        });
        state.adopt(state.measure(&conn, INITIAL_SAMPLES).await?);
        // A zero period would spin on Redis; 10 ms is already far more often
        // than drift between two clocks could matter.
        let refresh_every = refresh_every.max(Duration::from_millis(10));
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = shutdown.changed() => {
                        // A dropped sender means nobody can ask us to stop: stop now.
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                    }
                    () = tokio::time::sleep(refresh_every) => {
                        match task_state.measure(&conn, REFRESH_SAMPLES).await {
                            Ok(sample) => task_state.adopt(sample),
                            Err(e) => tracing::warn!(error = %e, "Redis clock refresh failed; keeping the last offset"),
                        }
                    }
                }
            }
        });
        Ok((Arc::new(Self { state }), task))
    }

    /// The current offset from the local monotonic reading to Redis time, in ms.
    pub fn offset_ms(&self) -> i64 {
        self.state
            .offset_us
            .load(Ordering::Acquire)
            .div_euclid(1000)
    }

    /// The round trip of the sample the offset came from: the offset is
    /// accurate to about half of it.
    pub fn sample_rtt(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.state.rtt_us.load(Ordering::Acquire)).unwrap_or(0))
    }

    /// Redis time now, in µs: the local monotonic reading plus the offset.
    fn raw_us(&self) -> i64 {
        let state = &self.state;
        state
            .local_us()
            .saturating_add(state.offset_us.load(Ordering::Acquire))
    }
}

impl Clock for RedisClock {
    fn now_ms(&self) -> i64 {
        let now = self.raw_us().div_euclid(1000);
        let previous = self.state.last_ms.fetch_max(now, Ordering::AcqRel);
        previous.max(now)
    }

    /// Never before the start of the last `now_ms` handed out, so that
    /// `now_ms` is this floored or later.
    fn now_us(&self) -> i64 {
        let floor = self
            .state
            .last_ms
            .load(Ordering::Acquire)
            .saturating_mul(1000);
        self.raw_us().max(floor)
    }
}
