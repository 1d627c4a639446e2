//! The clock offset (server clock minus this machine's), estimated from
//! `PING`/`PONG` round trips exactly as the browser SDK does (docs/sdk.md,
//! "Clock offset"), and this machine's clock made monotonic.
//!
//! A round trip sent at `sent` and received at `received` (client clock)
//! whose server timestamp is `server` (whole ms, truncated) allows any offset
//! in `[server - received, server + 1 - sent]`, a range as wide as the round
//! trip. The estimate is the middle of the range every kept sample allows
//! (the intersection), so the samples with the smallest round trips decide it
//! and slow ones cannot drag it off; a sample that cannot be reconciled with
//! the older ones (a clock jumped, another instance answers) drops the oldest
//! until the rest agree.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// This machine's clock in ms since the epoch, read once from the wall clock
/// and advanced by a monotonic clock, so that a wall-clock step does not move
/// computed clocks (the offset absorbs the base).
#[derive(Debug, Clone, Copy)]
pub struct LocalClock {
    wall0_ms: f64,
    at: Instant,
}

impl LocalClock {
    /// A clock based on the wall clock now.
    pub fn new() -> Self {
        let wall0_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        Self {
            wall0_ms,
            at: Instant::now(),
        }
    }

    /// Now, in (fractional) ms since the epoch.
    pub fn now_ms(&self) -> f64 {
        self.wall0_ms + self.at.elapsed().as_secs_f64() * 1000.0
    }
}

impl Default for LocalClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the `PING` was sent (client ms).
    pub sent: f64,
    /// When the `PONG` arrived (client ms).
    pub received: f64,
    /// The `PONG`'s `timestamp` (server ms).
    pub server: f64,
    /// `received - sent`.
    pub rtt: f64,
    /// The smallest offset this sample allows.
    pub lo: f64,
    /// The largest offset this sample allows.
    pub hi: f64,
}

/// The current estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffsetEstimate {
    /// Server minus client clock, in ms.
    pub offset_ms: f64,
    /// Half the width of the range all kept samples allow: a guaranteed
    /// bound on the error of `offset_ms`.
    pub bound_ms: f64,
    /// Half the best kept round trip.
    pub uncertainty_ms: f64,
    /// The best kept round trip.
    pub rtt_ms: f64,
    /// How many samples it rests on.
    pub samples: usize,
}

/// Estimates the offset from the last `window` round trips.
#[derive(Debug, Clone)]
pub struct OffsetEstimator {
    window: usize,
    resolution: f64,
    samples: VecDeque<Sample>,
    provisional: Option<f64>,
    estimate: Option<OffsetEstimate>,
    resets: u64,
}

impl OffsetEstimator {
    /// An estimator over the last `window` samples (at least 1) of a server
    /// whose timestamps are whole ms.
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            resolution: 1.0,
            samples: VecDeque::new(),
            provisional: None,
            estimate: None,
            resets: 0,
        }
    }

    /// Adds a round trip; `None` (and nothing kept) when it is unusable: a
    /// negative round trip or a number that is not finite.
    pub fn add_sample(&mut self, sent: f64, received: f64, server: f64) -> Option<Sample> {
        if !(sent.is_finite() && received.is_finite() && server.is_finite()) {
            return None;
        }
        let rtt = received - sent;
        if rtt < 0.0 {
            return None;
        }
        let sample = Sample {
            sent,
            received,
            server,
            rtt,
            lo: server - received,
            hi: server + self.resolution - sent,
        };
        self.samples.push_back(sample);
        while self.samples.len() > self.window {
            self.samples.pop_front();
        }
        let mut dropped = false;
        while self.samples.len() > 1 && self.intersection().is_none() {
            self.samples.pop_front();
            dropped = true;
        }
        if dropped {
            self.resets += 1;
        }
        self.recompute();
        Some(sample)
    }

    /// A rough offset to use before any round trip (e.g. `CONNECTED`'s
    /// `timestamp` minus its arrival).
    pub fn set_provisional(&mut self, offset_ms: f64) {
        if offset_ms.is_finite() {
            self.provisional = Some(offset_ms);
        }
    }

    /// Forgets the samples (a new connection may reach another instance);
    /// the estimate stays until a new sample arrives.
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    /// Server minus client clock in ms: the estimate, else the provisional
    /// offset, else `None`.
    pub fn offset_ms(&self) -> Option<f64> {
        self.estimate.map(|e| e.offset_ms).or(self.provisional)
    }

    /// The estimate, once a round trip was measured.
    pub fn estimate(&self) -> Option<OffsetEstimate> {
        self.estimate
    }

    /// How many times irreconcilable samples dropped older ones.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn intersection(&self) -> Option<(f64, f64)> {
        let mut lo = f64::NEG_INFINITY;
        let mut hi = f64::INFINITY;
        for s in &self.samples {
            lo = lo.max(s.lo);
            hi = hi.min(s.hi);
        }
        // A hair of tolerance for floating-point rounding only.
        (hi + 1e-6 >= lo).then_some((lo, hi.max(lo)))
    }

    fn recompute(&mut self) {
        let Some((lo, hi)) = self.intersection() else {
            return;
        };
        let best = self
            .samples
            .iter()
            .map(|s| s.rtt)
            .fold(f64::INFINITY, f64::min);
        self.estimate = Some(OffsetEstimate {
            offset_ms: (lo + hi) / 2.0,
            bound_ms: (hi - lo) / 2.0,
            uncertainty_ms: best / 2.0,
            rtt_ms: best,
            samples: self.samples.len(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn symmetric_round_trips_give_the_true_offset_within_half_a_ms() {
        let truth = 1234.0;
        let mut e = OffsetEstimator::new(8);
        for (i, rtt) in [40.0, 12.0, 90.0, 8.0, 30.0].into_iter().enumerate() {
            let sent = 1000.0 * i as f64;
            let server = (sent + rtt / 2.0 + truth).floor();
            e.add_sample(sent, sent + rtt, server).unwrap();
        }
        let est = e.estimate().unwrap();
        assert!((est.offset_ms - truth).abs() <= 1.0, "{est:?}");
        assert!(est.bound_ms <= 4.5, "{est:?}");
        assert_eq!(est.rtt_ms, 8.0);
    }

    #[test]
    fn a_slow_leg_cannot_drag_the_estimate_outside_the_best_sample() {
        let mut e = OffsetEstimator::new(8);
        // Offset 0; a fast probe, then one whose return leg took 500 ms.
        e.add_sample(0.0, 2.0, 1.0).unwrap();
        e.add_sample(10.0, 511.0, 11.0).unwrap();
        let est = e.estimate().unwrap();
        assert!(est.offset_ms.abs() <= 1.0, "{est:?}");
    }

    #[test]
    fn a_clock_jump_drops_the_old_samples() {
        let mut e = OffsetEstimator::new(8);
        e.add_sample(0.0, 2.0, 1.0).unwrap();
        e.add_sample(10.0, 12.0, 11.0).unwrap();
        // The server's clock is now 10 s ahead.
        e.add_sample(20.0, 22.0, 10_021.0).unwrap();
        assert_eq!(e.resets(), 1);
        assert!((e.offset_ms().unwrap() - 10_000.0).abs() <= 1.5);
    }

    #[test]
    fn unusable_samples_are_refused_and_the_provisional_offset_serves_until_one() {
        let mut e = OffsetEstimator::new(8);
        assert_eq!(e.offset_ms(), None);
        e.set_provisional(-7.0);
        assert_eq!(e.offset_ms(), Some(-7.0));
        assert!(e.add_sample(10.0, 5.0, 1.0).is_none());
        assert!(e.add_sample(f64::NAN, 5.0, 1.0).is_none());
        assert_eq!(e.offset_ms(), Some(-7.0));
    }
}
