//! [`MemoryBus`]: one tokio broadcast channel per session that has
//! subscribers; a session nobody watches costs nothing to publish to.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_core::Stream;
use kairos_domain::{BusError, BusMessage, EventBus, SessionId, Subscription};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Messages a slow subscriber may fall behind by before it is told to resync.
const CHANNEL_CAPACITY: usize = 256;

type Channels = Arc<Mutex<HashMap<SessionId, broadcast::Sender<BusMessage>>>>;

/// An in-process [`EventBus`]. Std mutex: held only to look up or insert a
/// channel, never across an await.
#[derive(Debug, Default, Clone)]
pub struct MemoryBus {
    channels: Channels,
}

impl MemoryBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions currently have at least one subscriber.
    pub fn watched_sessions(&self) -> usize {
        self.channels.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn session_of(message: &BusMessage) -> Option<SessionId> {
    match message {
        BusMessage::Updated { state, .. } => Some(state.id),
        BusMessage::Deleted { session_id, .. } => Some(*session_id),
        BusMessage::Lagged => None,
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, message: BusMessage) {
        let Some(id) = session_of(&message) else {
            return;
        };
        let sender = match self.channels.lock() {
            Ok(channels) => channels.get(&id).cloned(),
            Err(_) => None,
        };
        if let Some(sender) = sender {
            // An error only means every receiver went away meanwhile.
            let _ = sender.send(message);
        }
    }

    async fn subscribe(&self, session_id: SessionId) -> Result<Subscription, BusError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| BusError::Unavailable("memory bus lock poisoned".into()))?;
        let receiver = channels
            .entry(session_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Box::pin(SessionStream {
            inner: BroadcastStream::new(receiver),
            session_id,
            channels: self.channels.clone(),
        }))
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

/// One subscription; dropping it removes the channel when it was the last.
struct SessionStream {
    inner: BroadcastStream<BusMessage>,
    session_id: SessionId,
    channels: Channels,
}

impl Stream for SessionStream {
    type Item = BusMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(message)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                Poll::Ready(Some(BusMessage::Lagged))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if let Ok(mut channels) = self.channels.lock() {
            // Our receiver is still alive inside `inner`, hence `<= 1`.
            let last = channels
                .get(&self.session_id)
                .is_some_and(|s| s.receiver_count() <= 1);
            if last {
                channels.remove(&self.session_id);
            }
        }
    }
}
