//! Counters of what the bus did and failed to do. `publish` never reports a
//! failure to its caller, so these are the only place a lossy bus shows up:
//! the server exports them as metrics and alerts on them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of the bus's counters (monotonic since start) and gauges (now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Messages Redis accepted from this bus's publisher (updates a commit
    /// script published are not among them: see the crate documentation).
    pub published: u64,
    /// Messages dropped before reaching Redis because the publish queue was
    /// full or the bus was shut down.
    pub publish_dropped: u64,
    /// Messages lost to a Redis error or timeout (or that could not be encoded).
    pub publish_failed: u64,
    /// Pub/Sub messages this instance received from Redis.
    pub received: u64,
    /// Received messages that could not be decoded; their subscribers were
    /// sent `Lagged` instead.
    pub decode_failed: u64,
    /// Times the subscriber connection was re-established after a loss.
    pub reconnects: u64,
    /// Messages a local subscription lost because it fell `local_capacity`
    /// behind: its queue dropped the oldest, and it was sent `Lagged`.
    pub local_dropped: u64,
    /// Gauge: sessions with at least one local subscriber.
    pub watched_sessions: u64,
    /// Gauge: channels this instance is subscribed to in Redis.
    pub redis_subscriptions: u64,
    /// Gauge: messages waiting for the publisher task.
    pub publish_queue_len: u64,
}

/// The live counters, shared by the bus handle and its tasks. Relaxed
/// ordering: each is read on its own for metrics, none guards other memory.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_dropped: AtomicU64,
    pub(crate) publish_failed: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) decode_failed: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) local_dropped: AtomicU64,
    pub(crate) redis_subscriptions: AtomicU64,
    /// Whether the subscriber connection is up and subscribed to every watched session.
    pub(crate) subscriber_up: AtomicBool,
}

impl Counters {
    /// Adds `n` to a counter and returns the new total.
    pub(crate) fn add(counter: &AtomicU64, n: u64) -> u64 {
        counter.fetch_add(n, Ordering::Relaxed).saturating_add(n)
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
