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

use std::sync::atomic::{AtomicBool, Ordering};
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

/// The heartbeat of one instance's sockets (held by its `Lifecycle`).
#[derive(Debug)]
pub struct Pulse {
    tx: watch::Sender<Beat>,
    /// Whether the timer task runs (started by the first socket).
    started: AtomicBool,
}

impl Default for Pulse {
    fn default() -> Self {
        Self {
            tx: watch::channel(Beat::default()).0,
            started: AtomicBool::new(false),
        }
    }
}

impl Pulse {
    /// A receiver of the beats, every `period` (the first socket's call
    /// starts the timer on its runtime; it stops once sockets must close or
    /// the pulse is dropped).
    pub fn subscribe(self: &Arc<Self>, period: Duration) -> watch::Receiver<Beat> {
        let rx = self.tx.subscribe();
        if !self.started.swap(true, Ordering::AcqRel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let weak: Weak<Self> = Arc::downgrade(self);
            runtime.spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(pulse) = weak.upgrade() else { return };
                    if pulse.tx.borrow().closing {
                        return;
                    }
                    pulse
                        .tx
                        .send_modify(|beat| beat.count = beat.count.wrapping_add(1));
                }
            });
        }
        rx
    }

    /// Tells every socket to close.
    pub fn close(&self) {
        self.tx.send_modify(|beat| beat.closing = true);
    }
}
