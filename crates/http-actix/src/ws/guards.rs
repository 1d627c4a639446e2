//! What keeps one socket within bounds, each a small value the socket's
//! task owns: its place among the instance's connections ([`Slot`]), the
//! version order of what it sends ([`VersionGate`]) and the client's
//! message rate ([`RateWindow`]). (Fragmented messages are reassembled,
//! within the same 10 KiB, by tungstenite: `ws::upgrade`.)

use std::sync::atomic::Ordering;

use actix_web::web;

use crate::error::ApiError;
use crate::places::Place;
use crate::presence::Seat;
use crate::state::AppState;

/// One of the instance's `ws_max_connections` places, held for the life of
/// a socket. Dropping it (on every exit path, panics included) keeps the
/// counter and the gauge exact.
pub struct Slot {
    pub(crate) state: web::Data<AppState>,
    /// The place held under the token subject's per-user cap, if any
    /// (boxed: one pointer in every idle socket's task instead of two strings).
    place: Option<Box<Place>>,
    /// Who the socket is for presence, and its entry once registered
    /// (boxed for the same reason).
    pub(crate) seat: Option<Box<Seat>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("user_place", &self.place.is_some())
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Takes one of the instance's places; 503 when it holds its maximum.
    pub fn acquire(state: web::Data<AppState>) -> Result<Self, ApiError> {
        let max = state.settings.ws_max_connections;
        state
            .ws_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                ApiError::unavailable(
                    "this instance holds its maximum of WebSocket connections; retry or connect to another",
                    5,
                )
            })?;
        state.metrics.ws_connections.inc();
        Ok(Self {
            state,
            place: None,
            seat: None,
        })
    }

    /// Counts this socket against `sub`'s per-user cap; refuses past it.
    pub async fn claim_user(&mut self, sub: &str) -> Result<(), ApiError> {
        let max = self.state.settings.ws_max_connections_per_user;
        let now = self.state.service.now_ms();
        self.place = Some(Box::new(self.state.places.take(sub, max, now).await?));
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            self.state.places.give_back(*place);
        }
        if let Some(seat) = self.seat.take() {
            self.state.presence.leave(&self.state.service, *seat);
        }
        self.state.ws_connections.fetch_sub(1, Ordering::AcqRel);
        self.state.metrics.ws_connections.dec();
    }
}

/// Keeps a socket's updates in increasing version order: the snapshot sent
/// at connect, duplicates from the bus, and a `STATE_UPDATE` racing a
/// `STATE_SYNC` never make a client see a version twice or go backwards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VersionGate {
    pub(crate) last: u64,
}

impl VersionGate {
    /// Whether `version` is new; if so, it becomes the last one sent.
    pub fn admit(&mut self, version: u64) -> bool {
        let new = version > self.last;
        self.last = self.last.max(version);
        new
    }
}

/// The client message limit over a rolling minute, in `RATE_BUCKETS`
/// buckets: 26 bytes instead of a timestamp per message. The window spans
/// the current bucket and the previous `RATE_BUCKETS - 1`, i.e. between 55
/// and 60 s, so it never refuses a client that keeps to the limit over any
/// 60 s, at the price of letting through up to one bucket's worth more.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RateWindow {
    counts: [u16; RATE_BUCKETS],
    /// The bucket number (ms / `RATE_BUCKET_MS`) `counts` was last advanced to.
    current: u64,
}

const RATE_BUCKETS: usize = 12;
const RATE_BUCKET_MS: u64 = 60_000 / RATE_BUCKETS as u64;

impl RateWindow {
    /// Records a message at `now_ms` (monotonic ms); false once over `limit`.
    pub fn hit(&mut self, now_ms: u64, limit: u32) -> bool {
        let bucket = now_ms / RATE_BUCKET_MS;
        if bucket > self.current {
            // Clear the buckets that fell out of the window (all of them
            // after a long pause).
            let stale = (bucket - self.current).min(RATE_BUCKETS as u64);
            for step in 1..=stale {
                self.counts[slot(self.current + step)] = 0;
            }
            self.current = bucket;
        }
        let count = &mut self.counts[slot(self.current)];
        *count = count.saturating_add(1);
        self.counts.iter().map(|&c| u32::from(c)).sum::<u32>() <= limit
    }
}

fn slot(bucket: u64) -> usize {
    // The remainder is below RATE_BUCKETS, so the cast cannot truncate.
    (bucket % RATE_BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_gate_passes_each_version_once_and_never_goes_back() {
        let mut gate = VersionGate::default();
        assert!(gate.admit(3));
        assert!(!gate.admit(3), "a duplicate");
        assert!(!gate.admit(2), "an older version");
        assert!(
            gate.admit(5),
            "a gap is passed on; the client asks to RECONNECT"
        );
        assert!(gate.admit(6));
        assert_eq!(gate.last, 6);
    }

    #[test]
    fn the_rate_window_allows_the_limit_per_rolling_minute() {
        let mut w = RateWindow::default();
        for i in 0..100 {
            assert!(w.hit(i * 10, 100), "message {i}");
        }
        assert!(!w.hit(1_000, 100), "the 101st within a minute");

        // Spread out: 100 messages over 50 s, then the window rolls.
        let mut w = RateWindow::default();
        for i in 0..100 {
            assert!(w.hit(i * 500, 100));
        }
        assert!(!w.hit(50_000, 100));
        // 60 s after the first bucket, its messages have left the window.
        assert!(w.hit(60_000, 100));
        // After a long silence everything has left it.
        assert!((0..100).all(|_| w.hit(600_000, 100)));
        assert!(!w.hit(600_001, 100));
    }

    #[test]
    fn the_rate_window_never_refuses_a_client_within_the_limit() {
        // One message every 600 ms is exactly 100 per minute.
        let mut w = RateWindow::default();
        for i in 0..1_000 {
            assert!(w.hit(i * 600, 100), "message {i}");
        }
    }
}
