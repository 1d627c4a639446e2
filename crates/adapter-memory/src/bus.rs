//! [`MemoryBus`]: the in-process event bus. It routes and does not fan out:
//! each published message is pushed onto the bounded queue of each
//! subscription of its session, the same contract as the Redis bus, so that
//! the service and the hub behave alike on both. A session nobody watches
//! costs a map lookup to publish to, and an idle subscription a few words.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use futures_core::Stream;
use kairos_domain::{BusError, BusMessage, EventBus, SessionId, Subscription};

/// Messages a slow subscription may fall behind by before it is told to resync.
const QUEUE_CAPACITY: usize = 256;

/// A drained buffer whose capacity grew beyond this (a burst) is freed, so
/// that an idle subscription keeps no memory for messages it no longer has.
const IDLE_CAPACITY: usize = 8;

type Routes = HashMap<SessionId, Vec<Arc<Queue>>>;

/// An in-process [`EventBus`]. Std mutex: held only to look up, insert or
/// remove an entry and push onto its queues, never across an await.
#[derive(Debug, Default, Clone)]
pub struct MemoryBus {
    routes: Arc<Mutex<Routes>>,
    dropped: Arc<AtomicU64>,
}

impl MemoryBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions currently have at least one subscriber.
    pub fn watched_sessions(&self) -> usize {
        lock(&self.routes).len()
    }

    /// Messages slow subscriptions lost since the start (each was sent
    /// `Lagged` instead).
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Nothing panics while the map is locked (map operations and queue pushes
/// only), so a poisoned lock still guards a consistent map.
fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

fn session_of(message: &BusMessage) -> Option<SessionId> {
    message.session_id()
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, message: BusMessage) {
        let Some(id) = session_of(&message) else {
            return;
        };
        let routes = lock(&self.routes);
        let Some((last, others)) = routes.get(&id).and_then(|q| q.split_last()) else {
            return;
        };
        // The last (usually the only) subscription takes the message itself.
        let mut lost = 0;
        for queue in others {
            lost += u64::from(queue.push(message.clone()));
        }
        lost += u64::from(last.push(message));
        drop(routes);
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }

    async fn subscribe(&self, session_id: SessionId) -> Result<Subscription, BusError> {
        let queue = Arc::new(Queue::default());
        lock(&self.routes)
            .entry(session_id)
            .or_default()
            .push(queue.clone());
        Ok(Box::pin(SessionStream {
            queue,
            session_id,
            routes: self.routes.clone(),
        }))
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

/// One subscription; dropping it removes its queue, and the session's entry
/// with the last one.
struct SessionStream {
    queue: Arc<Queue>,
    session_id: SessionId,
    routes: Arc<Mutex<Routes>>,
}

impl Stream for SessionStream {
    type Item = BusMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.queue.poll_next(cx)
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        if let Some(queues) = routes.get_mut(&self.session_id) {
            queues.retain(|q| !Arc::ptr_eq(q, &self.queue));
            if queues.is_empty() {
                routes.remove(&self.session_id);
            }
        }
    }
}

#[derive(Debug, Default)]
struct QueueState {
    /// Messages not yet read, oldest first.
    messages: VecDeque<BusMessage>,
    /// Messages were dropped to make room: `Lagged` is owed before the rest.
    lagged: bool,
    /// The reader waiting for a message, if any.
    waker: Option<Waker>,
}

/// One subscription's own bounded queue. A full queue drops its oldest
/// message, as a broadcast channel would, and its reader gets `Lagged` before
/// what it still holds; the other subscriptions are not held back. The
/// buffer is allocated on the first message and freed after a burst.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while it is held (queue operations and a waker clone).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a message and wakes the reader; returns whether the oldest
    /// was dropped to make room.
    fn push(&self, message: BusMessage) -> bool {
        let mut state = self.lock();
        let lost = state.messages.len() >= QUEUE_CAPACITY;
        if lost {
            state.messages.pop_front();
            state.lagged = true;
        }
        state.messages.push_back(message);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        lost
    }

    /// `Lagged` first if messages were dropped, then the queued ones in
    /// order. The memory bus never ends a subscription.
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
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
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SessionId {
        format!("00000000-0000-4000-8000-{n:012}")
            .parse()
            .expect("a valid id")
    }

    /// A message of session `id(1)` told apart by its instant.
    fn message(at_ms: i64) -> BusMessage {
        BusMessage::Deleted {
            session_id: id(1),
            at_ms,
        }
    }

    /// The next queued message: `publish` pushes before it returns, so
    /// whatever was published is there without waiting.
    fn next(subscription: &mut Subscription) -> BusMessage {
        let mut cx = Context::from_waker(Waker::noop());
        match subscription.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(message)) => message,
            other => panic!("expected a queued message, got {other:?}"),
        }
    }

    fn nothing_queued(subscription: &mut Subscription) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        subscription.as_mut().poll_next(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn two_subscriptions_of_one_session_each_get_every_message_in_order() {
        let bus = MemoryBus::new();
        let mut first = bus.subscribe(id(1)).await.expect("subscribed");
        let mut second = bus.subscribe(id(1)).await.expect("subscribed");
        let mut other = bus.subscribe(id(2)).await.expect("subscribed");
        assert_eq!(bus.watched_sessions(), 2);

        for at_ms in 1..=100 {
            bus.publish(message(at_ms)).await;
        }

        for subscription in [&mut first, &mut second] {
            for at_ms in 1..=100 {
                assert_eq!(next(subscription), message(at_ms));
            }
        }
        assert!(nothing_queued(&mut other), "sessions are kept apart");
        assert_eq!(bus.dropped_messages(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscription_gets_lagged_without_holding_back_the_other() {
        let bus = MemoryBus::new();
        let mut fast = bus.subscribe(id(1)).await.expect("subscribed");
        let mut slow = bus.subscribe(id(1)).await.expect("subscribed");
        let total = QUEUE_CAPACITY as i64 + 10;

        for at_ms in 1..=total {
            bus.publish(message(at_ms)).await;
            assert_eq!(next(&mut fast), message(at_ms));
        }

        assert_eq!(bus.dropped_messages(), 10);
        assert_eq!(next(&mut slow), BusMessage::Lagged);
        // Then the newest messages still in its queue, in order.
        for at_ms in 11..=total {
            assert_eq!(next(&mut slow), message(at_ms));
        }
        assert!(nothing_queued(&mut slow));
    }

    #[tokio::test]
    async fn the_last_drop_forgets_the_session() {
        let bus = MemoryBus::new();
        let first = bus.subscribe(id(1)).await.expect("subscribed");
        let mut second = bus.subscribe(id(1)).await.expect("subscribed");
        drop(first);
        assert_eq!(bus.watched_sessions(), 1);
        bus.publish(message(1)).await;
        assert_eq!(next(&mut second), message(1));

        drop(second);
        assert_eq!(bus.watched_sessions(), 0);
        // Publishing to an unwatched session is a lookup and nothing else.
        bus.publish(message(2)).await;
        let mut again = bus.subscribe(id(1)).await.expect("subscribed");
        assert!(nothing_queued(&mut again), "nothing was kept for it");
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let queue = Queue::default();
        for at_ms in 0..100 {
            queue.push(message(at_ms));
        }
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(_)) = queue.poll_next(&mut cx) {}
        assert_eq!(queue.lock().messages.capacity(), 0);
    }
}
