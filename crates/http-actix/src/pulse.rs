//! The instance's WebSocket heartbeat: one timer for every socket instead
//! of one per socket, and the shutdown call on the same channel.
//!
//! Why: a per-socket `tokio::time::Interval` boxes its timer entry (112
//! bytes) and adds its own state to the socket's task, paid by every idle
//! socket; and a socket that also watches the shutdown broadcast holds a
//! second receiver and wait. Here each socket holds one `watch` receiver:
//! it changes on every beat (the socket then pings, checks its client's
//! silence and its token's expiry) and when sockets must close (1001).
//!
//! A socket's first beat comes within one period of its connect instead of
//! exactly one period after it; a silent client is still closed at most
//! one period after its timeout, as before.
//!
//! The sockets are spread over [`BUCKETS`] channels that beat in turn,
//! `period / BUCKETS` apart: one beat wakes a sixteenth of the sockets, so
//! 10,000 sockets never send their pings in the same instant (a burst that
//! delayed every other write on the instance by up to 100 ms).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// What the heartbeat channel says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Beats so far.
    pub count: u64,
    /// Sockets must close (the instance is going away).
    pub closing: bool,
}

/// Channels the sockets are spread over, beating in turn.
pub const BUCKETS: usize = 16;

/// The heartbeat of one instance's sockets (held by its `Lifecycle`).
#[derive(Debug)]
pub struct Pulse {
    /// One channel per bucket.
    txs: Vec<watch::Sender<Beat>>,
    /// The bucket the next socket joins.
    next: AtomicUsize,
    /// Whether the timer task runs (started by the first socket).
    started: AtomicBool,
}

impl Default for Pulse {
    fn default() -> Self {
        Self {
            txs: (0..BUCKETS)
                .map(|_| watch::channel(Beat::default()).0)
                .collect(),
            next: AtomicUsize::new(0),
            started: AtomicBool::new(false),
        }
    }
}

impl Pulse {
    /// A receiver of the beats, every `period` (the first socket's call
    /// starts the timer on its runtime; it stops once sockets must close or
    /// the pulse is dropped). Sockets join the buckets in turn.
    pub fn subscribe(self: &Arc<Self>, period: Duration) -> watch::Receiver<Beat> {
        let bucket = self.next.fetch_add(1, Ordering::Relaxed) % BUCKETS;
        let rx = self.txs[bucket].subscribe();
        if !self.started.swap(true, Ordering::AcqRel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let weak: Weak<Self> = Arc::downgrade(self);
            // `BUCKETS` is 16: the cast cannot truncate.
            let step = (period / BUCKETS as u32).max(Duration::from_millis(1));
            runtime.spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + step, step);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut turn = 0usize;
                loop {
                    ticker.tick().await;
                    let Some(pulse) = weak.upgrade() else { return };
                    let tx = &pulse.txs[turn % BUCKETS];
                    if tx.borrow().closing {
                        return;
                    }
                    tx.send_modify(|beat| beat.count = beat.count.wrapping_add(1));
                    turn = turn.wrapping_add(1);
                }
            });
        }
        rx
    }

    /// Tells every socket to close.
    pub fn close(&self) {
        for tx in &self.txs {
            tx.send_modify(|beat| beat.closing = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bucket beats once per period, in turn: over one period every
    /// socket gets exactly one beat, and the sockets of one beat are a
    /// sixteenth of them.
    #[tokio::test(start_paused = true)]
    async fn sockets_are_spread_over_buckets_that_beat_in_turn() {
        let pulse = Arc::new(Pulse::default());
        let period = Duration::from_millis(1_600);
        let mut rxs: Vec<_> = (0..32).map(|_| pulse.subscribe(period)).collect();
        for rx in &mut rxs {
            rx.borrow_and_update();
        }
        // One step: only the first bucket (sockets 0 and 16) has beaten.
        tokio::time::sleep(Duration::from_millis(101)).await;
        let changed: Vec<usize> = rxs
            .iter()
            .enumerate()
            .filter(|(_, rx)| rx.has_changed().unwrap_or(false))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(changed, vec![0, 16]);
        // A whole period: every socket once.
        tokio::time::sleep(period - Duration::from_millis(100)).await;
        assert!(rxs.iter().all(|rx| rx.borrow().count == 1));
        pulse.close();
        assert!(rxs.iter().all(|rx| rx.borrow().closing));
    }
}
