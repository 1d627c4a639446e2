//! The state machine: one pure function of (state, command, now).
//!
//! [`decide`] first applies every deadline that passed before `now`, each as
//! of its own deadline and each as its own version (contract section 1), then
//! the command. Adapters never decide anything: they store what this returns.
//!
//! The numbers (time used and left, deadlines) and what a timeout does come
//! from the time model, `clock`; who plays next from `rotation`. This module
//! adds the client commands on top. [`next_deadline`], [`settle_deadlines`]
//! and [`MAX_CATCH_UP`] are re-exported from `clock` so callers keep one path.

use serde_json::Map;

use crate::clock::{catch_up, charge_cycle, ended_clock_remaining, push_event, push_raw, settle};
use crate::config::SessionConfig;
use crate::event::{Event, EventType};
use crate::ids::{ParticipantId, SessionId};
use crate::rotation::{begin_cycle, first_eligible, group_of, next_eligible};
use crate::session::{Group, Participant, Session, Status, SyncMode};

pub use crate::clock::{MAX_CATCH_UP, next_deadline, settle_deadlines};

/// A state-changing command. `Timeout` is what the scheduler sends when a
/// deadline is due; the others come from clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `pending` → `running`: the first participant's cycle starts.
    Start,
    /// Ends the active cycle; `next` names the next participant, else rotation order.
    Switch {
        /// Who plays next (must exist and not have expired).
        next: Option<ParticipantId>,
    },
    /// `running` → `paused`.
    Pause,
    /// `paused` → `running`.
    Resume,
    /// Ends the session as `completed`.
    Complete,
    /// Ends the session as `cancelled`.
    Cancel,
    /// Applies the deadlines that are due; fails with [`TransitionError::NothingDue`] if none is.
    Timeout,
}

impl Command {
    /// The command's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Switch { .. } => "switch",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Complete => "complete",
            Self::Cancel => "cancel",
            Self::Timeout => "timeout",
        }
    }
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The command is not allowed in this status.
    #[error("cannot {command} a session that is {}", status.as_str())]
    InvalidTransition {
        /// The session's status (after due deadlines were applied).
        status: Status,
        /// The refused command.
        command: &'static str,
    },
    /// `next_participant_id` names nobody in the session.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// `next_participant_id` names a participant (or group) that has left the rotation.
    #[error("participant {0} has expired and left the rotation")]
    ParticipantExpired(ParticipantId),
    /// `expected_version` differs from the session's version.
    #[error("expected version {expected}, the session is at version {actual}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// What the session is at.
        actual: u64,
    },
    /// A `Timeout` command found no deadline due.
    #[error("no deadline is due")]
    NothingDue,
}

/// What [`decide`] produced: the new state and everything that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state to commit.
    pub state: Session,
    /// Every event, in version order.
    pub events: Vec<Event>,
    /// States of the intermediate versions (deadlines applied before the
    /// command), so subscribers can be sent every version in order.
    pub intermediate: Vec<Session>,
    /// The participant whose clock the command found run out, if any.
    pub expired_participant_id: Option<ParticipantId>,
    /// The deadlines applied, in order (for lateness metrics).
    pub fired_deadlines: Vec<i64>,
}

/// Builds the state of a new session (version 1) and its `session_created` event.
///
/// ```
/// use kairos_domain::{machine, SessionConfig, SessionId, Status};
/// let cfg = SessionConfig::parse(&serde_json::json!({
///     "sync_mode": "per_participant",
///     "participants": [{"participant_id": "white", "total_time_ms": 300000},
///                      {"participant_id": "black", "total_time_ms": 300000}]
/// })).unwrap();
/// let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// let (session, event) = machine::create(cfg, id, None, 1_000);
/// assert_eq!(session.status, Status::Pending);
/// assert_eq!(session.version, 1);
/// assert_eq!(event.event_type.as_str(), "session_created");
/// ```
pub fn create(
    config: SessionConfig,
    id: SessionId,
    owner: Option<String>,
    now: i64,
) -> (Session, Event) {
    let groups: Vec<Group> = config
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| Group {
            id: g.id.clone(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            total_time_ms: g.total_time_ms,
            time_used_ms: 0,
            has_expired: false,
            last_member: None,
        })
        .collect();
    let participants = config
        .participants
        .into_iter()
        .map(|p| {
            // Only per_participant banks are required; elsewhere the bank
            // shown is the clock the participant plays on.
            let default_bank = match config.sync_mode {
                SyncMode::PerParticipant => 0,
                SyncMode::PerCycle => config.time_per_cycle_ms.unwrap_or(0),
                SyncMode::PerGroup => p
                    .group_id
                    .as_ref()
                    .and_then(|g| config.groups.iter().find(|c| &c.id == g))
                    .map_or(0, |g| g.total_time_ms),
                SyncMode::Global => config.total_time_ms.unwrap_or(0),
                SyncMode::CountUp => config.max_time_ms.unwrap_or(0),
            };
            Participant {
                id: p.id,
                index: p.index,
                group_id: p.group_id,
                total_time_ms: p.total_time_ms.unwrap_or(default_bank),
                time_used_ms: 0,
                cycle_count: 0,
                has_expired: false,
            }
        })
        .collect();
    let mut s = Session {
        id,
        sync_mode: config.sync_mode,
        status: Status::Pending,
        version: 1,
        participants,
        groups,
        active: None,
        active_group: None,
        total_time_ms: config.total_time_ms,
        time_per_cycle_ms: config.time_per_cycle_ms,
        increment_ms: config.increment_ms,
        max_time_ms: config.max_time_ms,
        action_on_timeout: config.action_on_timeout,
        auto_advance: config.auto_advance,
        metadata: config.metadata,
        owner,
        elapsed_ms: 0,
        cycle_used_ms: 0,
        segment_started_at_ms: None,
        cycle_started_at_ms: None,
        session_started_at_ms: None,
        session_completed_at_ms: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    // Show who will play first before the start.
    s.active = first_eligible(&s);
    s.active_group = s.active.and_then(|i| group_of(&s, i));
    let mut events = Vec::new();
    let mut meta = Map::new();
    meta.insert("sync_mode".into(), s.sync_mode.as_str().into());
    push_event(&s, &mut events, EventType::SessionCreated, None, now, meta);
    let event = events.remove(0);
    (s, event)
}

/// Applies `command` to `state` at `now`: due deadlines first (each as of its
/// deadline), then the optimistic-lock check, then the command.
///
/// A `Switch` without `expected_version` that finds the active clock already
/// run out is judged as of the deadline (contract section 1): the timeout is
/// applied and the switch itself is not, so it cannot give the increment to,
/// or end the fresh cycle of, somebody who did not press.
pub fn decide(
    state: &Session,
    command: &Command,
    expected_version: Option<u64>,
    now: i64,
) -> Result<Decision, TransitionError> {
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut intermediate = Vec::new();
    let mut fired = Vec::new();
    let mut expired_participant_id = None;

    catch_up(&mut s, now, &mut events, |s, _, applied| {
        if expired_participant_id.is_none() {
            expired_participant_id = applied
                .exhausted
                .and_then(|i| s.participants.get(i))
                .map(|p| p.id.clone());
        }
        fired.push(applied.at);
        intermediate.push(s.clone());
    });

    if let Some(expected) = expected_version
        && expected != s.version
    {
        return Err(TransitionError::Conflict {
            expected,
            actual: s.version,
        });
    }

    let absorbed = match command {
        Command::Timeout if fired.is_empty() => return Err(TransitionError::NothingDue),
        Command::Timeout => true,
        Command::Switch { .. } => !fired.is_empty() && expected_version.is_none(),
        _ => false,
    };
    if absorbed {
        // The last intermediate state is the final one.
        intermediate.pop();
    } else {
        apply_command(&mut s, command, now, &mut events)?;
    }
    Ok(Decision {
        state: s,
        events,
        intermediate,
        expired_participant_id,
        fired_deadlines: fired,
    })
}

fn invalid(s: &Session, command: &Command) -> TransitionError {
    TransitionError::InvalidTransition {
        status: s.status,
        command: command.name(),
    }
}

fn apply_command(
    s: &mut Session,
    command: &Command,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<(), TransitionError> {
    // Time never runs backwards inside a session, even if a clock stepped back.
    let now = now.max(s.updated_at_ms);
    match command {
        Command::Start => {
            if s.status != Status::Pending {
                return Err(invalid(s, command));
            }
            bump(s, now);
            s.status = Status::Running;
            s.session_started_at_ms = Some(now);
            s.segment_started_at_ms = Some(now);
            let first = first_eligible(s);
            begin_cycle(s, first, now);
            let pid = s.active;
            push_event(s, events, EventType::SessionStarted, pid, now, Map::new());
        }
        Command::Switch { next } => {
            if s.status != Status::Running {
                return Err(invalid(s, command));
            }
            let chosen = match next {
                Some(id) => Some(check_next(s, id)?),
                None => None,
            };
            settle(s, now);
            let ended = s.active;
            let cycle = charge_cycle(s, true);
            let target = chosen.or_else(|| next_eligible(s));
            begin_cycle(s, target, now);
            bump(s, now);
            let mut meta = Map::new();
            if let Some(p) = s.active_participant() {
                meta.insert("next_participant_id".into(), p.id.as_str().into());
            }
            let remaining = ended_clock_remaining(s, ended, cycle);
            push_raw(
                s,
                events,
                EventType::CycleSwitched,
                ended,
                now,
                remaining,
                Some(cycle),
                None,
                meta,
            );
        }
        Command::Pause => {
            if s.status != Status::Running {
                return Err(invalid(s, command));
            }
            bump(s, now);
            settle(s, now);
            s.segment_started_at_ms = None;
            s.status = Status::Paused;
            let pid = s.active;
            push_event(s, events, EventType::SessionPaused, pid, now, Map::new());
        }
        Command::Resume => {
            if s.status != Status::Paused {
                return Err(invalid(s, command));
            }
            bump(s, now);
            s.status = Status::Running;
            s.segment_started_at_ms = Some(now);
            if s.cycle_used_ms == 0 {
                // A cycle that had not begun (after a skipped timeout) begins now.
                s.cycle_started_at_ms = Some(now);
            }
            let pid = s.active;
            push_event(s, events, EventType::SessionResumed, pid, now, Map::new());
        }
        Command::Complete | Command::Cancel => {
            if s.status.is_ended() {
                return Err(invalid(s, command));
            }
            bump(s, now);
            settle(s, now);
            // The last cycle stays the current one, stopped (not charged):
            // views add it for the active participant, so in `per_cycle`
            // what was left of it stays visible instead of a fresh cycle.
            s.segment_started_at_ms = None;
            s.session_completed_at_ms = Some(now);
            let (status, ty) = if *command == Command::Complete {
                (Status::Completed, EventType::SessionCompleted)
            } else {
                (Status::Cancelled, EventType::SessionCancelled)
            };
            s.status = status;
            let pid = s.active;
            push_event(s, events, ty, pid, now, Map::new());
        }
        Command::Timeout => return Err(TransitionError::NothingDue),
    }
    Ok(())
}

/// Every state change raises the version by exactly one.
fn bump(s: &mut Session, now: i64) {
    s.version += 1;
    s.updated_at_ms = s.updated_at_ms.max(now);
}

fn check_next(s: &Session, id: &ParticipantId) -> Result<usize, TransitionError> {
    let i = s
        .participant_position(id)
        .ok_or_else(|| TransitionError::UnknownParticipant(id.clone()))?;
    let expired =
        s.participants[i].has_expired || group_of(s, i).is_some_and(|g| s.groups[g].has_expired);
    if expired {
        return Err(TransitionError::ParticipantExpired(id.clone()));
    }
    Ok(i)
}
