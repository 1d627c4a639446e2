//! [`Locals`]: the routing table of this instance, from each session that
//! has subscriptions here to the [`Queue`] of each of them.
//!
//! It routes and does not fan out: a message is decoded once and pushed onto
//! each subscription's own queue, with no per-session buffer in between. The
//! port contract expects one subscription per session per instance (the hub
//! holds it and fans out to its sockets), so a session usually has one queue;
//! more work, each with its own lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kairos_domain::{BusMessage, SessionId};

use crate::queue::Queue;

/// The sessions watched on this instance and their subscriptions' queues.
/// Std mutex: it is held only to look up, insert or remove one entry and
/// push onto its queues (or to walk them on a reconnection), never across an
/// await, and it is taken once per received message, where a tokio mutex
/// would cost more.
#[derive(Debug)]
pub(crate) struct Locals {
    sessions: Mutex<HashMap<SessionId, Vec<Arc<Queue>>>>,
    capacity: usize,
}

impl Locals {
    /// `capacity` is how far a subscription may lag before it gets `Lagged`; at least 1.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Vec<Arc<Queue>>>> {
        // Nothing panics while the lock is held (map operations and queue
        // pushes only), so a poisoned lock still guards a consistent map.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a subscription to a session and returns its queue.
    pub(crate) fn join(&self, id: SessionId) -> Arc<Queue> {
        let queue = Arc::new(Queue::new(self.capacity));
        self.lock().entry(id).or_default().push(queue.clone());
        queue
    }

    /// Removes a subscription's queue; returns whether it was the session's
    /// last, so that the caller unsubscribes in Redis. A queue that is no
    /// longer in the table (after [`Locals::close_all`]) changes nothing:
    /// identity is the queue's address, alive as long as the caller holds it.
    pub(crate) fn leave(&self, id: SessionId, queue: &Arc<Queue>) -> bool {
        let mut sessions = self.lock();
        let Some(queues) = sessions.get_mut(&id) else {
            return false;
        };
        let before = queues.len();
        queues.retain(|q| !Arc::ptr_eq(q, queue));
        let last = queues.is_empty() && before == 1;
        if last {
            sessions.remove(&id);
        }
        last
    }

    /// Whether a session has local subscriptions.
    pub(crate) fn is_watched(&self, id: SessionId) -> bool {
        self.lock().contains_key(&id)
    }

    /// The sessions with local subscriptions.
    pub(crate) fn watched(&self) -> Vec<SessionId> {
        self.lock().keys().copied().collect()
    }

    /// How many sessions have local subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Pushes `message` onto the queue of each subscription of one session,
    /// if any, moving it into the last (usually the only) one. Returns how
    /// many messages full queues dropped to make room.
    pub(crate) fn send(&self, id: SessionId, message: BusMessage) -> u64 {
        let sessions = self.lock();
        let Some((last, others)) = sessions.get(&id).and_then(|q| q.split_last()) else {
            return 0;
        };
        let mut lost = 0;
        for queue in others {
            lost += u64::from(queue.push(message.clone()));
        }
        lost + u64::from(last.push(message))
    }

    /// Pushes `message` onto every local subscription of every session.
    /// Returns how many messages full queues dropped to make room.
    pub(crate) fn send_all(&self, message: &BusMessage) -> u64 {
        self.lock()
            .values()
            .flatten()
            .map(|queue| u64::from(queue.push(message.clone())))
            .sum()
    }

    /// Closes every queue (each subscription's stream ends once drained) and
    /// forgets every session.
    pub(crate) fn close_all(&self) {
        for (_, queues) in self.lock().drain() {
            for queue in queues {
                queue.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn id(n: u128) -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn next(queue: &Queue) -> Poll<Option<BusMessage>> {
        queue.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn the_session_stays_watched_while_any_subscription_does() {
        let locals = Locals::new(4);
        let first = locals.join(id(1));
        let second = locals.join(id(1));
        assert!(!Arc::ptr_eq(&first, &second), "each has its own queue");
        assert_eq!(locals.len(), 1);

        assert!(!locals.leave(id(1), &first));
        assert!(locals.is_watched(id(1)));
        assert!(
            !locals.leave(id(1), &first),
            "leaving twice changes nothing"
        );
        assert!(locals.leave(id(1), &second));
        assert!(!locals.is_watched(id(1)));
    }

    #[test]
    fn a_stale_leave_does_not_remove_a_newer_subscription() {
        let locals = Locals::new(4);
        let old = locals.join(id(1));
        locals.close_all();
        assert_eq!(next(&old), Poll::Ready(None), "closing ends the stream");
        let _new = locals.join(id(1));
        assert!(!locals.leave(id(1), &old));
        assert!(locals.is_watched(id(1)));
    }

    #[test]
    fn messages_reach_every_subscription_of_the_session_only() {
        let locals = Locals::new(4);
        let a = locals.join(id(1));
        let also_a = locals.join(id(1));
        let b = locals.join(id(2));
        locals.send(id(1), BusMessage::Lagged);
        assert_eq!(next(&a), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&also_a), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&b), Poll::Pending);
        locals.send_all(&BusMessage::Lagged);
        assert_eq!(next(&a), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&also_a), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&b), Poll::Ready(Some(BusMessage::Lagged)));
    }

    #[test]
    fn a_full_queue_counts_its_losses_and_holds_back_no_other() {
        let locals = Locals::new(2);
        let slow = locals.join(id(1));
        let fast = locals.join(id(1));
        let mut lost = 0;
        for at_ms in 1..=5 {
            let message = BusMessage::Deleted {
                session_id: id(1),
                at_ms,
            };
            lost += locals.send(id(1), message.clone());
            assert_eq!(next(&fast), Poll::Ready(Some(message)));
        }
        assert_eq!(lost, 3);
        assert_eq!(next(&slow), Poll::Ready(Some(BusMessage::Lagged)));
    }
}
