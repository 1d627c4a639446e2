//! The subscriber task: the one owner of this instance's Pub/Sub connection.
//!
//! It keeps the Redis subscriptions equal to the set of locally watched
//! sessions (subscribe on the first local subscriber, unsubscribe after the
//! last), hands every received message to the queue of each local
//! subscription of its session (decoded once), pings
//! the idle connection, and after a loss reconnects with backoff,
//! re-subscribes every watched session and tells every local subscriber it
//! may have missed messages (`Lagged`). Owning the connection in one task
//! means no lock around it and one place where its state changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use kairos_domain::{BusError, BusMessage, SessionId};
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{MissedTickBehavior, sleep, timeout};

use crate::connect::{Connector, Target};
use crate::local::Locals;
use crate::shutdown::signalled;
use crate::stats::Counters;
use crate::wire::{self, Channels};

/// Most channels named in one `SUBSCRIBE`, so that re-subscribing thousands
/// of sessions after a reconnection is a few commands, none of them huge.
const CHANNELS_PER_COMMAND: usize = 1024;

/// Most requests handled in one pass; the rest wait for the next.
const REQUESTS_PER_PASS: usize = 1024;

/// A note to the subscriber task that a session's local subscribers changed:
/// the task compares the session's local and Redis state and fixes the latter.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) session: SessionId,
    /// Answered once the session is subscribed in Redis (or cannot be): a new
    /// subscriber waits for it so that nothing published after `subscribe`
    /// returns is missed.
    pub(crate) ack: Option<oneshot::Sender<Result<(), BusError>>>,
}

/// What the task reads from Redis.
enum Incoming {
    Message(Msg),
    /// Redis dropped a sharded subscription by itself (its slot moved to
    /// another shard): the session must be subscribed again, where it now lives.
    Unsubscribed(String),
    /// A confirmation or other push that needs no action.
    Other,
    /// The connection is gone.
    Lost,
}

/// This instance's subscriber connection.
pub(crate) enum SubConn {
    /// Standalone and Sentinel: a dedicated RESP2 Pub/Sub connection, split
    /// so that commands can be sent while messages are read.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// Cluster: sharded Pub/Sub over RESP3, messages arriving as pushes.
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl SubConn {
    /// Connects to wherever the connector says Redis is.
    pub(crate) async fn open(
        connector: &Connector,
        command_timeout: Duration,
    ) -> RedisResult<Self> {
        let (push, pushes) = mpsc::unbounded_channel();
        match connector.target(Some(push), command_timeout).await? {
            Target::Primary(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(Self::Single { sink, stream })
            }
            Target::Cluster(client) => Ok(Self::Cluster {
                conn: client.get_async_connection().await?,
                pushes,
            }),
        }
    }

    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => sink.subscribe(channels).await,
            // One SSUBSCRIBE may only name channels of one slot; sessions
            // hash to different slots, so each goes on its own, concurrently.
            Self::Cluster { conn, .. } => try_join_all(channels.iter().map(|channel| {
                let mut conn = conn.clone();
                async move { conn.ssubscribe(channel).await }
            }))
            .await
            .map(drop),
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => sink.unsubscribe(channels).await,
            Self::Cluster { conn, .. } => try_join_all(channels.iter().map(|channel| {
                let mut conn = conn.clone();
                async move { conn.sunsubscribe(channel).await }
            }))
            .await
            .map(drop),
        }
    }

    async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Self::Single { sink, .. } => sink.ping::<Value>().await.map(drop),
            // Routed to every primary: one dead shard fails it.
            Self::Cluster { conn, .. } => redis::cmd("PING").query_async::<()>(conn).await,
        }
    }

    /// The next thing Redis sent. Cancel-safe: it only awaits a channel.
    async fn next(&mut self) -> Incoming {
        match self {
            Self::Single { stream, .. } => match stream.next().await {
                Some(message) => Incoming::Message(message),
                None => Incoming::Lost,
            },
            Self::Cluster { pushes, .. } => match pushes.recv().await {
                None => Incoming::Lost,
                Some(push) => match push.kind {
                    PushKind::Disconnection => Incoming::Lost,
                    PushKind::Message | PushKind::SMessage => {
                        Msg::from_push_info(push).map_or(Incoming::Other, Incoming::Message)
                    }
                    // The data is [channel, subscription count].
                    PushKind::SUnsubscribe => match push.data.first() {
                        Some(Value::BulkString(channel)) => {
                            Incoming::Unsubscribed(String::from_utf8_lossy(channel).into_owned())
                        }
                        _ => Incoming::Other,
                    },
                    _ => Incoming::Other,
                },
            },
        }
    }
}

/// Timings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) command_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

/// Why [`Subscriber::serve`] returned.
enum Exit {
    Shutdown,
    Lost,
}

/// The subscriber task's state.
pub(crate) struct Subscriber {
    pub(crate) connector: Arc<Connector>,
    pub(crate) locals: Arc<Locals>,
    pub(crate) channels: Channels,
    pub(crate) counters: Arc<Counters>,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) timing: Timing,
    /// The sessions subscribed in Redis on the current connection.
    pub(crate) subscribed: HashSet<SessionId>,
}

impl Subscriber {
    /// Serves `first` (an already open connection, so that the constructor
    /// reports an unreachable Redis), then reconnects whenever it is lost,
    /// until shutdown or until every bus handle and subscription is dropped.
    /// On the way out it closes every local subscription.
    pub(crate) async fn run(mut self, first: SubConn, mut shutdown: watch::Receiver<bool>) {
        let mut conn = first;
        self.set_up(true);
        loop {
            if let Exit::Shutdown = self.serve(&mut conn, &mut shutdown).await {
                break;
            }
            // Closed now, not when its replacement arrives: a half-open
            // socket to a frozen server is worth nothing.
            drop(conn);
            self.set_up(false);
            self.subscribed.clear();
            self.publish_gauge();
            tracing::warn!(
                watched = self.locals.len(),
                "Redis subscriber connection lost; reconnecting (the bus reports unhealthy meanwhile)"
            );
            conn = match self.reconnect(&mut shutdown).await {
                Some(fresh) => fresh,
                None => break,
            };
            Counters::add(&self.counters.reconnects, 1);
            self.set_up(true);
            // Whatever was published while we were away is lost to us: every
            // local subscriber resynchronises from the store.
            let lost = self.locals.send_all(&BusMessage::Lagged);
            self.count_lost(lost);
            tracing::info!(
                resubscribed = self.subscribed.len(),
                "Redis subscriber connection restored; local subscribers told to resync"
            );
        }
        self.set_up(false);
        self.locals.close_all();
        self.subscribed.clear();
        self.publish_gauge();
    }

    fn set_up(&self, up: bool) {
        self.counters.subscriber_up.store(up, Ordering::Relaxed);
    }

    fn publish_gauge(&self) {
        self.counters
            .redis_subscriptions
            .store(self.subscribed.len() as u64, Ordering::Relaxed);
    }

    /// Works on one connection until it is lost or the task must stop.
    async fn serve(&mut self, conn: &mut SubConn, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let mut ping = tokio::time::interval(self.timing.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; the connection was just proven alive.
        ping.reset();
        let mut batch = Vec::with_capacity(REQUESTS_PER_PASS);
        loop {
            tokio::select! {
                biased;
                () = signalled(shutdown) => return Exit::Shutdown,
                received = self.requests.recv_many(&mut batch, REQUESTS_PER_PASS) => {
                    if received == 0 {
                        // Every sender is gone: no bus handle, no subscription left.
                        return Exit::Shutdown;
                    }
                    let sessions = batch.iter().map(|r| r.session).collect();
                    let result = self.reconcile(conn, sessions).await;
                    self.answer(&mut batch, result.as_ref().err());
                    if result.is_err() {
                        return Exit::Lost;
                    }
                }
                incoming = conn.next() => match incoming {
                    Incoming::Message(message) => self.dispatch(&message),
                    Incoming::Unsubscribed(channel) => {
                        if self.resubscribe_moved(conn, &channel).await.is_err() {
                            return Exit::Lost;
                        }
                    }
                    Incoming::Other => {}
                    Incoming::Lost => return Exit::Lost,
                },
                _ = ping.tick() => {
                    match timeout(self.timing.command_timeout, conn.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "subscriber ping failed");
                            return Exit::Lost;
                        }
                        Err(_) => {
                            tracing::debug!("subscriber ping timed out");
                            return Exit::Lost;
                        }
                    }
                }
            }
        }
    }

    /// Hands a received message to its session's local subscriptions.
    fn dispatch(&self, message: &Msg) {
        Counters::add(&self.counters.received, 1);
        let channel = message.get_channel_name();
        let Some(id) = self.channels.session_of(channel) else {
            tracing::warn!(
                channel,
                "message on a channel that is not a session's; ignored"
            );
            return;
        };
        // The last local subscriber may have left a moment ago: nothing to do
        // then, and nothing worth decoding.
        if !self.locals.is_watched(id) {
            return;
        }
        let decoded = match wire::decode(message.get_payload_bytes()) {
            Ok(BusMessage::Updated { state, .. }) if state.id != id => Err(format!(
                "carries session {} on the channel of {id}",
                state.id
            )),
            Ok(decoded) => Ok(decoded),
            Err(e) => Err(e.to_string()),
        };
        let delivered = decoded.unwrap_or_else(|error| {
            let total = Counters::add(&self.counters.decode_failed, 1);
            tracing::warn!(
                session_id = %id, %error, total,
                "undecodable bus message; its subscribers are told to resync"
            );
            BusMessage::Lagged
        });
        let lost = self.locals.send(id, delivered);
        self.count_lost(lost);
    }

    /// Counts messages that full local queues dropped (their subscriptions
    /// get `Lagged`); logged at debug only, since a slow reader resyncs.
    fn count_lost(&self, lost: u64) {
        if lost > 0 {
            let total = Counters::add(&self.counters.local_dropped, lost);
            tracing::debug!(lost, total, "a slow local subscription dropped messages");
        }
    }

    /// Brings Redis in line with the local subscribers of `sessions`.
    async fn reconcile(
        &mut self,
        conn: &mut SubConn,
        sessions: HashSet<SessionId>,
    ) -> RedisResult<()> {
        let mut join = Vec::new();
        let mut leave = Vec::new();
        for id in sessions {
            match (self.locals.is_watched(id), self.subscribed.contains(&id)) {
                (true, false) => join.push(id),
                (false, true) => leave.push(id),
                _ => {}
            }
        }
        for chunk in join.chunks(CHANNELS_PER_COMMAND) {
            let names: Vec<String> = chunk.iter().map(|id| self.channels.name(*id)).collect();
            with_timeout(self.timing.command_timeout, conn.subscribe(&names)).await?;
            self.subscribed.extend(chunk.iter().copied());
        }
        for chunk in leave.chunks(CHANNELS_PER_COMMAND) {
            let names: Vec<String> = chunk.iter().map(|id| self.channels.name(*id)).collect();
            with_timeout(self.timing.command_timeout, conn.unsubscribe(&names)).await?;
            for id in chunk {
                self.subscribed.remove(id);
            }
        }
        self.publish_gauge();
        Ok(())
    }

    /// Answers the requests of a pass: a new subscriber is told whether its
    /// session is now subscribed in Redis.
    fn answer(&self, batch: &mut Vec<Request>, error: Option<&redis::RedisError>) {
        for request in batch.drain(..) {
            let Some(ack) = request.ack else { continue };
            let outcome = match error {
                None if self.subscribed.contains(&request.session) => Ok(()),
                None => Err(BusError::Unavailable(
                    "the session was left before it was subscribed".into(),
                )),
                Some(e) => Err(BusError::Unavailable(e.to_string())),
            };
            // The subscriber may have given up waiting; nothing to do then.
            let _ = ack.send(outcome);
        }
    }

    /// Subscribes again to a sharded channel Redis dropped because its slot
    /// moved, and tells its local subscribers they may have missed messages.
    async fn resubscribe_moved(&mut self, conn: &mut SubConn, channel: &str) -> RedisResult<()> {
        let Some(id) = self.channels.session_of(channel) else {
            return Ok(());
        };
        // Our own unsubscriptions are confirmed the same way; those sessions
        // are no longer in `subscribed` by the time the confirmation is read.
        if !self.subscribed.remove(&id) {
            return Ok(());
        }
        tracing::info!(session_id = %id, "sharded subscription moved; subscribing again");
        self.reconcile(conn, HashSet::from([id])).await?;
        let lost = self.locals.send(id, BusMessage::Lagged);
        self.count_lost(lost);
        Ok(())
    }

    /// Reconnects with exponential backoff and subscribes every watched
    /// session again. New subscribers are refused meanwhile (their
    /// `subscribe` fails fast instead of hanging). Returns `None` on shutdown.
    async fn reconnect(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<SubConn> {
        let mut delay = self.timing.reconnect_min;
        loop {
            let watched = self.locals.watched();
            let outcome = {
                let attempt = open_subscribed(
                    &self.connector,
                    &self.channels,
                    &watched,
                    self.timing.command_timeout,
                    delay,
                );
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        biased;
                        () = signalled(shutdown) => return None,
                        request = self.requests.recv() => match request {
                            None => return None,
                            Some(request) => refuse(request),
                        },
                        outcome = &mut attempt => break outcome,
                    }
                }
            };
            delay = (delay * 2).min(self.timing.reconnect_max);
            let mut conn = match outcome {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "reconnecting the subscriber failed; retrying");
                    continue;
                }
            };
            self.subscribed = watched.into_iter().collect();
            // Subscribers came and went while we were connecting: catch up.
            let mut changed: HashSet<SessionId> = self.locals.watched().into_iter().collect();
            changed.extend(self.subscribed.iter().copied());
            match self.reconcile(&mut conn, changed).await {
                Ok(()) => return Some(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "re-subscribing failed; retrying");
                    self.subscribed.clear();
                }
            }
        }
    }
}

/// Refuses a new subscriber while the connection is down.
fn refuse(request: Request) {
    if let Some(ack) = request.ack {
        let _ = ack.send(Err(BusError::Unavailable(
            "the Redis subscriber connection is down".into(),
        )));
    }
}

/// Waits `delay`, connects, and subscribes to the channels of `sessions`.
async fn open_subscribed(
    connector: &Connector,
    channels: &Channels,
    sessions: &[SessionId],
    command_timeout: Duration,
    delay: Duration,
) -> RedisResult<SubConn> {
    sleep(delay).await;
    let mut conn = with_timeout(command_timeout, SubConn::open(connector, command_timeout)).await?;
    for chunk in sessions.chunks(CHANNELS_PER_COMMAND) {
        let names: Vec<String> = chunk.iter().map(|id| channels.name(*id)).collect();
        with_timeout(command_timeout, conn.subscribe(&names)).await?;
    }
    Ok(conn)
}

/// Runs a Redis call with a deadline, turning the timeout into a Redis I/O error.
async fn with_timeout<T>(
    limit: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis call timed out",
        ))),
    }
}
