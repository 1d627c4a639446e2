//! Ports: what the core needs from the outside world, as traits.
//!
//! Each trait's documentation states what an implementation MUST do; the
//! in-memory adapters and the Redis/PostgreSQL adapters are held to the same
//! text, and the shared service-level test suite checks it.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_core::Stream;
use uuid::Uuid;

use crate::event::Event;
use crate::ids::SessionId;
use crate::presence::{Absence, PendingLeave, PresenceConnection, PresenceSnapshot};
use crate::ratelimit::{Limit, RateDecision};
use crate::session::Session;
use crate::webhook::{Delivery, DeliveryRecord, Endpoint, WebhookId};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The compare-and-set lost: the stored version is not the expected one
    /// (`Some`: the state stored now, read in the same atomic step, so the
    /// caller can decide again without a `load`) or the session is gone
    /// (`None`). Nothing was written.
    #[error("version conflict: the session changed or was removed")]
    VersionConflict(Option<Box<Session>>),
    /// The commit's [`RateCheck`] refused it: nothing was written (the
    /// limit's count included). Carries the decision for the `RateLimit-*`
    /// and `Retry-After` answers.
    #[error("over the rate limit")]
    RateLimited(RateDecision),
    /// `create` found the id taken. Nothing was written.
    #[error("session already exists")]
    AlreadyExists,
    /// The backend is unreachable or timed out; the caller may retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corrupt data, a bug); not worth retrying.
    #[error("store failure: {0}")]
    Other(String),
    /// [`SessionStore::list`] got a cursor it never gave out. Nothing was read.
    #[error("not a cursor of this store")]
    InvalidCursor,
}

/// One page of [`SessionStore::list`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionPage {
    /// The sessions of this page, as stored (deadlines not applied).
    pub sessions: Vec<Session>,
    /// Where the next page starts; `None` when the walk is complete.
    pub next_cursor: Option<String>,
}

/// One atomic state change, written all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The new state; its `version` is greater than `expected_version`.
    pub state: Session,
    /// The version the stored state must have for the commit to apply.
    pub expected_version: u64,
    /// The state's next deadline ([`crate::clock::next_deadline`]), or `None` to drop it.
    pub deadline: Option<i64>,
    /// The events of the change, in version order, for the durable outbox.
    pub events: Vec<Event>,
    /// A rate limit the change counts against, checked in the same atomic
    /// step (the per-session switch limit), or `None`.
    pub rate: Option<RateCheck>,
    /// The bus messages of the change, one per committed version in version
    /// order, for a store that publishes inside its commit
    /// ([`SessionStore::publishes_commits`]); empty otherwise, and then the
    /// caller publishes on the [`EventBus`] after the commit.
    pub publish: Vec<EncodedMessage>,
}

/// A bus message encoded by the [`EventBus`] that carries it
/// ([`EventBus::encode_update`]), for a store that publishes it in the same
/// atomic step as the commit it reports: where it goes and the bytes every
/// instance's bus decodes. Opaque to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    /// The channel (the bus's name for the session's messages).
    pub channel: String,
    /// The message, in the bus's wire format.
    pub payload: Vec<u8>,
}

/// One count against a session's own rate limit, made by the commit that
/// applies the change it limits: the store keeps the limit's state (one
/// GCRA TAT per session) next to the session's, so the check costs no
/// round trip of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    /// The limit.
    pub limit: Limit,
    /// The instant of the check.
    pub now_ms: i64,
}

/// A session [`SessionStore::claim_due`] handed to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The session whose deadline is due.
    pub id: SessionId,
    /// Its state as read in the same step as the claim, when the store can
    /// return it at no extra cost (saving the caller a `load`); `None` when
    /// the caller must load it. Only a starting point: the commit's
    /// compare-and-set still decides.
    pub state: Option<Session>,
}

impl Claimed {
    /// A claim without the state: the caller loads it.
    pub fn id_only(id: SessionId) -> Self {
        Self { id, state: None }
    }
}

/// The primary store of session state, with its deadline index and event outbox.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Returns the stored state, or `None` if there is no such session
    /// (never created, deleted, or expired by its TTL).
    async fn load(&self, id: SessionId) -> Result<Option<Session>, StoreError>;

    /// Stores a new session with its deadline (a pending session has one only
    /// with `start_at_ms`: [`crate::clock::next_deadline`]) and events.
    /// MUST fail with [`StoreError::AlreadyExists`] and write nothing if the id is taken,
    /// atomically with respect to concurrent `create` calls on any instance.
    async fn create(&self, state: &Session, events: &[Event]) -> Result<(), StoreError>;

    /// Applies `commit` atomically: if and only if the stored version equals
    /// `commit.expected_version` (and its rate check, if any, allows it),
    /// writes the state (renewing its TTL), sets or removes its entry in the
    /// deadline index, appends the events to the outbox, and counts the rate
    /// check. No other outcome may be observable by any instance.
    ///
    /// - The session is gone: MUST write nothing and return
    ///   [`StoreError::VersionConflict`]`(None)`.
    /// - Another version is stored: MUST write nothing and return
    ///   [`StoreError::VersionConflict`] with the stored state, read in the
    ///   same atomic step (so a stale caller costs one retry, never a load).
    ///   The rate check is not counted.
    /// - The version matches and `commit.rate` refuses: MUST write nothing
    ///   and return [`StoreError::RateLimited`]. The check MUST behave as
    ///   [`crate::ratelimit::gcra`] on the TAT the store keeps for the
    ///   session (shared by every instance sharing the store).
    ///
    /// - With `commit.publish` non-empty, the store publishes each message
    ///   on its channel, in order, in the same atomic step: every instance's
    ///   bus receives them if and only if the commit applied. A store whose
    ///   [`Self::publishes_commits`] is false MUST refuse such a commit with
    ///   [`StoreError::Other`] and write nothing.
    ///
    /// Returns the rate decision when `commit.rate` was given.
    async fn commit(&self, commit: &Commit) -> Result<Option<RateDecision>, StoreError>;

    /// Whether [`Self::commit`] publishes [`Commit::publish`] itself (a store
    /// that is also the bus's transport, such as Redis). The service reads
    /// it once, when it is built. `false` by default: the service publishes
    /// after each commit.
    fn publishes_commits(&self) -> bool {
        false
    }

    /// Removes the session and its deadline entry. Returns whether it existed.
    async fn delete(&self, id: SessionId) -> Result<bool, StoreError>;

    /// Returns up to `limit` sessions whose deadline is at or before `now_ms`,
    /// and hides each from other callers for `lease_ms` so that instances do
    /// not duplicate work. A claimed session whose deadline is still in the
    /// index after the lease (its claimer died) MUST be returned again.
    /// Claiming is an optimisation: exactly-once comes from `commit`'s compare-and-set.
    /// Sessions that no longer exist are dropped from the index, not returned.
    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Cheap liveness probe for `/health` and `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// One page of a walk over every stored session (the admin view), about
    /// `limit` sessions, resuming at `cursor` (an opaque string from the
    /// previous page's [`SessionPage::next_cursor`]; `None` starts a walk).
    /// A cursor this store never gave out MUST fail with
    /// [`StoreError::InvalidCursor`].
    ///
    /// The guarantees are those of Redis `SCAN`: a complete walk returns
    /// every session stored from its start to its end at least once; a
    /// session created or removed meanwhile may or may not appear, and one
    /// may appear twice. As with `SCAN`, a page may hold fewer than `limit`
    /// sessions, even none, while the walk goes on (the caller follows
    /// `next_cursor` until it is `None`), and at most `limit` plus what one
    /// backend batch adds (the implementation documents it). Not for
    /// request paths: a whole walk costs time in the number of keys stored.
    async fn list(&self, cursor: Option<String>, limit: usize) -> Result<SessionPage, StoreError>;
}

/// An entry of the durable outbox: one event and the id to acknowledge it by.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Backend-specific position (a Redis stream id, a sequence number).
    pub id: String,
    /// The event.
    pub event: Event,
}

/// The durable outbox the audit worker drains.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Returns up to `max` entries not yet acknowledged and not leased to
    /// another consumer, leasing them to `consumer`. Entries leased to a
    /// consumer that did not acknowledge them within `reclaim_after_ms` MUST
    /// be returned again (to any consumer), by a later read if not by this
    /// one (an adapter may look for them on some reads only, e.g. Redis's
    /// full sweeps).
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Acknowledges entries: they MUST never be returned again.
    async fn ack(&self, ids: &[String]) -> Result<(), StoreError>;

    /// How many entries wait, and the age in ms of the oldest (0 when empty).
    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError>;
}

/// What travels between instances about a session.
#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    /// A committed version of the session (one message per version, in order).
    Updated {
        /// The state at that version.
        state: Arc<Session>,
        /// The events of that version.
        events: Vec<Event>,
        /// The instant the version took effect; views are computed at it.
        at_ms: i64,
    },
    /// The session was deleted.
    Deleted {
        /// Which.
        session_id: SessionId,
        /// When.
        at_ms: i64,
    },
    /// An event that is not a state change (`presence_joined`,
    /// `presence_left`): no version, nothing to resynchronise; subscribers
    /// forward it as an `EVENT` message.
    Event {
        /// The event; its `session_id` routes it.
        event: Event,
    },
    /// The subscriber fell behind and messages were dropped: resynchronise from the store.
    Lagged,
}

impl BusMessage {
    /// The session a message belongs to (`None` for `Lagged`).
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            Self::Updated { state, .. } => Some(state.id),
            Self::Deleted { session_id, .. } => Some(*session_id),
            Self::Event { event } => Some(event.session_id),
            Self::Lagged => None,
        }
    }
}

/// A subscription: the messages of one session, in publication order, read
/// from a queue of its own (see [`EventBus`] for what a bus guarantees about
/// it). Dropping it unsubscribes. The stream ends (`None`) only when the bus
/// can no longer deliver on it (it shut down); the holder may subscribe again
/// and resynchronise from the store.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

/// Why a bus call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus is unreachable.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// The bus between instances: every instance's subscribers see every commit.
///
/// A bus routes; it does not fan out. Per-session fan-out belongs to the
/// caller: a caller SHOULD hold one subscription per session per instance
/// and share each message among its own readers (the WebSocket hub turns it
/// into wire text once for all of a session's sockets). An implementation
/// MUST still serve several subscriptions to one session, each receiving
/// every message (a caller may briefly hold two while joining).
///
/// Delivery to each subscription:
/// - MUST carry only its session's messages, in publication order.
/// - MUST go through that subscription's own bounded queue, with no
///   per-session buffer shared by subscriptions: a subscription that falls
///   behind MUST NOT delay `publish`, the bus, or any other subscription.
/// - When its queue is full, the bus drops messages of that subscription
///   only, SHOULD count them, and MUST deliver [`BusMessage::Lagged`] to it
///   before any message published after the first one it lost.
/// - A message the bus may have missed (a lost connection) or cannot read
///   MUST become `Lagged` for the subscriptions concerned: `Lagged` means
///   "resynchronise from the store", never "nothing happened".
///
/// An idle subscription SHOULD cost little memory (a queue that holds no
/// buffer while it is empty): there is one per watched session.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes to every subscription of the message's session on every
    /// instance. MUST NOT fail the caller (the commit already happened), nor
    /// wait for any subscription to read: implementations log and count
    /// their failures; clients recover by version.
    async fn publish(&self, message: BusMessage);

    /// The update `state` with its `events` as of `at_ms`
    /// ([`BusMessage::Updated`]) encoded as this bus carries it, for a store
    /// that publishes inside its commit ([`SessionStore::publishes_commits`]):
    /// what `publish` would send, byte for byte. `None` (the default) when
    /// this bus's messages cannot be sent by anyone else; the service then
    /// publishes through [`Self::publish`].
    fn encode_update(
        &self,
        _state: &Session,
        _events: &[Event],
        _at_ms: i64,
    ) -> Option<EncodedMessage> {
        None
    }

    /// Subscribes to one session's messages. Once it returns `Ok`, every
    /// message published afterwards on any instance MUST reach the
    /// subscription (or `Lagged` does), so that a snapshot loaded after it
    /// leaves no gap. An implementation SHOULD receive traffic for a session
    /// only while it has at least one subscription to it, and stop when the
    /// last one is dropped.
    async fn subscribe(&self, session_id: SessionId) -> Result<Subscription, BusError>;

    /// False while the bus cannot deliver (e.g. its subscriber connection is down).
    fn is_healthy(&self) -> bool;
}

/// Why an audit call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The audit database is unreachable; retry later.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("audit failure: {0}")]
    Other(String),
}

/// The audit trail.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Writes a batch of events. MUST be idempotent on `event_id` (writing an
    /// event twice stores it once) and MUST NOT return `Ok` before the batch is durable.
    async fn write(&self, events: &[Event]) -> Result<(), AuditError>;

    /// A session's events, newest first (by version), at most `limit`, only those
    /// with `at_ms` strictly before `before_ms` when given.
    async fn history(
        &self,
        session_id: SessionId,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<Event>, AuditError>;
}

/// The authority on "now", in ms since the Unix epoch. Every instance of a
/// deployment MUST agree on it (e.g. by tracking the store's clock), and it
/// SHOULD never go backwards.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now_ms(&self) -> i64;

    /// The current instant in µs since the Unix epoch, for waking at the
    /// exact start of a millisecond (a deadline): `now_ms` is this, floored
    /// to the millisecond, or later. The default knows whole milliseconds
    /// only (`now_ms * 1000`), which can wake up to a millisecond late.
    fn now_us(&self) -> i64 {
        self.now_ms().saturating_mul(1000)
    }
}

impl<T: Clock + ?Sized> Clock for Arc<T> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }

    fn now_us(&self) -> i64 {
        (**self).now_us()
    }
}

/// Where rate-limit state lives: in process for one instance, in Redis when
/// instances share limits.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request against `key` under `limit` at `now_ms`, atomically
    /// for all instances sharing the limiter. MUST behave as
    /// [`crate::ratelimit::gcra`].
    async fn check(&self, key: &str, limit: Limit, now_ms: i64)
    -> Result<RateDecision, StoreError>;
}

/// Places counted across every instance of a deployment: at most `max`
/// holders under one key at once (the per-user WebSocket cap). Each place
/// is a lease: its instance renews the places it holds, so the places of an
/// instance that died come back when their leases run out, and a release
/// that never arrived (the store was down) costs a place for one lease at
/// most.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PlaceRegistry: Send + Sync + 'static {
    /// Takes a place for `holder` under `key`, held until `now_ms +
    /// lease_ms`, unless `max` unexpired places are held there already.
    /// `Ok(true)` when taken (or already held by `holder`). MUST be atomic
    /// for all instances sharing the registry.
    async fn acquire(
        &self,
        key: &str,
        holder: &str,
        max: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives a place back; nothing happens when it is not held.
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError>;

    /// Extends each `(key, holder)` place that is still held to `now_ms +
    /// lease_ms`. MUST NOT bring back a place that was released or expired.
    async fn renew(
        &self,
        places: &[(String, String)],
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError>;
}

/// Webhook endpoints, the delivery queue and the delivery log (contract
/// section 9), shared by every instance of a deployment. A delivery is keyed
/// by (webhook_id, event_id): that pair is what makes enqueueing idempotent
/// and what `finish` and `reschedule` name.
///
/// The queue gives at-least-once delivery across the loss of any instance: a
/// claimed delivery is a lease, and a delivery is removed only by `finish`
/// (or with its endpoint).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores a new endpoint (its id is fresh: an existing one is overwritten).
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), StoreError>;

    /// Every endpoint, disabled ones included, in no promised order.
    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError>;

    /// One endpoint, or `None`.
    async fn get_endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError>;

    /// Removes the endpoint and its delivery log. Returns whether it existed.
    /// Its queued deliveries go too: `claim_due` MUST NOT return them
    /// afterwards (an implementation may drop them lazily, at claim time).
    async fn delete_endpoint(&self, id: WebhookId) -> Result<bool, StoreError>;

    /// Marks the endpoint disabled with `reason` (nothing when it is gone).
    /// Its queued deliveries are dropped as for `delete_endpoint`.
    async fn disable_endpoint(&self, id: WebhookId, reason: &str) -> Result<(), StoreError>;

    /// Queues deliveries, each due at its `due_at_ms`. Idempotent per
    /// (webhook_id, event_id): a second enqueue of a pair still queued is a
    /// no-op (it neither resets the attempt nor moves the due time).
    /// Deliveries to an endpoint that is gone or disabled are not queued.
    /// MUST be durable when it returns `Ok`.
    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<(), StoreError>;

    /// Returns up to `limit` deliveries due at or before `now_ms`, each hidden
    /// from other callers until `now_ms + lease_ms`; a job still queued after
    /// its lease (its claimer died) MUST be returned again. Atomic for all
    /// instances: one delivery goes to one caller per lease. Deliveries of a
    /// deleted or disabled endpoint are never returned.
    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Removes the delivery from the queue (delivered, or given up on). No-op
    /// when it is not queued.
    async fn finish(&self, id: WebhookId, event_id: Uuid) -> Result<(), StoreError>;

    /// Sets the delivery's next attempt number and due time (ending its
    /// lease). No-op when it is not queued.
    async fn reschedule(
        &self,
        id: WebhookId,
        event_id: Uuid,
        attempt: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError>;

    /// Queued deliveries, and the age (ms) at `now_ms` of the oldest
    /// undelivered one's event by its `first_enqueued_at_ms` (0 when empty).
    async fn queue_stats(&self, now_ms: i64) -> Result<(u64, i64), StoreError>;

    /// Puts an event that is in no outbox (a presence event) into the webhook
    /// feed, the store's webhook outbox, for the fan-out worker.
    async fn push_event(&self, event: &Event) -> Result<(), StoreError>;

    /// Appends to the endpoint's delivery log, which keeps the newest 1,000 records.
    async fn record_delivery(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError>;

    /// The endpoint's delivery log, newest first, at most `limit` records.
    async fn deliveries(
        &self,
        id: WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
}

/// A durable delivery log kept apart from the [`WebhookStore`] (PostgreSQL
/// when configured), for [`WithDeliveryLog`]. Unbounded unlike the store's
/// own log: retention is the operator's.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait DeliveryLog: Send + Sync + 'static {
    /// Appends a record. Writing the same record twice (a retried write)
    /// SHOULD store it once.
    async fn record(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError>;

    /// The endpoint's records, newest first, at most `limit`.
    async fn list(&self, id: WebhookId, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError>;
}

/// A [`WebhookStore`] whose delivery log lives in a [`DeliveryLog`]:
/// `record_delivery` and `deliveries` go to `log`, everything else to
/// `store`. How the server puts the log in PostgreSQL while the endpoints
/// and queue stay in Redis or memory.
#[derive(Debug, Clone)]
pub struct WithDeliveryLog<S, L> {
    store: S,
    log: L,
}

impl<S, L> WithDeliveryLog<S, L> {
    /// `store` for endpoints, queue and feed; `log` for the delivery log.
    pub fn new(store: S, log: L) -> Self {
        Self { store, log }
    }
}

#[async_trait]
impl<S: WebhookStore, L: DeliveryLog> WebhookStore for WithDeliveryLog<S, L> {
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        self.store.create_endpoint(e).await
    }

    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.store.list_endpoints().await
    }

    async fn get_endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError> {
        self.store.get_endpoint(id).await
    }

    async fn delete_endpoint(&self, id: WebhookId) -> Result<bool, StoreError> {
        self.store.delete_endpoint(id).await
    }

    async fn disable_endpoint(&self, id: WebhookId, reason: &str) -> Result<(), StoreError> {
        self.store.disable_endpoint(id, reason).await
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        self.store.enqueue(deliveries).await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.store.claim_due(now_ms, limit, lease_ms).await
    }

    async fn finish(&self, id: WebhookId, event_id: Uuid) -> Result<(), StoreError> {
        self.store.finish(id, event_id).await
    }

    async fn reschedule(
        &self,
        id: WebhookId,
        event_id: Uuid,
        attempt: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.store
            .reschedule(id, event_id, attempt, due_at_ms)
            .await
    }

    async fn queue_stats(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        self.store.queue_stats(now_ms).await
    }

    async fn push_event(&self, event: &Event) -> Result<(), StoreError> {
        self.store.push_event(event).await
    }

    async fn record_delivery(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError> {
        self.log.record(id, rec).await
    }

    async fn deliveries(
        &self,
        id: WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.log.list(id, limit).await
    }
}

/// A shared log composes too (`Arc<dyn DeliveryLog>`).
#[async_trait]
impl<T: DeliveryLog + ?Sized> DeliveryLog for Arc<T> {
    async fn record(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError> {
        (**self).record(id, rec).await
    }

    async fn list(&self, id: WebhookId, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        (**self).list(id, limit).await
    }
}

/// Who is connected to which session, over every instance (contract
/// section 9). Each connection is an entry leased by its instance, which
/// renews it (like [`PlaceRegistry`]'s places), so the entries of an
/// instance that died lapse by themselves. Every operation MUST be atomic
/// for all instances sharing the registry.
///
/// Besides the entries, a registry keeps two indexes with claim leases
/// (like the deadline index of [`SessionStore::claim_due`]): the pending
/// leaves (a user's last connection closed; `presence_left` is due after
/// the leave delay unless they come back) and the absences (a participant
/// that had connections has none; the auto-pause worker checks them).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Registers `connection`, leased until `now_ms + lease_ms`. Returns
    /// whether `presence_joined` is due: it is the user's only connection
    /// to the session AND no leave of theirs was pending. A pending leave
    /// of the user is cancelled (a reconnect inside the leave delay sends
    /// neither event), and so is the absence of its participant.
    async fn join(
        &self,
        connection: &PresenceConnection,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Removes a connection. Returns whether it was its user's last one;
    /// then a [`PendingLeave`] due at `now_ms + leave_delay_ms` is
    /// recorded. When it was its participant's last one, an [`Absence`]
    /// since `now_ms` is recorded, to be checked at once. Removing an
    /// unknown (or already swept) connection does nothing and returns false.
    async fn leave(
        &self,
        session_id: SessionId,
        connection_id: &str,
        now_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Extends each `(session, connection)` entry still registered to
    /// `now_ms + lease_ms`. MUST NOT bring back one that left or lapsed.
    async fn renew(
        &self,
        connections: &[(SessionId, String)],
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError>;

    /// The live connections of a session: entries whose lease ends after
    /// `now_ms`, whichever instance holds them.
    async fn snapshot(
        &self,
        session_id: SessionId,
        now_ms: i64,
    ) -> Result<PresenceSnapshot, StoreError>;

    /// First sweeps up to `limit` lapsed entries (lease ended at or before
    /// `now_ms`: their instance is gone) as if they had left at their
    /// lease's end (pending leaves and absences included, with
    /// `leave_delay_ms`); then returns up to `limit` pending leaves due by
    /// `now_ms`, each hidden from other callers for `lease_ms`. A claimed
    /// leave not finished within its lease MUST be returned again.
    async fn claim_due_leaves(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<Vec<PendingLeave>, StoreError>;

    /// Drops a claimed leave once its event is out. MUST NOT drop a newer
    /// leave of the same user (one that closed again after coming back).
    async fn finish_leave(&self, leave: &PendingLeave) -> Result<(), StoreError>;

    /// Returns up to `limit` absences whose next check is due by `now_ms`,
    /// each hidden from other callers for `lease_ms`.
    async fn claim_due_absences(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Absence>, StoreError>;

    /// Sets when an absence is checked next, or drops it (`None`: the
    /// session is gone or ended). Does nothing when the absence ended
    /// meanwhile (the participant came back) or is a newer one.
    async fn reschedule_absence(
        &self,
        absence: &Absence,
        next_check_ms: Option<i64>,
    ) -> Result<(), StoreError>;
}

/// Where presence events go besides the bus: the seam for a feed that
/// wants them too (webhooks). Presence events are not state changes, so
/// they never reach the durable outbox; the service hands each one here
/// once it is published.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait PresenceObserver: Send + Sync + 'static {
    /// One `presence_joined` or `presence_left`. MUST NOT block: queue it.
    fn observe(&self, event: &Event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_delivery_log_sends_the_log_to_the_log_and_the_rest_to_the_store() {
        let id = WebhookId::from_uuid(Uuid::from_u128(1));
        let rec = DeliveryRecord {
            event_id: Uuid::from_u128(2),
            attempt: 1,
            status_code: Some(200),
            error: None,
            sent_at_ms: 10,
            latency_ms: 3,
        };
        let mut store = MockWebhookStore::new();
        store
            .expect_queue_stats()
            .times(1)
            .returning(|_| Ok((4, 5)));
        store.expect_record_delivery().never();
        store.expect_deliveries().never();
        let mut log = MockDeliveryLog::new();
        let expected = rec.clone();
        log.expect_record()
            .withf(move |i, r| *i == id && *r == expected)
            .times(1)
            .returning(|_, _| Ok(()));
        let listed = rec.clone();
        log.expect_list()
            .withf(move |i, limit| *i == id && *limit == 7)
            .times(1)
            .returning(move |_, _| Ok(vec![listed.clone()]));

        let both = WithDeliveryLog::new(store, Arc::new(log));
        assert_eq!(both.queue_stats(9).await, Ok((4, 5)));
        assert_eq!(both.record_delivery(id, &rec).await, Ok(()));
        assert_eq!(both.deliveries(id, 7).await, Ok(vec![rec]));
    }
}
