//! The presence use cases of contract section 9 on [`SessionService`]: a
//! connection joins and leaves, its instance renews it, a reader asks who
//! is there, and the workers' calls (due leaves become `presence_left`,
//! due absences become the auto-pause, through the one compare-and-set
//! loop). Kept apart from the session use cases: they share the service's
//! ports, not its code.

use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;

use crate::auth::{Action, Actor};
use crate::event::{Event, EventType};
use crate::ids::{ParticipantId, SessionId};
use crate::machine::{self, Command, TransitionError};
use crate::ports::{
    BusMessage, Clock, EventBus, PresenceObserver, PresenceRegistry, SessionStore, StoreError,
};
use crate::presence::{
    ABSENCE_RECHECK_MS, Absence, DEFAULT_LEAVE_DELAY_MS, PRESENCE_LEASE_MS, PendingLeave,
    PresenceConnection, PresenceSnapshot, auto_pause_due, presence_event,
};
use crate::session::Session;

use super::{PresenceDueObserver, ServiceError, SessionService};

/// The service's presence parts: the registry (none: presence is off and
/// every call but [`SessionService::presence`] does nothing), the leave
/// delay, and the observer that gets every presence event.
#[derive(Clone)]
pub(super) struct Presence {
    registry: Option<Arc<dyn PresenceRegistry>>,
    leave_delay_ms: i64,
    observer: Option<Arc<dyn PresenceObserver>>,
    due: Option<PresenceDueObserver>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            registry: None,
            leave_delay_ms: DEFAULT_LEAVE_DELAY_MS,
            observer: None,
            due: None,
        }
    }
}

/// What checking a due absence did ([`SessionService::fire_absence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbsenceCheck {
    /// This call paused the session, as of `at_ms`.
    Paused {
        /// The instant of the pause.
        at_ms: i64,
    },
    /// Nothing to do now; checked again at `next_check_ms`.
    Waiting {
        /// The next check.
        next_check_ms: i64,
    },
    /// The session is gone or ended, or has no auto-pause: the absence
    /// was dropped.
    Dropped,
}

/// When to check an absence next, from the state as it is at `now`
/// (`None`: never again).
fn next_check(state: Option<&Session>, absence: &Absence, now: i64) -> Option<i64> {
    let s = state?;
    if s.status.is_ended() || s.auto_pause_on_disconnect_ms.is_none() {
        return None;
    }
    s.participant_position(&absence.participant_id)?;
    match auto_pause_due(s, &absence.participant_id, absence.absent_since_ms) {
        Some(due) if due > now => Some(due),
        // Not its turn or not running: the state may change at any
        // command, which this worker does not hear of.
        _ => Some(now.saturating_add(ABSENCE_RECHECK_MS)),
    }
}

impl<S: SessionStore + ?Sized, B: EventBus + ?Sized, C: Clock + ?Sized> SessionService<S, B, C> {
    /// The same service counting connections in `registry` (shared by
    /// every instance), announcing a leave after `leave_delay_ms`.
    #[must_use]
    pub fn with_presence(
        mut self,
        registry: Arc<dyn PresenceRegistry>,
        leave_delay_ms: i64,
    ) -> Self {
        self.presence.registry = Some(registry);
        self.presence.leave_delay_ms = leave_delay_ms.max(0);
        self
    }

    /// The same service handing every presence event it publishes to
    /// `observer` too (the seam for the webhook feed).
    #[must_use]
    pub fn with_presence_observer(mut self, observer: Arc<dyn PresenceObserver>) -> Self {
        self.presence.observer = Some(observer);
        self
    }

    /// The same service telling `observer` when the presence work it
    /// schedules falls due (see [`PresenceDueObserver`]).
    #[must_use]
    pub fn with_presence_due_observer(mut self, observer: PresenceDueObserver) -> Self {
        self.presence.due = Some(observer);
        self
    }

    /// Whether connections are counted.
    pub fn has_presence(&self) -> bool {
        self.presence.registry.is_some()
    }

    /// The leave delay.
    pub fn presence_leave_delay_ms(&self) -> i64 {
        self.presence.leave_delay_ms
    }

    fn registry(&self) -> Result<&Arc<dyn PresenceRegistry>, ServiceError> {
        self.presence
            .registry
            .as_ref()
            .ok_or_else(|| ServiceError::Internal("presence is not configured".into()))
    }

    /// Publishes a presence event to the session's subscribers on every
    /// instance, and hands it to the observer.
    async fn emit(&self, event: Event) {
        if let Some(observer) = &self.presence.observer {
            observer.observe(&event);
        }
        self.bus.publish(BusMessage::Event { event }).await;
    }

    /// A connection to `session_id` opened (its read was authorized):
    /// registers it and, when it is the user's first and no leave of theirs
    /// was pending, publishes `presence_joined`. Returns whether it did.
    pub async fn presence_join(
        &self,
        session_id: SessionId,
        connection_id: &str,
        sub: &str,
        participant_id: Option<ParticipantId>,
    ) -> Result<bool, ServiceError> {
        let Some(registry) = &self.presence.registry else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let connection = PresenceConnection {
            session_id,
            connection_id: connection_id.to_owned(),
            sub: sub.to_owned(),
            participant_id,
            since_ms: now,
        };
        let first = registry.join(&connection, now, PRESENCE_LEASE_MS).await?;
        if first {
            let PresenceConnection {
                participant_id,
                connection_id,
                ..
            } = connection;
            self.emit(presence_event(
                session_id,
                EventType::PresenceJoined,
                sub,
                participant_id,
                &connection_id,
                now,
            ))
            .await;
        }
        Ok(first)
    }

    /// A connection closed: removed at once from the counts; its user's
    /// `presence_left` follows after the leave delay if it was their last
    /// (see [`Self::fire_presence_leave`]). Returns whether it was.
    pub async fn presence_leave(
        &self,
        session_id: SessionId,
        connection_id: &str,
    ) -> Result<bool, ServiceError> {
        let Some(registry) = &self.presence.registry else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let delay = self.presence.leave_delay_ms;
        let last = registry
            .leave(session_id, connection_id, now, delay)
            .await?;
        if let Some(due) = &self.presence.due {
            // The participant's absence, if this was its last connection,
            // is checked at once; the user's leave follows after the delay.
            due(now);
            if last {
                due(now.saturating_add(delay));
            }
        }
        Ok(last)
    }

    /// Extends the leases of this instance's connections.
    pub async fn presence_renew(
        &self,
        connections: &[(SessionId, String)],
    ) -> Result<(), ServiceError> {
        let Some(registry) = &self.presence.registry else {
            return Ok(());
        };
        if connections.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        Ok(registry.renew(connections, now, PRESENCE_LEASE_MS).await?)
    }

    /// Who is connected to a session, over every instance, for a caller
    /// allowed to read it.
    pub async fn presence(
        &self,
        actor: &Actor,
        id: SessionId,
    ) -> Result<PresenceSnapshot, ServiceError> {
        let (_, now) = self.load_authorized(actor, id, Action::Read).await?;
        Ok(self.registry()?.snapshot(id, now).await?)
    }

    /// Claims up to `limit` leaves due now, each for `lease_ms`, after
    /// sweeping the entries of dead instances (the worker's call; fire
    /// each with [`Self::fire_presence_leave`]).
    pub async fn claim_presence_leaves(
        &self,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<PendingLeave>, ServiceError> {
        let Some(registry) = &self.presence.registry else {
            return Ok(Vec::new());
        };
        let now = self.clock.now_ms();
        Ok(registry
            .claim_due_leaves(now, limit, lease_ms, self.presence.leave_delay_ms)
            .await?)
    }

    /// Publishes a claimed leave's `presence_left` (as of the instant the
    /// last connection closed) and drops it. A claimer that dies before
    /// the drop leaves it to another after the lease: the event may come
    /// twice, with the same `event_id`.
    pub async fn fire_presence_leave(&self, leave: PendingLeave) -> Result<(), ServiceError> {
        let registry = self.registry()?;
        let event = presence_event(
            leave.session_id,
            EventType::PresenceLeft,
            &leave.sub,
            leave.participant_id.clone(),
            &leave.sub,
            leave.left_at_ms,
        );
        self.emit(event).await;
        Ok(registry.finish_leave(&leave).await?)
    }

    /// Claims up to `limit` absences due for a check, each for `lease_ms`
    /// (the auto-pause worker's call; fire each with [`Self::fire_absence`]).
    pub async fn claim_absences(
        &self,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Absence>, ServiceError> {
        let Some(registry) = &self.presence.registry else {
            return Ok(Vec::new());
        };
        let now = self.clock.now_ms();
        Ok(registry.claim_due_absences(now, limit, lease_ms).await?)
    }

    /// Checks a claimed absence: pauses the session as of the instant it
    /// became due ([`Command::AutoPause`], through the one compare-and-set
    /// loop, so that two instances checking it commit once), then tells
    /// the registry when to check it again (a later resume gives the
    /// still-absent participant another full period), or drops it.
    pub async fn fire_absence(&self, absence: Absence) -> Result<AbsenceCheck, ServiceError> {
        let registry = self.registry()?;
        let id = absence.session_id;
        let command = Command::AutoPause {
            participant_id: absence.participant_id.clone(),
            absent_since_ms: absence.absent_since_ms,
        };
        let outcome = self
            .decide_and_commit(
                None,
                || async move {
                    match self.load_fresh(id).await? {
                        Some(state) => Ok(Continue(state)),
                        None => Ok(Break(None)),
                    }
                },
                |stored, now| match machine::decide(stored, &command, None, now) {
                    Ok(decision) => Ok(Continue(decision)),
                    Err(TransitionError::NothingDue) => {
                        Ok(Break(Some((next_check(Some(stored), &absence, now), None))))
                    }
                    Err(e) => Err(e.into()),
                },
                None,
                |done| {
                    let paused_at = done
                        .state
                        .status
                        .eq(&crate::session::Status::Paused)
                        .then_some(done.state.updated_at_ms);
                    Some((
                        next_check(Some(done.state), &absence, done.at_ms),
                        paused_at,
                    ))
                },
            )
            .await?;
        let (next, paused_at) = outcome.unwrap_or((None, None));
        match registry.reschedule_absence(&absence, next).await {
            Ok(()) | Err(StoreError::VersionConflict(_)) => {}
            Err(e) => {
                // The pause, if any, is committed; the absence is checked
                // again after its claim's lease.
                if paused_at.is_none() {
                    return Err(e.into());
                }
            }
        }
        Ok(match (paused_at, next) {
            (Some(at_ms), _) => AbsenceCheck::Paused { at_ms },
            (None, Some(next_check_ms)) => AbsenceCheck::Waiting { next_check_ms },
            (None, None) => AbsenceCheck::Dropped,
        })
    }
}
