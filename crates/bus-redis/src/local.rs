//! [`Locals`]: the in-process fan-out, one tokio broadcast channel per session
//! that has subscribers on this instance. N local subscribers of a session
//! share one Redis subscription and one decoding of each message.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use kairos_domain::{BusMessage, SessionId};
use tokio::sync::broadcast;

/// One session's channel. `generation` tells a subscription apart from a
/// later one of the same session, so that a stale drop never removes a
/// channel it did not belong to.
#[derive(Debug)]
struct Local {
    generation: u64,
    sender: broadcast::Sender<BusMessage>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, Local>,
    next_generation: u64,
}

/// The sessions watched on this instance. Std mutex: it is held only to look
/// up, insert or remove one entry (or to walk them on a reconnection), never
/// across an await, and it is taken once per received message, where a tokio
/// mutex would cost more.
#[derive(Debug)]
pub(crate) struct Locals {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Locals {
    /// `capacity` is how far a subscriber may lag before it gets `Lagged`; at least 1.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held (map operations and channel
        // sends only), so a poisoned lock still guards a consistent map.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins a session's channel, creating it if this is its first subscriber.
    /// Returns the channel's generation and a receiver.
    pub(crate) fn join(&self, id: SessionId) -> (u64, broadcast::Receiver<BusMessage>) {
        let mut inner = self.lock();
        let generation = inner.next_generation;
        let local = inner.sessions.entry(id).or_insert_with(|| Local {
            generation,
            sender: broadcast::channel(self.capacity).0,
        });
        let joined = (local.generation, local.sender.subscribe());
        if joined.0 == generation {
            inner.next_generation = generation.wrapping_add(1);
        }
        joined
    }

    /// Called when a receiver of `generation` is about to be dropped: removes
    /// the channel if that receiver is its last. Returns whether it did.
    pub(crate) fn leave(&self, id: SessionId, generation: u64) -> bool {
        let mut inner = self.lock();
        // The leaving receiver is still alive, hence `<= 1`.
        let last = inner
            .sessions
            .get(&id)
            .is_some_and(|l| l.generation == generation && l.sender.receiver_count() <= 1);
        if last {
            inner.sessions.remove(&id);
        }
        last
    }

    /// Whether a session has local subscribers.
    pub(crate) fn is_watched(&self, id: SessionId) -> bool {
        self.lock().sessions.contains_key(&id)
    }

    /// The sessions with local subscribers.
    pub(crate) fn watched(&self) -> Vec<SessionId> {
        self.lock().sessions.keys().copied().collect()
    }

    /// How many sessions have local subscribers.
    pub(crate) fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Sends `message` to one session's subscribers, if any.
    pub(crate) fn send(&self, id: SessionId, message: BusMessage) {
        if let Some(local) = self.lock().sessions.get(&id) {
            // An error only means every receiver went away meanwhile.
            let _ = local.sender.send(message);
        }
    }

    /// Sends `message` to every local subscriber of every session.
    pub(crate) fn send_all(&self, message: &BusMessage) {
        for local in self.lock().sessions.values() {
            let _ = local.sender.send(message.clone());
        }
    }

    /// Drops every channel: each subscription's stream then ends.
    pub(crate) fn close_all(&self) {
        self.lock().sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn the_channel_lives_while_any_subscriber_does() {
        let locals = Locals::new(4);
        let (g1, r1) = locals.join(id(1));
        let (g2, r2) = locals.join(id(1));
        assert_eq!(g1, g2, "subscribers of one session share a channel");
        assert_eq!(locals.len(), 1);

        assert!(!locals.leave(id(1), g1));
        drop(r1);
        assert!(locals.is_watched(id(1)));
        assert!(locals.leave(id(1), g2));
        drop(r2);
        assert!(!locals.is_watched(id(1)));
    }

    #[test]
    fn a_stale_leave_does_not_remove_a_newer_channel() {
        let locals = Locals::new(4);
        let (old, old_rx) = locals.join(id(1));
        locals.close_all();
        let (new, _new_rx) = locals.join(id(1));
        assert_ne!(old, new);
        assert!(!locals.leave(id(1), old));
        drop(old_rx);
        assert!(locals.is_watched(id(1)));
    }

    #[test]
    fn messages_reach_every_subscriber_of_the_session_only() {
        let locals = Locals::new(4);
        let (_, mut a) = locals.join(id(1));
        let (_, mut b) = locals.join(id(2));
        locals.send(id(1), BusMessage::Lagged);
        assert_eq!(a.try_recv().ok(), Some(BusMessage::Lagged));
        assert!(b.try_recv().is_err());
        locals.send_all(&BusMessage::Lagged);
        assert_eq!(a.try_recv().ok(), Some(BusMessage::Lagged));
        assert_eq!(b.try_recv().ok(), Some(BusMessage::Lagged));
    }
}
