//! The application service: load, decide, commit with compare-and-set, publish.
//!
//! Generic over its ports so the same code runs on the in-memory adapters,
//! on Redis, and on mocks. The only state it holds is a bounded cache of
//! recent sessions ([`SessionCache`]) that a command decides on before the
//! store's compare-and-set confirms it, so any instance can still serve any
//! request: a stale copy costs one retry on the state the conflict returns.

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;

use crate::auth::{Action, Actor, authorize};
use crate::cache::{DEFAULT_CAPACITY, SessionCache};
use crate::clock::settle_deadlines;
use crate::config::SessionConfig;
use crate::event::Event;
use crate::ids::{ParticipantId, SessionId};
use crate::machine::{self, Command, Decision, TransitionError};
use crate::ports::{
    AuditError, AuditSink, BusMessage, Claimed, Clock, Commit, EncodedMessage, EventBus, RateCheck,
    SessionStore, StoreError,
};
use crate::ratelimit::{Limit, RateDecision};
use crate::session::Session;
use crate::view::{SessionView, view};

mod presence;

pub use presence::AbsenceCheck;

/// How often a command without `expected_version` is retried after losing a
/// compare-and-set race before the service gives up. Each retry means another
/// writer committed, so this bounds only pathological contention.
pub const MAX_CAS_ATTEMPTS: usize = 1024;

/// Why a service call failed: the client's mistakes and the system's faults,
/// kept apart so the transport can map each to its status code in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// No such session.
    #[error("session {0} not found")]
    NotFound(SessionId),
    /// The id is taken.
    #[error("session {0} already exists")]
    AlreadyExists(SessionId),
    /// The state machine refused the command (status, participant, version).
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The caller lacks the right.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The primary store is unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// No audit trail is configured on this deployment (history unavailable).
    #[error("the audit trail is disabled on this deployment")]
    AuditDisabled,
    /// The audit trail did not answer (history only; commands never wait on it).
    #[error("audit trail unavailable: {0}")]
    AuditUnavailable(String),
    /// Anything unexpected.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request breaks a rule that needs the current instant (a session
    /// config's `start_at_ms`): 400 naming each field.
    #[error("invalid request: {} field(s)", .0.len())]
    Invalid(Vec<crate::config::FieldError>),
    /// The command's rate limit refused it (nothing changed): 429 with the
    /// decision's `RateLimit-*` and `Retry-After`.
    #[error("over the limit of {} per {} ms", .limit.count, .limit.period_ms)]
    RateLimited {
        /// The refusal, for the headers.
        decision: RateDecision,
        /// The limit that refused.
        limit: Limit,
    },
}

/// What the service's dependencies look like right now, for `/health` and
/// `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The primary store answered a ping.
    pub store: bool,
    /// The bus is connected and subscribed to every watched session.
    pub bus: bool,
}

/// How the audit trail is doing, for `/health`: the audit worker sets it,
/// the transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditHealth {
    /// Writing and drained.
    Ok,
    /// Behind (database down or backlog growing).
    Degraded,
    /// No audit store configured.
    Disabled,
}

/// Told after every successful create and commit: the session's id and its
/// next deadline as stored in the deadline index (`None`: it has none). The
/// server arms or disarms a local timer with it; it must be quick and must
/// not block (it runs on the request path, after the commit).
pub type DeadlineObserver = Arc<dyn Fn(SessionId, Option<i64>) + Send + Sync>;

/// Told the instant at which presence work this service scheduled falls
/// due, in the clock's milliseconds: when a connection closes, its
/// participant's absence (checked at once) and, when it was its user's
/// last, the user's `presence_left` (after the leave delay). The server's
/// presence worker sleeps until the earliest of them instead of polling;
/// it must be quick and must not block (it runs on the caller's path).
pub type PresenceDueObserver = Arc<dyn Fn(i64) + Send + Sync>;

/// The service over trait-object ports, as the server wires it (adapters
/// chosen at start-up) and as the transport and the workers hold it.
pub type DynSessionService = SessionService<dyn SessionStore, dyn EventBus, dyn Clock>;

/// A session's stored state and the instant it was read at: what a caller
/// allowed to read it needs to compute any view (`view::view(&state, now_ms)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stored state (deadlines not yet applied; a read applies them).
    pub state: Session,
    /// The instant of the read.
    pub now_ms: i64,
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::InvalidCursor => Self::Invalid(vec![crate::config::FieldError::new(
                "cursor",
                "is not a cursor this server gave out",
            )]),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// The result of a state-changing command.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// The session as of the commit.
    pub view: SessionView,
    /// The participant whose clock the command found run out.
    pub expired_participant_id: Option<ParticipantId>,
    /// Deadlines applied by this commit (for lateness metrics).
    pub fired_deadlines: Vec<i64>,
    /// The instant the commit took effect.
    pub at_ms: i64,
    /// The rate limit's decision, when the command counted against one.
    pub rate: Option<RateDecision>,
}

/// What [`SessionService::decide_and_commit`] hands its caller after a
/// successful commit, before publishing.
struct Committed<'a> {
    /// The committed state.
    state: &'a Session,
    /// The participant whose clock the decision found run out.
    expired_participant_id: Option<ParticipantId>,
    /// The deadlines the decision applied.
    fired_deadlines: Vec<i64>,
    /// The instant the decision was taken at.
    at_ms: i64,
    /// The rate decision of the commit's check, if it had one.
    rate: Option<RateDecision>,
}

/// The state an attempt of [`SessionService::decide_and_commit`] starts
/// from, when it does not load one.
enum Known {
    /// The instance's copy, which may be behind: a refusal decided on it is
    /// checked again on the store's state.
    Cached(Arc<Session>),
    /// As the store holds it (a claim's read, a conflict's answer).
    Fresh(Arc<Session>),
}

/// The service, generic over its ports.
///
/// The ports may be trait objects (`SessionService<dyn SessionStore, dyn
/// EventBus, dyn Clock>`), which is how the transport holds it so that
/// adapters are chosen at start-up without generics leaking into handlers.
pub struct SessionService<S: ?Sized, B: ?Sized, C: ?Sized> {
    store: Arc<S>,
    bus: Arc<B>,
    clock: Arc<C>,
    audit: Option<Arc<dyn AuditSink>>,
    /// Recent sessions, shared by the clones of one service.
    cache: Arc<SessionCache>,
    deadline_observer: Option<DeadlineObserver>,
    /// Who is connected, with the leave delay (see the `presence` submodule).
    presence: presence::Presence,
    /// Whether the store publishes each commit's versions itself
    /// ([`SessionStore::publishes_commits`], read once by [`Self::new`]).
    store_publishes: bool,
}

impl<S: ?Sized, B: ?Sized, C: ?Sized> Clone for SessionService<S, B, C> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            bus: self.bus.clone(),
            clock: self.clock.clone(),
            audit: self.audit.clone(),
            cache: self.cache.clone(),
            deadline_observer: self.deadline_observer.clone(),
            presence: self.presence.clone(),
            store_publishes: self.store_publishes,
        }
    }
}

impl<S: ?Sized, B: ?Sized, C: ?Sized> std::fmt::Debug for SessionService<S, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionService").finish_non_exhaustive()
    }
}

impl<S: SessionStore + ?Sized, B: EventBus + ?Sized, C: Clock + ?Sized> SessionService<S, B, C> {
    /// Wires the service to its ports.
    pub fn new(store: Arc<S>, bus: Arc<B>, clock: Arc<C>) -> Self {
        Self {
            store_publishes: store.publishes_commits(),
            store,
            bus,
            clock,
            audit: None,
            cache: Arc::new(SessionCache::new(DEFAULT_CAPACITY)),
            deadline_observer: None,
            presence: presence::Presence::default(),
        }
    }

    /// The same service telling `observer` each committed deadline (see
    /// [`DeadlineObserver`]).
    #[must_use]
    pub fn with_deadline_observer(mut self, observer: DeadlineObserver) -> Self {
        self.deadline_observer = Some(observer);
        self
    }

    /// Tells the observer, if any, a session's new deadline.
    fn observe_deadline(&self, id: SessionId, deadline: Option<i64>) {
        if let Some(observe) = &self.deadline_observer {
            observe(id, deadline);
        }
    }

    /// The same service keeping at most `capacity` recent sessions (0: none,
    /// every command loads its session first).
    #[must_use]
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = Arc::new(SessionCache::new(capacity));
        self
    }

    /// Keeps the cache fresh with what the bus delivered for a session this
    /// instance watches: a newer state replaces the copy held (none is
    /// added), a deletion drops it. The hub calls it for every message it
    /// receives, so a session played over this instance's sockets usually
    /// costs one store round trip per command even when other instances
    /// commit too.
    pub fn observe(&self, message: &BusMessage) {
        match message {
            BusMessage::Updated { state, .. } => self.cache.refresh(state),
            BusMessage::Deleted { session_id, .. } => self.cache.remove(*session_id),
            BusMessage::Event { .. } | BusMessage::Lagged => {}
        }
    }

    /// The same service with an audit trail to answer [`Self::history`] from.
    #[must_use]
    pub fn with_audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Whether an audit trail is configured.
    pub fn has_audit(&self) -> bool {
        self.audit.is_some()
    }

    /// The deployment's "now" (the clock port), in ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The same instant to the µs ([`Clock::now_us`]), for timers.
    pub fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    /// Whether the store answers and the bus is connected. The caller bounds
    /// the wait (the domain has no timer): a ping that does not answer in
    /// time means the store is down.
    pub async fn health(&self) -> Health {
        Health {
            store: self.store.ping().await.is_ok(),
            bus: self.bus.is_healthy(),
        }
    }

    /// Whether the bus is connected and subscribed to every watched session
    /// (no store round trip).
    pub fn bus_healthy(&self) -> bool {
        self.bus.is_healthy()
    }

    /// Claims up to `limit` sessions whose deadline is due now, each for
    /// `lease_ms` (the timeout worker's call; fire each with
    /// [`Self::fire_claimed`]). A claim not fired within its lease is claimed
    /// again by any instance, so a deadline is never lost.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, ServiceError> {
        let now = self.clock.now_ms();
        Ok(self.store.claim_due(now, limit, lease_ms).await?)
    }

    /// [`Self::claim_due`] for deadlines more than `grace_ms` past: the
    /// safety net's claim, which leaves a deadline to the local timer of the
    /// instance that committed it for `grace_ms`. The lease still runs
    /// `lease_ms` from now.
    pub async fn claim_overdue(
        &self,
        limit: usize,
        lease_ms: i64,
        grace_ms: i64,
    ) -> Result<Vec<Claimed>, ServiceError> {
        let grace = grace_ms.max(0);
        let cutoff = self.clock.now_ms().saturating_sub(grace);
        let lease = lease_ms.saturating_add(grace);
        Ok(self.store.claim_due(cutoff, limit, lease).await?)
    }

    /// A session's stored state and the instant it was read, for a caller
    /// allowed to read it.
    pub async fn snapshot(&self, actor: &Actor, id: SessionId) -> Result<Snapshot, ServiceError> {
        let (state, now_ms) = self.load_authorized(actor, id, Action::Read).await?;
        Ok(Snapshot { state, now_ms })
    }

    /// A session's audit events, newest first: at most `limit`, only those
    /// strictly before `before_ms` when given.
    ///
    /// The rules: the caller needs the right to read the session's events
    /// while the session exists; once it is gone (deleted or expired from the
    /// store) only an admin may read what the trail kept. A session that is
    /// neither in the store nor in the trail is not found.
    pub async fn history(
        &self,
        actor: &Actor,
        id: SessionId,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<Event>, ServiceError> {
        let exists = match self.load_authorized(actor, id, Action::ReadEvents).await {
            Ok(_) => true,
            Err(ServiceError::NotFound(_)) if actor.role == crate::auth::Role::Admin => false,
            Err(e) => return Err(e),
        };
        let audit = self.audit.as_ref().ok_or(ServiceError::AuditDisabled)?;
        let events = audit
            .history(id, limit, before_ms)
            .await
            .map_err(|e| match e {
                AuditError::Unavailable(m) | AuditError::Other(m) => {
                    ServiceError::AuditUnavailable(m)
                }
            })?;
        if events.is_empty() && !exists {
            return Err(ServiceError::NotFound(id));
        }
        Ok(events)
    }

    /// Creates a session. `generated_id` is used when the config names none
    /// (the domain has no randomness of its own).
    pub async fn create(
        &self,
        actor: &Actor,
        config: SessionConfig,
        generated_id: SessionId,
    ) -> Result<SessionView, ServiceError> {
        if !authorize(actor, Action::Create, None) {
            return Err(ServiceError::Forbidden(
                "only admin and host may create sessions",
            ));
        }
        let id = config.session_id.unwrap_or(generated_id);
        let now = self.clock.now_ms();
        config.validate_at(now).map_err(ServiceError::Invalid)?;
        let (state, event) = machine::create(config, id, actor.sub.clone(), now);
        match self
            .store
            .create(&state, std::slice::from_ref(&event))
            .await
        {
            Ok(()) => {}
            Err(StoreError::AlreadyExists) => return Err(ServiceError::AlreadyExists(id)),
            Err(e) => return Err(e.into()),
        }
        self.observe_deadline(id, machine::next_deadline(&state));
        let view = view(&state, now);
        let state = Arc::new(state);
        self.cache.insert(state.clone());
        self.bus
            .publish(BusMessage::Updated {
                state,
                events: vec![event],
                at_ms: now,
            })
            .await;
        Ok(view)
    }

    /// One page of every stored session as of now, for an admin whose token
    /// is not scoped to one session (the admin view): about `limit` views,
    /// and the cursor of the next page (see [`SessionStore::list`] for what
    /// a walk guarantees and costs).
    pub async fn list(
        &self,
        actor: &Actor,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<(Vec<SessionView>, Option<String>), ServiceError> {
        if !authorize(actor, Action::ListSessions, None) {
            return Err(ServiceError::Forbidden(
                "only an admin token for every session may list sessions",
            ));
        }
        let page = self.store.list(cursor, limit).await?;
        let now = self.clock.now_ms();
        let views = page.sessions.iter().map(|s| view(s, now)).collect();
        Ok((views, page.next_cursor))
    }

    /// Loads a session as of now, checking the caller may read it.
    pub async fn get(&self, actor: &Actor, id: SessionId) -> Result<SessionView, ServiceError> {
        let (state, now) = self.load_authorized(actor, id, Action::Read).await?;
        Ok(view(&state, now))
    }

    /// Checks that `actor` may perform `action` on the session; returns its stored state.
    async fn load_authorized(
        &self,
        actor: &Actor,
        id: SessionId,
        action: Action,
    ) -> Result<(Session, i64), ServiceError> {
        let state = self
            .store
            .load(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let now = self.clock.now_ms();
        if !authorize(actor, action, Some(&settle_deadlines(&state, now))) {
            return Err(ServiceError::Forbidden(
                "this token may not do that to this session",
            ));
        }
        Ok((state, now))
    }

    /// Runs a client command with optimistic locking. Without
    /// `expected_version`, a lost compare-and-set race is retried on the
    /// fresh state, so concurrent commands never lose an update.
    pub async fn execute(
        &self,
        actor: &Actor,
        id: SessionId,
        command: Command,
        expected_version: Option<u64>,
    ) -> Result<Executed, ServiceError> {
        self.execute_limited(actor, id, command, expected_version, None)
            .await
    }

    /// [`Self::execute`], counting the command against the session's own
    /// rate `limit` (the switch limit) in the same atomic step as its commit:
    /// a refusal is [`ServiceError::RateLimited`] and changes nothing; only a
    /// command that changes the session counts.
    ///
    /// The command is decided on the instance's copy of the session when it
    /// has one (no load), and the commit confirms it; a copy that is behind
    /// costs one retry on the state the conflict returns, and a refusal
    /// decided on a copy (the rules, the rights, `expected_version`) is
    /// decided again on the store's state before it is answered.
    pub async fn execute_limited(
        &self,
        actor: &Actor,
        id: SessionId,
        command: Command,
        expected_version: Option<u64>,
        limit: Option<Limit>,
    ) -> Result<Executed, ServiceError> {
        let action = match command {
            Command::Switch { .. } => Action::Switch,
            Command::AddTime { .. } => Action::AddTime,
            Command::Join(_) | Command::Leave { .. } => Action::ManageParticipants,
            _ => Action::Control,
        };
        self.decide_and_commit(
            self.cache.get(id).map(Known::Cached),
            || async move {
                match self.load_fresh(id).await? {
                    Some(state) => Ok(Continue(state)),
                    None => Err(ServiceError::NotFound(id)),
                }
            },
            |stored, now| {
                if !authorize(actor, action, Some(&settle_deadlines(stored, now))) {
                    return Err(ServiceError::Forbidden(
                        "this token may not do that to this session",
                    ));
                }
                let decision = machine::decide(stored, &command, expected_version, now)?;
                Ok(Continue(decision))
            },
            limit,
            |done| Executed {
                view: view(done.state, done.at_ms),
                expired_participant_id: done.expired_participant_id,
                fired_deadlines: done.fired_deadlines,
                at_ms: done.at_ms,
                rate: done.rate,
            },
        )
        .await
    }

    /// The store's state of a session, kept in the cache (or dropped from
    /// it when the session is gone).
    async fn load_fresh(&self, id: SessionId) -> Result<Option<Arc<Session>>, ServiceError> {
        match self.store.load(id).await? {
            Some(state) => {
                let state = Arc::new(state);
                self.cache.insert(state.clone());
                Ok(Some(state))
            }
            None => {
                self.cache.remove(id);
                Ok(None)
            }
        }
    }

    /// Applies the due deadlines of one session (the timeout worker's call).
    /// Returns the deadlines applied, or an empty list when none was due (or
    /// another instance applied them first): each deadline takes effect once.
    pub async fn fire_due(&self, id: SessionId) -> Result<Vec<i64>, ServiceError> {
        self.fire_claimed(Claimed::id_only(id)).await
    }

    /// [`Self::fire_due`] for a session from [`SessionStore::claim_due`]:
    /// starts from the state the claim returned, if any, instead of loading
    /// it (one store round trip less per timeout); a stale state only costs
    /// a compare-and-set conflict and a reload.
    pub async fn fire_claimed(&self, claimed: Claimed) -> Result<Vec<i64>, ServiceError> {
        let Claimed { id, state } = claimed;
        self.decide_and_commit(
            // The claimed state first, else the instance's copy (a local
            // timer fires on the state its own commit left: one round trip),
            // then the store's; a session gone meanwhile has nothing due.
            state
                .map(|s| Known::Fresh(Arc::new(s)))
                .or_else(|| self.cache.get(id).map(Known::Cached)),
            || async move {
                match self.load_fresh(id).await? {
                    Some(state) => Ok(Continue(state)),
                    None => Ok(Break(Vec::new())),
                }
            },
            |stored, now| match machine::decide(stored, &Command::Timeout, None, now) {
                Ok(decision) => Ok(Continue(decision)),
                // Not due yet, or another instance applied it first.
                Err(TransitionError::NothingDue) => Ok(Break(Vec::new())),
                Err(e) => Err(e.into()),
            },
            None,
            |done| done.fired_deadlines,
        )
        .await
    }

    /// Deletes a session: cancels it if still live (so the audit trail and
    /// subscribers see why), removes it, and tells subscribers.
    ///
    /// Idempotent: deleting a session that does not exist (never created,
    /// already deleted, expired) succeeds for a caller who may delete
    /// sessions at all (admin or host), so a retried delete is not an error.
    pub async fn delete(&self, actor: &Actor, id: SessionId) -> Result<(), ServiceError> {
        let gone = || {
            if authorize(actor, Action::Create, None) {
                Ok(())
            } else {
                Err(ServiceError::Forbidden(
                    "only admin and host may delete sessions",
                ))
            }
        };
        let stored = match self.load_authorized(actor, id, Action::Control).await {
            Ok((stored, _)) => stored,
            Err(ServiceError::NotFound(_)) => return gone(),
            Err(e) => return Err(e),
        };
        if !stored.status.is_ended() {
            match self.execute(actor, id, Command::Cancel, None).await {
                // Ended meanwhile (a timeout, a concurrent cancel): just remove it.
                Ok(_)
                | Err(ServiceError::Transition(TransitionError::InvalidTransition { .. })) => {}
                // Deleted meanwhile by a concurrent delete: done.
                Err(ServiceError::NotFound(_)) => return gone(),
                Err(e) => return Err(e),
            }
        }
        self.cache.remove(id);
        if !self.store.delete(id).await? {
            // A concurrent delete removed it first and tells subscribers.
            return Ok(());
        }
        self.bus
            .publish(BusMessage::Deleted {
                session_id: id,
                at_ms: self.clock.now_ms(),
            })
            .await;
        Ok(())
    }

    /// The one compare-and-set loop behind every state change after create.
    ///
    /// Each attempt decides on a state: the one `known` (the instance's
    /// cached copy, or a claim's read) first, the one a lost compare-and-set
    /// returned after that, else a fresh `load`. `decide` runs on it at the
    /// current instant; its decision is committed if and only if the stored
    /// version is still the one decided on (and `limit`, when given, allows
    /// it, in the same atomic step); then `finish` reads the committed state,
    /// every version is published in order, and `finish`'s answer is
    /// returned.
    ///
    /// A lost race ([`StoreError::VersionConflict`]) starts over on the
    /// state the store returned with it (a command with `expected_version`
    /// then gets its conflict from `decide`), or on a fresh `load` when the
    /// session is gone, at most [`MAX_CAS_ATTEMPTS`] times. `load` and
    /// `decide` end the loop early with `Break(answer)` (nothing to do) or an
    /// error, except on a cached copy, which may be behind: then the attempt
    /// starts over on a fresh `load`. Any other store error ends it too.
    async fn decide_and_commit<R, L>(
        &self,
        mut known: Option<Known>,
        mut load: impl FnMut() -> L,
        mut decide: impl FnMut(&Session, i64) -> Result<ControlFlow<R, Decision>, ServiceError>,
        limit: Option<Limit>,
        finish: impl FnOnce(Committed<'_>) -> R,
    ) -> Result<R, ServiceError>
    where
        L: Future<Output = Result<ControlFlow<R, Arc<Session>>, ServiceError>>,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (stored, cached) = match known.take() {
                Some(Known::Cached(state)) => (state, true),
                Some(Known::Fresh(state)) => (state, false),
                None => match load().await? {
                    Continue(state) => (state, false),
                    Break(answer) => return Ok(answer),
                },
            };
            let now = self.clock.now_ms();
            let decision = match decide(&stored, now) {
                Ok(Continue(decision)) => decision,
                // Decided on a copy that may be behind: ask the store.
                Ok(Break(_)) | Err(_) if cached => continue,
                Ok(Break(answer)) => return Ok(answer),
                Err(e) => return Err(e),
            };
            let Decision {
                state,
                events,
                intermediate,
                expired_participant_id,
                fired_deadlines,
            } = decision;
            let publish = if self.store_publishes {
                self.encode_versions(&intermediate, &state, &events, now)
            } else {
                Vec::new()
            };
            let commit = Commit {
                deadline: machine::next_deadline(&state),
                expected_version: stored.version,
                events,
                state,
                rate: limit.map(|limit| RateCheck { limit, now_ms: now }),
                publish,
            };
            match self.store.commit(&commit).await {
                Ok(rate) => {
                    self.observe_deadline(commit.state.id, commit.deadline);
                    let Commit { state, events, .. } = commit;
                    let state = Arc::new(state);
                    self.cache.insert(state.clone());
                    let answer = finish(Committed {
                        state: &state,
                        expired_participant_id,
                        fired_deadlines,
                        at_ms: now,
                        rate,
                    });
                    if commit.publish.is_empty() {
                        self.publish_versions(intermediate, state, events, now)
                            .await;
                    }
                    return Ok(answer);
                }
                // Lost a race: decide again on the state the store holds.
                Err(StoreError::VersionConflict(Some(current))) => {
                    let current: Arc<Session> = Arc::from(current);
                    self.cache.insert(current.clone());
                    known = Some(Known::Fresh(current));
                }
                // Gone (deleted, expired): the next load says so.
                Err(StoreError::VersionConflict(None)) => self.cache.remove(stored.id),
                Err(StoreError::RateLimited(decision)) => {
                    return Err(match limit {
                        Some(limit) => ServiceError::RateLimited { decision, limit },
                        None => ServiceError::Internal(
                            "the store refused a commit by a rate limit it was not given".into(),
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(format!(
            "gave up after {MAX_CAS_ATTEMPTS} compare-and-set conflicts"
        )))
    }

    /// The bus messages [`Self::publish_versions`] would send, encoded by
    /// the bus for a store that publishes them inside the commit; empty
    /// when the bus encodes none (then the service publishes after the
    /// commit, as with any store).
    fn encode_versions(
        &self,
        intermediate: &[Session],
        state: &Session,
        events: &[Event],
        now: i64,
    ) -> Vec<EncodedMessage> {
        let ends = version_ends(intermediate, events);
        let mut start = 0;
        let mut encoded = Vec::with_capacity(intermediate.len() + 1);
        for (state, &end) in intermediate.iter().zip(&ends) {
            match self
                .bus
                .encode_update(state, &events[start..end], state.updated_at_ms)
            {
                Some(message) => encoded.push(message),
                None => return Vec::new(),
            }
            start = end;
        }
        match self.bus.encode_update(state, &events[start..], now) {
            Some(message) => encoded.push(message),
            None => return Vec::new(),
        }
        encoded
    }

    /// Publishes one message per committed version, in version order: the
    /// intermediate ones (deadlines applied before the command), then the
    /// final `state` with the rest of `events`.
    async fn publish_versions(
        &self,
        intermediate: Vec<Session>,
        state: Arc<Session>,
        events: Vec<Event>,
        now: i64,
    ) {
        let ends = version_ends(&intermediate, &events);
        let mut events = events.into_iter();
        let mut start = 0;
        for (state, end) in intermediate.into_iter().zip(ends) {
            let mine: Vec<Event> = events.by_ref().take(end - start).collect();
            start = end;
            let at_ms = state.updated_at_ms;
            self.bus
                .publish(BusMessage::Updated {
                    state: Arc::new(state),
                    events: mine,
                    at_ms,
                })
                .await;
        }
        self.bus
            .publish(BusMessage::Updated {
                state,
                events: events.collect(),
                at_ms: now,
            })
            .await;
    }
}

/// Where the events of each intermediate version end in `events` (sorted by
/// version): `intermediate[i]`'s are `events[ends[i - 1]..ends[i]]` (from 0
/// for the first), and the final state's are the rest.
fn version_ends(intermediate: &[Session], events: &[Event]) -> Vec<usize> {
    intermediate
        .iter()
        .map(|state| events.partition_point(|e| e.version <= state.version))
        .collect()
}
