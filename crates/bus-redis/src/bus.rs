//! [`RedisBus`]: the [`EventBus`] handle the service holds, and
//! [`RedisBusTasks`], the background tasks it needs, returned to the caller so
//! that nothing runs detached.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;
use kairos_domain::{
    BusError, BusMessage, EncodedMessage, Event, EventBus, Session, SessionId, Subscription,
};
use redis_conn::RedisMode;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::RedisBusConfig;
use crate::connect::Connector;
use crate::local::Locals;
use crate::publisher::{Outgoing, PubConn, Publisher};
use crate::queue::Queue;
use crate::stats::{BusStats, Counters};
use crate::subscriber::{Request, SubConn, Subscriber, Timing};
use crate::wire::{self, Channels};

/// Why [`RedisBus::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The configuration cannot work (a malformed URL, a zero capacity);
    /// retrying will not help.
    #[error("invalid event bus configuration: {0}")]
    InvalidConfig(String),
    /// Redis did not answer; starting again later may succeed.
    #[error("Redis unreachable for the event bus: {0}")]
    Unreachable(String),
}

/// An [`EventBus`] on Redis Pub/Sub, one channel per session.
///
/// An instance subscribes in Redis only to the sessions it has local
/// subscriptions for, on one dedicated connection, and routes each message
/// to the bounded queue of each subscription of its session (no fan-out
/// layer of its own: the caller holds one subscription per session and fans
/// out). `publish` hands the
/// encoded message to a background task and returns; see the crate
/// documentation for the whole design. Cloning is cheap and shares the
/// connections.
#[derive(Clone)]
pub struct RedisBus {
    locals: Arc<Locals>,
    counters: Arc<Counters>,
    channels: Channels,
    requests: mpsc::UnboundedSender<Request>,
    outgoing: mpsc::Sender<Outgoing>,
    publish_queue: usize,
    /// How long `subscribe` waits for Redis to confirm a new subscription.
    subscribe_timeout: Duration,
    /// Whether another client may publish this bus's messages
    /// (`encode_update`): with one server, where messages go by `PUBLISH`;
    /// not on Cluster (`SPUBLISH`, from this bus only).
    shareable: bool,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("healthy", &self.is_healthy())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The bus's background tasks (publisher, subscriber). They stop when the
/// shutdown signal given to [`RedisBus::connect`] flips to `true` (or its
/// sender is dropped); [`RedisBusTasks::join`] then waits for them.
#[derive(Debug)]
pub struct RedisBusTasks {
    publisher: JoinHandle<()>,
    subscriber: JoinHandle<()>,
}

impl RedisBusTasks {
    /// Waits until both tasks have finished: the publisher has flushed what
    /// was queued (bounded by one command timeout) and the subscriber has
    /// closed its connection and ended every local subscription.
    pub async fn join(self) {
        for (name, task) in [
            ("publisher", self.publisher),
            ("subscriber", self.subscriber),
        ] {
            if let Err(e) = task.await {
                tracing::error!(task = name, error = %e, "event bus task failed");
            }
        }
    }

    /// The raw handles, for a caller that joins every task of the process itself.
    pub fn into_handles(self) -> [JoinHandle<()>; 2] {
        [self.publisher, self.subscriber]
    }
}

fn check(config: &RedisBusConfig) -> Result<(), ConnectError> {
    let problem = if config.publish_queue == 0 {
        "publish_queue must be at least 1"
    } else if config.publish_batch == 0 {
        "publish_batch must be at least 1"
    } else if config.local_capacity == 0 {
        "local_capacity must be at least 1"
    } else if config.command_timeout.is_zero() {
        "command_timeout must be positive"
    } else if config.ping_interval.is_zero() {
        "ping_interval must be positive"
    } else if config.reconnect_min.is_zero() || config.reconnect_max < config.reconnect_min {
        "reconnect_min must be positive and at most reconnect_max"
    } else {
        return Ok(());
    };
    Err(ConnectError::InvalidConfig(problem.into()))
}

impl RedisBus {
    /// Connects to Redis (publisher and subscriber connections, both must
    /// answer within `config.command_timeout`) and starts the background
    /// tasks on the current Tokio runtime. They run until `shutdown` holds
    /// `true`; join them through the returned [`RedisBusTasks`].
    ///
    /// After shutdown, every open subscription ends (its stream yields
    /// `None`), `subscribe` fails and `publish` drops (counted).
    pub async fn connect(
        config: RedisBusConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, RedisBusTasks), ConnectError> {
        check(&config)?;
        let connector = Arc::new(
            Connector::new(&config.redis)
                .map_err(|e| ConnectError::InvalidConfig(e.to_string()))?,
        );
        let limit = config.command_timeout;
        let unreachable = |e: String| ConnectError::Unreachable(e);
        let timed_out = || unreachable("timed out".into());
        let (pub_conn, sub_conn) = tokio::try_join!(
            async {
                tokio::time::timeout(limit, PubConn::open(&connector, limit))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| unreachable(e.to_string()))
            },
            async {
                tokio::time::timeout(limit, SubConn::open(&connector, limit))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| unreachable(e.to_string()))
            },
        )?;

        let channels = Channels::new(&config.channel_prefix);
        let locals = Arc::new(Locals::new(config.local_capacity));
        let counters = Arc::new(Counters::default());
        let (outgoing, queue) = mpsc::channel(config.publish_queue);
        let (requests, request_rx) = mpsc::unbounded_channel();

        let publisher = Publisher {
            conn: pub_conn,
            connector: connector.clone(),
            queue,
            counters: counters.clone(),
            batch: config.publish_batch,
            command_timeout: limit,
            failing: false,
        };
        let subscriber = Subscriber {
            connector,
            locals: locals.clone(),
            channels: channels.clone(),
            counters: counters.clone(),
            requests: request_rx,
            timing: Timing {
                command_timeout: limit,
                ping_interval: config.ping_interval,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
            },
            subscribed: Default::default(),
        };
        let tasks = RedisBusTasks {
            publisher: tokio::spawn(publisher.run(shutdown.clone())),
            subscriber: tokio::spawn(subscriber.run(sub_conn, shutdown)),
        };
        let bus = Self {
            locals,
            counters,
            channels,
            requests,
            outgoing,
            publish_queue: config.publish_queue,
            // A new subscription may queue behind one batch of others.
            subscribe_timeout: limit * 2,
            shareable: !matches!(config.redis.mode, RedisMode::Cluster { .. }),
        };
        Ok((bus, tasks))
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> BusStats {
        let c = &self.counters;
        BusStats {
            published: Counters::get(&c.published),
            publish_dropped: Counters::get(&c.publish_dropped),
            publish_failed: Counters::get(&c.publish_failed),
            received: Counters::get(&c.received),
            decode_failed: Counters::get(&c.decode_failed),
            reconnects: Counters::get(&c.reconnects),
            local_dropped: Counters::get(&c.local_dropped),
            watched_sessions: self.locals.len() as u64,
            redis_subscriptions: Counters::get(&c.redis_subscriptions),
            publish_queue_len: self.publish_queue.saturating_sub(self.outgoing.capacity()) as u64,
        }
    }

    /// Counts a message that never reached the publisher task; warns on the
    /// first and every 1,000th after, so an overload does not flood the logs.
    fn dropped(&self, session_id: SessionId, reason: &str) {
        let total = Counters::add(&self.counters.publish_dropped, 1);
        if total == 1 || total.is_multiple_of(1000) {
            tracing::warn!(
                %session_id, reason, total_dropped = total,
                "bus message dropped before Redis; subscribers resync by version"
            );
        }
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, message: BusMessage) {
        let (session_id, payload) = match wire::encode(&message) {
            Ok(encoded) => encoded,
            // `Lagged` is a local signal; there is nothing to send.
            Err(wire::EncodeError::NotPublishable) => return,
            Err(e) => {
                let total = Counters::add(&self.counters.publish_failed, 1);
                tracing::warn!(error = %e, total_failed = total, "bus message not encodable");
                return;
            }
        };
        let outgoing = Outgoing {
            channel: self.channels.name(session_id),
            payload,
        };
        match self.outgoing.try_send(outgoing) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(session_id, "queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped(session_id, "shut down"),
        }
    }

    /// The update as `publish` would send it, on its session's channel, for
    /// a store that publishes it with `PUBLISH` inside its commit; `None` on
    /// Cluster, where this bus sends `SPUBLISH` itself, and for a message
    /// that cannot be encoded.
    fn encode_update(
        &self,
        state: &Session,
        events: &[Event],
        at_ms: i64,
    ) -> Option<EncodedMessage> {
        if !self.shareable {
            return None;
        }
        // A failure is left to `publish`, which the service then calls:
        // it counts and logs it once.
        let payload = wire::encode_update(state, events, at_ms).ok()?;
        Some(EncodedMessage {
            channel: self.channels.name(state.id),
            payload,
        })
    }

    #[tracing::instrument(skip(self), fields(session_id = %session_id))]
    async fn subscribe(&self, session_id: SessionId) -> Result<Subscription, BusError> {
        // Joined before asking Redis, so that nothing published after the
        // confirmation is missed; the stream is built at once, so that a
        // failure below cleans up through the same `Drop` as an ordinary
        // unsubscription.
        let stream = SessionStream {
            queue: self.locals.join(session_id),
            session_id,
            locals: self.locals.clone(),
            requests: self.requests.clone(),
        };
        let (ack, acked) = oneshot::channel();
        let request = Request {
            session: session_id,
            ack: Some(ack),
        };
        let shut_down = || BusError::Unavailable("the event bus is shut down".into());
        self.requests.send(request).map_err(|_| shut_down())?;
        match tokio::time::timeout(self.subscribe_timeout, acked).await {
            Ok(Ok(Ok(()))) => Ok(Box::pin(stream)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(shut_down()),
            Err(_) => Err(BusError::Unavailable(
                "timed out waiting for Redis to confirm the subscription".into(),
            )),
        }
    }

    fn is_healthy(&self) -> bool {
        self.counters.subscriber_up.load(Ordering::Relaxed)
    }
}

/// One subscription: a view of its own queue in the routing table. Dropping
/// the last one of a session asks the subscriber task to unsubscribe it in
/// Redis. Small on purpose (a box of four words and the queue): it lives as
/// long as a session is watched.
struct SessionStream {
    queue: Arc<Queue>,
    session_id: SessionId,
    locals: Arc<Locals>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Stream for SessionStream {
    type Item = BusMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.queue.poll_next(cx)
    }
}

impl Drop for SessionStream {
    fn drop(&mut self) {
        if self.locals.leave(self.session_id, &self.queue) {
            // Unbounded, so that `drop` never waits; an error means the
            // subscriber task is gone, and its subscriptions with it.
            let _ = self.requests.send(Request {
                session: self.session_id,
                ack: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_subscription_costs_a_few_words() {
        // The stream (boxed as the `Subscription`) and its queue, before any
        // message: what a watched session costs this crate while idle.
        let stream = size_of::<SessionStream>();
        let queue = size_of::<Queue>();
        assert!(stream <= 48, "SessionStream is {stream} bytes");
        assert!(queue <= 96, "Queue is {queue} bytes");
    }
}
