//! [`Queue`]: one subscription's own bounded queue of messages, the only
//! buffer between the subscriber task and whoever reads the subscription.
//!
//! The bus only routes: it pushes each message of a session onto the queue
//! of every subscription of that session, and fan-out to many readers is the
//! caller's business (the hub serializes once for all of its sockets). A
//! queue that is full drops its oldest message to make room, as a broadcast
//! channel would, and its reader gets [`BusMessage::Lagged`] before anything
//! else it still holds; a slow reader therefore never holds back the
//! subscriber task nor the other subscriptions of its session.
//!
//! An idle queue is small: the message buffer is allocated on the first
//! message and given back when a burst has drained.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use kairos_domain::BusMessage;

/// A drained buffer whose capacity grew beyond this (a burst) is freed, so
/// that an idle subscription keeps no memory for messages it no longer has.
const IDLE_CAPACITY: usize = 8;

#[derive(Debug, Default)]
struct State {
    /// Messages not yet read, oldest first.
    messages: VecDeque<BusMessage>,
    /// Messages were dropped to make room: `Lagged` is owed before the rest.
    lagged: bool,
    /// The bus is gone: once `messages` is drained, the stream ends.
    closed: bool,
    /// The reader waiting for a message, if any.
    waker: Option<Waker>,
}

/// One subscription's queue, shared by the routing table (which pushes) and
/// the subscription's stream (which reads). Std mutex: held only to push or
/// pop one message, never across an await; each side takes it once per
/// message and the two are rarely contended.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
}

impl Queue {
    /// A queue holding at most `capacity` messages (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held (queue operations and a waker
        // clone only), so a poisoned lock still guards a consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a message and wakes the reader. Returns whether a message was
    /// lost to make room: the oldest is dropped and the reader gets `Lagged`
    /// first. Nothing happens on a closed queue.
    pub(crate) fn push(&self, message: BusMessage) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if message == BusMessage::Lagged {
            // Right behind another (or a pending one) it says nothing new.
            if state.lagged || state.messages.back() == Some(&BusMessage::Lagged) {
                return false;
            }
            // On a full queue it need not cost a message: owed, it is read
            // first, and the resync it causes covers what is queued behind.
            // No wake: a reader only waits on an empty queue.
            if state.messages.len() >= self.capacity {
                state.lagged = true;
                return false;
            }
        }
        let mut lost = false;
        if state.messages.len() >= self.capacity {
            let oldest = state.messages.pop_front();
            state.lagged = true;
            lost = oldest.is_some_and(|m| m != BusMessage::Lagged);
        }
        state.messages.push_back(message);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        lost
    }

    /// Ends the stream once the messages already queued are read.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next message: `Lagged` first if messages were dropped, then the
    /// queued ones in order; `None` once closed and drained.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        let mut state = self.lock();
        if state.lagged {
            state.lagged = false;
            return Poll::Ready(Some(BusMessage::Lagged));
        }
        if let Some(message) = state.messages.pop_front() {
            if state.messages.is_empty() && state.messages.capacity() > IDLE_CAPACITY {
                state.messages = VecDeque::new();
            }
            return Poll::Ready(Some(message));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kairos_domain::{SessionId, machine};

    use super::*;

    fn message(n: u64) -> BusMessage {
        BusMessage::Deleted {
            session_id: SessionId::from_uuid(uuid::Uuid::from_u128(1)),
            at_ms: n as i64,
        }
    }

    fn next(queue: &Queue) -> Poll<Option<BusMessage>> {
        queue.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn messages_come_out_in_order() {
        let queue = Queue::new(4);
        for n in 1..=3 {
            assert!(!queue.push(message(n)));
        }
        for n in 1..=3 {
            assert_eq!(next(&queue), Poll::Ready(Some(message(n))));
        }
        assert_eq!(next(&queue), Poll::Pending);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_owes_lagged() {
        let queue = Queue::new(2);
        let lost: Vec<bool> = (1..=5).map(|n| queue.push(message(n))).collect();
        assert_eq!(lost, [false, false, true, true, true]);
        assert_eq!(next(&queue), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&queue), Poll::Ready(Some(message(4))));
        assert_eq!(next(&queue), Poll::Ready(Some(message(5))));
        assert_eq!(next(&queue), Poll::Pending);
    }

    #[test]
    fn lagged_is_kept_in_place_and_not_repeated() {
        let queue = Queue::new(4);
        queue.push(message(1));
        queue.push(BusMessage::Lagged);
        queue.push(BusMessage::Lagged);
        queue.push(message(2));
        assert_eq!(next(&queue), Poll::Ready(Some(message(1))));
        assert_eq!(next(&queue), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&queue), Poll::Ready(Some(message(2))));
        assert_eq!(next(&queue), Poll::Pending);
    }

    #[test]
    fn lagged_on_a_full_queue_drops_nothing() {
        let queue = Queue::new(2);
        queue.push(message(1));
        queue.push(message(2));
        assert!(!queue.push(BusMessage::Lagged));
        assert_eq!(next(&queue), Poll::Ready(Some(BusMessage::Lagged)));
        assert_eq!(next(&queue), Poll::Ready(Some(message(1))));
        assert_eq!(next(&queue), Poll::Ready(Some(message(2))));
        assert_eq!(next(&queue), Poll::Pending);
    }

    #[test]
    fn a_closed_queue_is_drained_then_ends() {
        let queue = Queue::new(4);
        queue.push(message(1));
        queue.close();
        assert!(!queue.push(message(2)));
        assert_eq!(next(&queue), Poll::Ready(Some(message(1))));
        assert_eq!(next(&queue), Poll::Ready(None));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let queue = Queue::new(1024);
        let (state, _) = machine::create(
            kairos_domain::SessionConfig::parse(&serde_json::json!({
                "sync_mode": "per_participant",
                "participants": [{"participant_id": "a", "total_time_ms": 1000}]
            }))
            .expect("a valid config"),
            SessionId::from_uuid(uuid::Uuid::from_u128(1)),
            None,
            0,
        );
        let state = Arc::new(state);
        for _ in 0..100 {
            queue.push(BusMessage::Updated {
                state: state.clone(),
                events: vec![],
                at_ms: 0,
            });
        }
        while let Poll::Ready(Some(_)) = next(&queue) {}
        assert_eq!(queue.lock().messages.capacity(), 0);
    }
}
