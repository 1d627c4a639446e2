//! The application service: load, decide, commit with compare-and-set, publish.
//!
//! Generic over its ports so the same code runs on the in-memory adapters,
//! on Redis, and on mocks. It holds no state of its own: any instance can
//! serve any request.

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;

use crate::auth::{Action, Actor, authorize};
use crate::clock::settle_deadlines;
use crate::config::SessionConfig;
use crate::event::Event;
use crate::ids::{ParticipantId, SessionId};
use crate::machine::{self, Command, Decision, TransitionError};
use crate::ports::{
    AuditError, AuditSink, BusMessage, Claimed, Clock, Commit, EventBus, SessionStore, StoreError,
};
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
    /// Who is connected, with the leave delay (see the `presence` submodule).
    presence: presence::Presence,
}

impl<S: ?Sized, B: ?Sized, C: ?Sized> Clone for SessionService<S, B, C> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            bus: self.bus.clone(),
            clock: self.clock.clone(),
            audit: self.audit.clone(),
            presence: self.presence.clone(),
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
            store,
            bus,
            clock,
            audit: None,
            presence: presence::Presence::default(),
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
        let view = view(&state, now);
        self.bus
            .publish(BusMessage::Updated {
                state: Arc::new(state),
                events: vec![event],
                at_ms: now,
            })
            .await;
        Ok(view)
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
        let action = match command {
            Command::Switch { .. } => Action::Switch,
            Command::AddTime { .. } => Action::AddTime,
            _ => Action::Control,
        };
        self.decide_and_commit(
            || async { Ok(Continue(self.load_authorized(actor, id, action).await?)) },
            |stored, now| {
                let decision = machine::decide(stored, &command, expected_version, now)?;
                Ok(Continue(decision))
            },
            |done| Executed {
                view: view(done.state, done.at_ms),
                expired_participant_id: done.expired_participant_id,
                fired_deadlines: done.fired_deadlines,
                at_ms: done.at_ms,
            },
        )
        .await
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
        let Claimed {
            id,
            state: mut known,
        } = claimed;
        self.decide_and_commit(
            // The claimed state first, then the store's; a session gone
            // meanwhile has nothing due.
            move || {
                let known = known.take();
                async move {
                    let stored = match known {
                        Some(state) => state,
                        None => match self.store.load(id).await? {
                            Some(state) => state,
                            None => return Ok(Break(Vec::new())),
                        },
                    };
                    Ok(Continue((stored, self.clock.now_ms())))
                }
            },
            |stored, now| match machine::decide(stored, &Command::Timeout, None, now) {
                Ok(decision) => Ok(Continue(decision)),
                // Not due yet, or another instance applied it first.
                Err(TransitionError::NothingDue) => Ok(Break(Vec::new())),
                Err(e) => Err(e.into()),
            },
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
    /// Each attempt: `load` the state to decide on and the instant to decide
    /// at; `decide` on it; commit the decision if and only if the stored
    /// version is still the one decided on; then `finish` reads the committed
    /// state, every version is published in order, and `finish`'s answer is
    /// returned. A lost race ([`StoreError::VersionConflict`]) starts over
    /// with a fresh `load` (a command with `expected_version` then gets its
    /// conflict from `decide`), at most [`MAX_CAS_ATTEMPTS`] times. `load`
    /// and `decide` end the loop early with `Break(answer)` (nothing to do)
    /// or an error; any other store error ends it too.
    async fn decide_and_commit<R, L>(
        &self,
        mut load: impl FnMut() -> L,
        mut decide: impl FnMut(&Session, i64) -> Result<ControlFlow<R, Decision>, ServiceError>,
        finish: impl FnOnce(Committed<'_>) -> R,
    ) -> Result<R, ServiceError>
    where
        L: Future<Output = Result<ControlFlow<R, (Session, i64)>, ServiceError>>,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (stored, now) = match load().await? {
                Continue(loaded) => loaded,
                Break(answer) => return Ok(answer),
            };
            let decision = match decide(&stored, now)? {
                Continue(decision) => decision,
                Break(answer) => return Ok(answer),
            };
            let Decision {
                state,
                events,
                intermediate,
                expired_participant_id,
                fired_deadlines,
            } = decision;
            let commit = Commit {
                deadline: machine::next_deadline(&state),
                expected_version: stored.version,
                events,
                state,
            };
            match self.store.commit(&commit).await {
                Ok(()) => {
                    let answer = finish(Committed {
                        state: &commit.state,
                        expired_participant_id,
                        fired_deadlines,
                        at_ms: now,
                    });
                    self.publish_versions(intermediate, commit, now).await;
                    return Ok(answer);
                }
                // Lost a race: load and decide again on the fresh state.
                Err(StoreError::VersionConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(format!(
            "gave up after {MAX_CAS_ATTEMPTS} compare-and-set conflicts"
        )))
    }

    /// Publishes one message per committed version, in version order.
    async fn publish_versions(&self, intermediate: Vec<Session>, commit: Commit, now: i64) {
        let mut events = commit.events;
        for state in intermediate {
            let rest = events.split_off(events.partition_point(|e| e.version <= state.version));
            let mine: Vec<Event> = std::mem::replace(&mut events, rest);
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
                state: Arc::new(commit.state),
                events,
                at_ms: now,
            })
            .await;
    }
}
