//! The fan-out between the event bus and this instance's WebSockets: one bus
//! subscription per session that has at least one socket here, each message
//! turned into wire text once, and the text shared by every local socket.
//!
//! Why it exists: a bus subscription per socket would cost a Redis channel
//! subscription (or a broadcast receiver and a serialization) per viewer, and
//! 50,000 idle sockets must stay within a few KiB each. Here a socket holds
//! only a broadcast receiver; the work per committed version is one view, one
//! serialization and one broadcast, whatever the number of viewers.
//!
//! Ordering: the bus delivers a session's versions in order and the pump
//! forwards them in that order; each connection still skips versions it has
//! already sent (see the WebSocket guards' `VersionGate`), so duplicates and the overlap with
//! the initial snapshot are harmless.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use kairos_domain::view::view;
use kairos_domain::{
    Actor, BusError, BusMessage, DynSessionService as Service, Event, EventBus, ServiceError,
    Session, SessionId, Snapshot, Subscription,
};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::wire;

/// Frames a session's channel buffers for its slowest local socket. A socket
/// that falls further behind is resynchronised from the store instead, so
/// this bounds memory per watched session, not correctness.
const FRAME_BUFFER: usize = 128;
/// First wait before resubscribing after the bus ended a subscription.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
/// Longest wait between resubscription attempts.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// What the hub hands to every local socket of a session. Cloning is cheap:
/// the texts are shared, never copied per socket by the hub.
#[derive(Debug, Clone)]
pub enum Frame {
    /// One committed version: its `STATE_UPDATE`, then one `EVENT` per
    /// notable event (timeouts, time warnings, added time) of that version, sent together or not at all.
    Update {
        /// The version the texts describe.
        version: u64,
        /// Ready JSON texts, in sending order.
        texts: Arc<[Box<str>]>,
    },
    /// A fresh `STATE_SYNC` loaded after the bus reported lost messages.
    Sync {
        /// The version of the snapshot.
        version: u64,
        /// Ready JSON text.
        text: Arc<str>,
    },
    /// An `EVENT` that is not a state change (`presence_joined`,
    /// `presence_left`): no version, so it passes no version gate. Sockets
    /// of the user it is about skip it (a user is not told of its own
    /// arrival).
    Event {
        /// The user the event is about (`metadata.sub`).
        sub: Arc<str>,
        /// Ready JSON text.
        text: Arc<str>,
    },
    /// `SESSION_DELETED`; sockets send it and close with 1000.
    Deleted {
        /// Ready JSON text.
        text: Arc<str>,
    },
    /// The session is no longer in the store (deleted or expired by its TTL
    /// while messages were lost); sockets close with 4404.
    Gone,
    /// Messages were lost and the hub could not load a snapshot itself;
    /// each socket reloads through the service. Also what a socket's own
    /// broadcast lag turns into.
    Resync,
}

/// A session watched by at least one local socket.
struct Topic {
    tx: broadcast::Sender<Frame>,
    members: usize,
    pump: AbortHandle,
}

/// Std mutex, not a Tokio one: held only to look up, insert or remove an
/// entry, never across an await.
type Topics = Arc<Mutex<HashMap<SessionId, Topic>>>;

/// Locks the map. A panic cannot happen while it is held (only map
/// operations run under it), so a poisoned lock still guards a consistent
/// map and is used as is rather than spreading the panic to every socket.
fn lock(topics: &Topics) -> MutexGuard<'_, HashMap<SessionId, Topic>> {
    topics.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The per-instance fan-out (one per `AppState`).
pub struct Hub {
    service: Service,
    bus: Arc<dyn EventBus>,
    topics: Topics,
    /// Where pumps are spawned, so that shutdown waits for them.
    tasks: TaskTracker,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("watched_sessions", &self.watched_sessions())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `bus` (the server passes the one the service publishes
    /// on), using the service for timestamps and for one snapshot per
    /// session when the bus reports lost messages. Pumps are spawned on
    /// `tasks`.
    pub fn new(service: Service, bus: Arc<dyn EventBus>, tasks: TaskTracker) -> Self {
        Self {
            service,
            bus,
            topics: Arc::default(),
            tasks,
        }
    }

    /// How many sessions have a bus subscription on this instance.
    pub fn watched_sessions(&self) -> usize {
        lock(&self.topics).len()
    }

    /// Joins a session's fan-out, subscribing to the bus if this is the
    /// session's first local socket. When this returns, every version
    /// published from now on reaches the member, so a snapshot loaded
    /// afterwards leaves no gap.
    pub async fn join(&self, session_id: SessionId) -> Result<Member, BusError> {
        if let Some(member) = self.join_existing(session_id) {
            return Ok(member);
        }
        // Subscribe outside the lock: it is a network round trip with Redis.
        let subscription = self.bus.subscribe(session_id).await?;
        let mut topics = lock(&self.topics);
        let rx = match topics.entry(session_id) {
            // Another socket won the race meanwhile: share its subscription
            // and let ours drop (after the lock is released, below).
            Entry::Occupied(mut e) => {
                let topic = e.get_mut();
                topic.members += 1;
                topic.tx.subscribe()
            }
            Entry::Vacant(e) => {
                let (tx, rx) = broadcast::channel(FRAME_BUFFER);
                let pump = self
                    .tasks
                    .spawn(pump(
                        self.service.clone(),
                        self.bus.clone(),
                        session_id,
                        subscription,
                        tx.clone(),
                    ))
                    .abort_handle();
                e.insert(Topic {
                    tx,
                    members: 1,
                    pump,
                });
                rx
            }
        };
        drop(topics);
        Ok(Member {
            rx,
            session_id,
            topics: self.topics.clone(),
        })
    }

    fn join_existing(&self, session_id: SessionId) -> Option<Member> {
        let mut topics = lock(&self.topics);
        let topic = topics.get_mut(&session_id)?;
        topic.members += 1;
        Some(Member {
            rx: topic.tx.subscribe(),
            session_id,
            topics: self.topics.clone(),
        })
    }
}

/// One socket's place in a session's fan-out. Dropping it leaves; the last
/// member leaving drops the bus subscription.
pub struct Member {
    rx: broadcast::Receiver<Frame>,
    session_id: SessionId,
    topics: Topics,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// The next frame; `None` only if the session's channel closed, which
    /// does not happen while a member exists. Falling behind the channel
    /// yields [`Frame::Resync`]: the skipped frames are gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        match self.rx.recv().await {
            Ok(frame) => Some(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Frame::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut topics = lock(&self.topics);
        if let Entry::Occupied(mut e) = topics.entry(self.session_id) {
            let topic = e.get_mut();
            topic.members = topic.members.saturating_sub(1);
            if topic.members == 0 {
                // Aborting drops the task's subscription: the bus stops
                // sending this instance the session's traffic.
                e.remove().pump.abort();
            }
        }
    }
}

/// Forwards one session's bus messages to its local sockets until the last
/// socket leaves (which aborts this task).
async fn pump(
    service: Service,
    bus: Arc<dyn EventBus>,
    session_id: SessionId,
    mut subscription: Subscription,
    tx: broadcast::Sender<Frame>,
) {
    loop {
        let message = subscription.next().await;
        // What the bus says about a session keeps the service's copy of it
        // fresh, so a command over this instance decides on the latest
        // version without a load.
        if let Some(message) = &message {
            service.observe(message);
        }
        let frame = match message {
            Some(BusMessage::Updated {
                state,
                events,
                at_ms,
            }) if state.id == session_id => update_frame(&service, &state, &events, at_ms),
            Some(BusMessage::Deleted { session_id: id, .. }) if id == session_id => {
                let now = service.now_ms();
                Frame::Deleted {
                    text: wire::deleted_message(session_id, now).into(),
                }
            }
            Some(BusMessage::Event { event }) if event.session_id == session_id => {
                let now = service.now_ms();
                let sub = event
                    .metadata
                    .get("sub")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .into();
                Frame::Event {
                    sub,
                    text: wire::event_message(session_id, now, &event).into(),
                }
            }
            // A subscription only carries its own session; anything else is
            // a bus bug, not worth a socket's attention.
            Some(
                BusMessage::Updated { .. } | BusMessage::Deleted { .. } | BusMessage::Event { .. },
            ) => continue,
            Some(BusMessage::Lagged) => resync_frame(&service, session_id).await,
            None => {
                // The bus ended the subscription (e.g. its connection
                // dropped). Messages published meanwhile are lost, so
                // resubscribe, then resynchronise every socket.
                tracing::warn!(%session_id, "bus subscription ended; resubscribing");
                subscription = resubscribe(bus.as_ref(), session_id).await;
                resync_frame(&service, session_id).await
            }
        };
        // An error only means no socket listens at this instant; the last
        // one to leave aborts this task.
        let _ = tx.send(frame);
    }
}

/// Subscribes again, backing off while the bus is unavailable.
async fn resubscribe(bus: &dyn EventBus, session_id: SessionId) -> Subscription {
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        tokio::time::sleep(backoff).await;
        match bus.subscribe(session_id).await {
            Ok(subscription) => return subscription,
            Err(e) => {
                tracing::warn!(%session_id, error = %e, "bus resubscription failed");
                backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
            }
        }
    }
}

/// The texts of one committed version, serialized once for every socket.
/// The view is computed at the instant the version took effect, so every
/// instance sends the same numbers.
fn update_frame(service: &Service, state: &Session, events: &[Event], at_ms: i64) -> Frame {
    let now = service.now_ms();
    let v = view(state, at_ms);
    let version = v.version;
    let mut texts: Vec<Box<str>> = Vec::with_capacity(1 + events.len());
    texts.push(wire::state_message(wire::STATE_UPDATE, state.id, now, v).into_boxed_str());
    texts.extend(
        events
            .iter()
            .filter(|e| e.event_type.is_notable())
            .map(|e| wire::event_message(state.id, now, e).into_boxed_str()),
    );
    Frame::Update {
        version,
        texts: texts.into(),
    }
}

/// After lost messages: one store read for all local sockets rather than one
/// per socket, as a reader scoped to this session (every socket here was
/// allowed to read it when it connected, and the read right does not depend
/// on the session's state).
async fn resync_frame(service: &Service, session_id: SessionId) -> Frame {
    match service
        .snapshot(&Actor::session_reader(session_id), session_id)
        .await
    {
        Ok(Snapshot { state, now_ms }) => {
            let v = view(&state, now_ms);
            let version = v.version;
            Frame::Sync {
                version,
                text: wire::state_message(wire::STATE_SYNC, session_id, now_ms, v).into(),
            }
        }
        Err(ServiceError::NotFound(_)) => Frame::Gone,
        Err(e) => {
            tracing::warn!(%session_id, error = %e, "resync load failed; sockets retry on their own");
            Frame::Resync
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use adapter_memory::MemoryStore;
    use kairos_domain::{Actor, Clock, Command, EventBus, SessionConfig};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    /// A bus whose subscriptions the test can inspect, end, and feed
    /// `Lagged` into (which a real bus produces only under overload).
    #[derive(Default)]
    struct TestBus {
        subs: std::sync::Mutex<Vec<(SessionId, mpsc::UnboundedSender<BusMessage>)>>,
    }

    impl TestBus {
        fn send(&self, id: SessionId, message: BusMessage) {
            let mut subs = self.subs.lock().unwrap();
            subs.retain(|(_, tx)| !tx.is_closed());
            for (_, tx) in subs.iter().filter(|(s, _)| *s == id) {
                let _ = tx.send(message.clone());
            }
        }

        fn live(&self, id: SessionId) -> usize {
            let mut subs = self.subs.lock().unwrap();
            subs.retain(|(_, tx)| !tx.is_closed());
            subs.iter().filter(|(s, _)| *s == id).count()
        }

        /// Ends every subscription, as a bus whose connection dropped would.
        fn end_all(&self) {
            self.subs.lock().unwrap().clear();
        }
    }

    // The trait is `#[async_trait]`; this crate does not depend on the
    // macro, so the test spells out what it expands to.
    impl EventBus for TestBus {
        fn publish<'a, 'b>(
            &'a self,
            message: BusMessage,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move {
                let Some(id) = message.session_id() else {
                    return;
                };
                self.send(id, message);
            })
        }

        fn subscribe<'a, 'b>(
            &'a self,
            session_id: SessionId,
        ) -> Pin<Box<dyn Future<Output = Result<Subscription, BusError>> + Send + 'b>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move {
                let (tx, rx) = mpsc::unbounded_channel();
                self.subs.lock().unwrap().push((session_id, tx));
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                });
                Ok(Box::pin(stream) as Subscription)
            })
        }

        fn is_healthy(&self) -> bool {
            true
        }
    }

    /// A clock the test moves by hand, so deadlines pass without sleeping.
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    struct Fixture {
        hub: Hub,
        bus: Arc<TestBus>,
        clock: Arc<ManualClock>,
        service: Service,
    }

    fn fixture() -> Fixture {
        let bus = Arc::new(TestBus::default());
        let clock = Arc::new(ManualClock(AtomicI64::new(1_760_970_600_000)));
        let service: Service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(3600))),
            bus.clone(),
            clock.clone(),
        );
        Fixture {
            hub: Hub::new(service.clone(), bus.clone(), TaskTracker::new()),
            bus,
            clock,
            service,
        }
    }

    async fn session(service: &Service, bank_ms: i64) -> SessionId {
        let config = SessionConfig::parse(&json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "white", "total_time_ms": bank_ms},
                {"participant_id": "black", "total_time_ms": bank_ms}
            ]
        }))
        .unwrap();
        let id = SessionId::from_uuid(uuid::Uuid::new_v4());
        service
            .create(&Actor::anonymous_admin(), config, id)
            .await
            .unwrap()
            .session_id
    }

    fn texts(frame: &Frame) -> Vec<Value> {
        match frame {
            Frame::Update { texts, .. } => texts
                .iter()
                .map(|t| serde_json::from_str(t).unwrap())
                .collect(),
            Frame::Sync { text, .. } | Frame::Deleted { text } | Frame::Event { text, .. } => {
                vec![serde_json::from_str(text).unwrap()]
            }
            Frame::Gone | Frame::Resync => Vec::new(),
        }
    }

    async fn recv(m: &mut Member) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), m.recv())
            .await
            .expect("a frame within 5 s")
            .expect("an open channel")
    }

    /// Lets aborted pumps be dropped.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn one_bus_subscription_per_session_dropped_with_the_last_member() {
        let f = fixture();
        let id = session(&f.service, 60_000).await;

        let a = f.hub.join(id).await.unwrap();
        let b = f.hub.join(id).await.unwrap();
        assert_eq!(f.hub.watched_sessions(), 1);
        assert_eq!(f.bus.live(id), 1);

        drop(a);
        settle().await;
        assert_eq!((f.hub.watched_sessions(), f.bus.live(id)), (1, 1));
        drop(b);
        assert_eq!(f.hub.watched_sessions(), 0);
        settle().await;
        assert_eq!(
            f.bus.live(id),
            0,
            "the aborted pump dropped its subscription"
        );

        let _c = f.hub.join(id).await.unwrap();
        assert_eq!(f.bus.live(id), 1, "joining again subscribes again");
    }

    #[tokio::test]
    async fn concurrent_first_joins_share_one_subscription() {
        let f = fixture();
        let id = session(&f.service, 60_000).await;
        let (a, b) = tokio::join!(f.hub.join(id), f.hub.join(id));
        let (_a, _b) = (a.unwrap(), b.unwrap());
        settle().await;
        assert_eq!((f.hub.watched_sessions(), f.bus.live(id)), (1, 1));
    }

    #[tokio::test]
    async fn every_member_gets_each_version_serialized_once_in_order() {
        let f = fixture();
        let id = session(&f.service, 60_000).await;
        let admin = Actor::anonymous_admin();
        let mut a = f.hub.join(id).await.unwrap();
        let mut b = f.hub.join(id).await.unwrap();

        f.service
            .execute(&admin, id, Command::Start, None)
            .await
            .unwrap();
        f.clock.0.fetch_add(1_500, Ordering::SeqCst);
        f.service
            .execute(
                &admin,
                id,
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await
            .unwrap();

        for version in [2, 3] {
            let fa = recv(&mut a).await;
            let fb = recv(&mut b).await;
            match (&fa, &fb) {
                (
                    Frame::Update {
                        texts: ta,
                        version: va,
                    },
                    Frame::Update { texts: tb, .. },
                ) => {
                    assert!(Arc::ptr_eq(ta, tb), "one serialization shared by both");
                    assert_eq!(*va, version);
                }
                other => panic!("expected two updates, got {other:?}"),
            }
            let msgs = texts(&fa);
            assert_eq!(msgs.len(), 1, "no EVENT for start and switch");
            assert_eq!(msgs[0]["type"], "STATE_UPDATE");
            assert_eq!(msgs[0]["sessionId"], id.to_string());
            assert_eq!(msgs[0]["timestamp"], f.clock.now_ms());
            assert_eq!(msgs[0]["state"]["version"], version);
            if version == 3 {
                assert_eq!(msgs[0]["state"]["participants"][0]["time_used_ms"], 1_500);
            }
        }
    }

    #[tokio::test]
    async fn timeout_events_follow_their_state_update() {
        let f = fixture();
        let admin = Actor::anonymous_admin();
        let id = session(&f.service, 1_000).await;
        let mut m = f.hub.join(id).await.unwrap();
        f.service
            .execute(&admin, id, Command::Start, None)
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut m).await,
            Frame::Update { version: 2, .. }
        ));

        // White's second runs out; the timeout worker's call applies it.
        f.clock.0.fetch_add(1_001, Ordering::SeqCst);
        assert!(!f.service.fire_due(id).await.unwrap().is_empty());

        let frame = recv(&mut m).await;
        let msgs = texts(&frame);
        assert_eq!(msgs[0]["type"], "STATE_UPDATE");
        assert_eq!(msgs[0]["state"]["status"], "expired");
        // Applied as of the deadline, not as of the worker's call.
        let deadline = 1_760_970_600_000_i64 + 1_000;
        assert_eq!(msgs[0]["state"]["session_completed_at_ms"], deadline);
        assert_eq!(msgs[0]["state"]["participants"][0]["time_used_ms"], 1_000);
        assert!(msgs.len() >= 2, "EVENT messages after the update: {msgs:?}");
        for event in &msgs[1..] {
            assert_eq!(event["type"], "EVENT");
            assert_eq!(event["sessionId"], id.to_string());
            let kind = event["event"]["event_type"].as_str().unwrap();
            assert!(
                ["participant_expired", "session_expired"].contains(&kind),
                "{kind}"
            );
        }
    }

    #[tokio::test]
    async fn lost_messages_deletion_and_ended_subscriptions_reach_members() {
        let f = fixture();
        let id = session(&f.service, 60_000).await;
        let admin = Actor::anonymous_admin();
        let mut m = f.hub.join(id).await.unwrap();

        // The bus reports lost messages: the hub loads one snapshot for all.
        f.bus.send(id, BusMessage::Lagged);
        let frame = recv(&mut m).await;
        assert!(matches!(frame, Frame::Sync { version: 1, .. }), "{frame:?}");
        assert_eq!(texts(&frame)[0]["type"], "STATE_SYNC");

        // The bus drops the subscription: the hub resubscribes and resyncs.
        f.bus.end_all();
        let frame = recv(&mut m).await;
        assert!(matches!(frame, Frame::Sync { version: 1, .. }), "{frame:?}");
        assert_eq!(f.bus.live(id), 1);

        f.service.delete(&admin, id).await.unwrap();
        // The cancel (version 2), then the deletion.
        assert!(matches!(
            recv(&mut m).await,
            Frame::Update { version: 2, .. }
        ));
        let frame = recv(&mut m).await;
        let msg = &texts(&frame)[0];
        assert!(matches!(frame, Frame::Deleted { .. }));
        assert_eq!(msg["type"], "SESSION_DELETED");
        assert_eq!(msg["sessionId"], id.to_string());

        // Lost messages after the deletion: the session is gone.
        f.bus.send(id, BusMessage::Lagged);
        assert!(matches!(recv(&mut m).await, Frame::Gone));
    }

    #[tokio::test]
    async fn presence_events_reach_members_as_events_without_a_version() {
        let f = fixture();
        let service = f
            .service
            .clone()
            .with_presence(Arc::new(adapter_memory::MemoryPresence::new()), 5_000);
        let id = session(&service, 60_000).await;
        let mut m = f.hub.join(id).await.unwrap();
        assert!(service.presence_join(id, "c1", "bob", None).await.unwrap());
        let frame = recv(&mut m).await;
        assert!(matches!(frame, Frame::Event { .. }), "{frame:?}");
        let msg = &texts(&frame)[0];
        assert_eq!(msg["type"], "EVENT");
        assert_eq!(msg["event"]["event_type"], "presence_joined");
        assert_eq!(msg["event"]["version"], 0);
        assert_eq!(msg["event"]["metadata"]["sub"], "bob");
        // A second connection of the same user is not announced.
        assert!(!service.presence_join(id, "c2", "bob", None).await.unwrap());
        f.bus.send(id, BusMessage::Lagged);
        assert!(matches!(recv(&mut m).await, Frame::Sync { .. }));
    }

    #[tokio::test]
    async fn a_member_that_falls_behind_is_told_to_resync() {
        let f = fixture();
        let id = session(&f.service, 60_000).await;
        let admin = Actor::anonymous_admin();
        let mut m = f.hub.join(id).await.unwrap();
        f.service
            .execute(&admin, id, Command::Start, None)
            .await
            .unwrap();
        for _ in 0..FRAME_BUFFER {
            f.service
                .execute(&admin, id, Command::Pause, None)
                .await
                .unwrap();
            f.service
                .execute(&admin, id, Command::Resume, None)
                .await
                .unwrap();
        }
        // Let the pump forward everything before the member reads.
        for _ in 0..1_000 {
            if m.rx.len() > FRAME_BUFFER {
                break;
            }
            settle().await;
        }
        assert!(matches!(recv(&mut m).await, Frame::Resync));
    }
}
