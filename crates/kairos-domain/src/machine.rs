//! The state machine: one pure function of (state, command, now).
//!
//! [`decide`] first applies every deadline that passed before `now`, each as
//! of its own deadline and each as its own version (contract section 1), then
//! the command. Adapters never decide anything: they store what this returns.

use serde_json::{Map, Value};

use crate::config::SessionConfig;
use crate::event::{Event, EventType};
use crate::ids::{GroupId, ParticipantId, SessionId};

use crate::session::{Group, Participant, Session, Status, SyncMode, TimeoutKind};

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

/// Guard against unbounded catch-up: a `per_cycle` session with
/// `skip_cycle` and `auto_advance` produces one deadline per cycle forever.
/// The scheduler commits each as it comes; this bound only matters after a
/// very long outage, and then the rest is applied by the next call.
pub const MAX_CATCH_UP: usize = 10_000;

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

/// The instant the running clock reaches zero (or the stopwatch its limit),
/// if the session is running on a bounded clock. The scheduler's input.
pub fn next_deadline(s: &Session) -> Option<i64> {
    if s.status != Status::Running {
        return None;
    }
    let seg = s.segment_started_at_ms?;
    let remaining = settled_remaining(s)?;
    // A deadline past i64::MAX never comes; saturating it would expire a
    // clock at i64::MAX with time left on it.
    seg.checked_add(remaining.max(0))
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

    while let Some(deadline) = next_deadline(&s) {
        if deadline > now || fired.len() >= MAX_CATCH_UP {
            break;
        }
        if expired_participant_id.is_none() {
            expired_participant_id = s.active_participant().map(|p| p.id.clone());
        }
        apply_timeout(&mut s, deadline, &mut events);
        fired.push(deadline);
        intermediate.push(s.clone());
    }

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

/// The state as of `now` with every due deadline applied, without events:
/// what a read at `now` shows (versions included).
pub fn settle_deadlines(state: &Session, now: i64) -> std::borrow::Cow<'_, Session> {
    match next_deadline(state) {
        Some(d) if d <= now => {
            let mut s = state.clone();
            let mut sink = Vec::new();
            let mut n = 0;
            while let Some(d) = next_deadline(&s) {
                if d > now || n >= MAX_CATCH_UP {
                    break;
                }
                apply_timeout(&mut s, d, &mut sink);
                sink.clear();
                n += 1;
            }
            std::borrow::Cow::Owned(s)
        }
        _ => std::borrow::Cow::Borrowed(state),
    }
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

/// Applies the deadline `at` (which the caller knows is due).
fn apply_timeout(s: &mut Session, at: i64, events: &mut Vec<Event>) {
    settle(s, at);
    s.version += 1;
    s.updated_at_ms = s.updated_at_ms.max(at);
    let exhausted = s.active;
    // Charged only if another cycle begins; an ending session keeps it as
    // its stopped current cycle (see `Command::Complete`).
    let cycle = s.cycle_used_ms;
    let action = (s.action_on_timeout.kind == TimeoutKind::AutoAction)
        .then(|| s.action_on_timeout.action.clone())
        .flatten();
    let mut meta = Map::new();
    meta.insert("action_on_timeout".into(), s.action_on_timeout.to_json());
    let kind = s.action_on_timeout.kind;
    match s.sync_mode {
        SyncMode::Global | SyncMode::CountUp => {
            end_expired(s, exhausted, at, Some(cycle), action, meta, events);
            return;
        }
        SyncMode::PerCycle => {
            push_raw(
                s,
                events,
                EventType::CycleTimeout,
                exhausted,
                at,
                Some(0),
                Some(cycle),
                action.clone(),
                meta.clone(),
            );
        }
        SyncMode::PerParticipant | SyncMode::PerGroup => {
            if let Some(i) = exhausted {
                s.participants[i].has_expired = true;
                if let Some(g) = group_of(s, i) {
                    s.groups[g].has_expired = true;
                    // The whole group left the rotation, so its members did too.
                    let gid = s.groups[g].id.clone();
                    for p in &mut s.participants {
                        if p.group_id.as_ref() == Some(&gid) {
                            p.has_expired = true;
                        }
                    }
                }
            }
            push_raw(
                s,
                events,
                EventType::ParticipantExpired,
                exhausted,
                at,
                Some(0),
                Some(cycle),
                action.clone(),
                meta.clone(),
            );
        }
    }
    if kind == TimeoutKind::EndSession {
        end_expired(s, exhausted, at, None, action, meta, events);
        return;
    }
    match next_eligible(s) {
        None => end_expired(s, exhausted, at, None, action, meta, events),
        Some(next) => {
            charge_cycle(s, false);
            begin_cycle(s, Some(next), at);
            if !s.auto_advance {
                s.status = Status::Paused;
                s.segment_started_at_ms = None;
                let pid = s.active;
                push_event(s, events, EventType::SessionPaused, pid, at, Map::new());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // One call site per event kind; a struct would only rename them.
fn end_expired(
    s: &mut Session,
    who: Option<usize>,
    at: i64,
    cycle: Option<i64>,
    action: Option<String>,
    meta: Map<String, Value>,
    events: &mut Vec<Event>,
) {
    s.status = Status::Expired;
    s.segment_started_at_ms = None;
    s.session_completed_at_ms = Some(at);
    let remaining = if matches!(s.sync_mode, SyncMode::Global | SyncMode::CountUp) {
        Some(0)
    } else {
        None
    };
    push_raw(
        s,
        events,
        EventType::SessionExpired,
        who,
        at,
        remaining,
        cycle,
        action,
        meta,
    );
}

/// Folds the running segment up to `at` into the cycle and the session's running time.
fn settle(s: &mut Session, at: i64) {
    if let Some(seg) = s.segment_started_at_ms {
        let d = at.saturating_sub(seg).max(0);
        s.cycle_used_ms = s.cycle_used_ms.saturating_add(d);
        s.elapsed_ms = s.elapsed_ms.saturating_add(d);
        s.segment_started_at_ms = Some(seg.max(at));
    }
}

/// Charges the settled cycle to whoever played it; with `increment`, adds the
/// increment to the bank that ran (per_participant, per_group). Returns the cycle's length.
fn charge_cycle(s: &mut Session, increment: bool) -> i64 {
    let cycle = std::mem::take(&mut s.cycle_used_ms);
    let cap = s.max_time_ms;
    let inc = if increment { s.increment_ms } else { 0 };
    let add_bank = |bank: i64| -> i64 {
        let raised = bank.saturating_add(inc);
        // Never above the cap, and an increment never lowers a bank.
        cap.map_or(raised, |c| raised.min(c).max(bank))
    };
    if let Some(i) = s.active {
        let p = &mut s.participants[i];
        p.time_used_ms = p.time_used_ms.saturating_add(cycle);
        if s.sync_mode == SyncMode::PerParticipant {
            p.total_time_ms = add_bank(p.total_time_ms);
        }
    }
    if s.sync_mode == SyncMode::PerGroup
        && let Some(g) = s.active_group
    {
        let g = &mut s.groups[g];
        g.time_used_ms = g.time_used_ms.saturating_add(cycle);
        g.total_time_ms = add_bank(g.total_time_ms);
    }
    cycle
}

/// Makes `next` active and starts its cycle at `at`.
fn begin_cycle(s: &mut Session, next: Option<usize>, at: i64) {
    s.active = next;
    s.cycle_used_ms = 0;
    s.cycle_started_at_ms = Some(at);
    if s.status == Status::Running {
        s.segment_started_at_ms = Some(at);
    }
    if let Some(i) = next {
        s.participants[i].cycle_count = s.participants[i].cycle_count.saturating_add(1);
        s.active_group = group_of(s, i);
        if let Some(g) = s.active_group {
            s.groups[g].last_member = Some(i);
        }
    }
}

fn group_of(s: &Session, participant: usize) -> Option<usize> {
    if s.sync_mode != SyncMode::PerGroup {
        return None;
    }
    let gid = s.participants.get(participant)?.group_id.as_ref()?;
    s.group_position(gid)
}

/// Remaining time of the running clock with the current segment settled
/// (not counting it); `None` for an unbounded stopwatch.
fn settled_remaining(s: &Session) -> Option<i64> {
    match s.sync_mode {
        SyncMode::PerParticipant => s
            .active_participant()
            .map(|p| bank_left(p.total_time_ms, p.time_used_ms, s.cycle_used_ms)),
        SyncMode::PerCycle => s
            .time_per_cycle_ms
            .map(|t| t.saturating_sub(s.cycle_used_ms)),
        SyncMode::PerGroup => s
            .active_group()
            .map(|g| bank_left(g.total_time_ms, g.time_used_ms, s.cycle_used_ms)),
        SyncMode::Global => s.total_time_ms.map(|t| t.saturating_sub(s.elapsed_ms)),
        SyncMode::CountUp => s.max_time_ms.map(|m| m.saturating_sub(s.elapsed_ms)),
    }
}

fn bank_left(bank: i64, used: i64, cycle: i64) -> i64 {
    bank.saturating_sub(used).saturating_sub(cycle)
}

/// What is left on the clock of the participant whose cycle just ended.
fn ended_clock_remaining(s: &Session, who: Option<usize>, cycle: i64) -> Option<i64> {
    let p = s.participants.get(who?)?;
    Some(
        match s.sync_mode {
            SyncMode::PerParticipant => p.total_time_ms.saturating_sub(p.time_used_ms),
            SyncMode::PerCycle => s.time_per_cycle_ms.unwrap_or(0).saturating_sub(cycle),
            SyncMode::PerGroup => {
                let g = group_of(s, who?)?;
                let g = &s.groups[g];
                g.total_time_ms.saturating_sub(g.time_used_ms)
            }
            SyncMode::Global => s.total_time_ms.unwrap_or(0).saturating_sub(s.elapsed_ms),
            SyncMode::CountUp => {
                return s.max_time_ms.map(|m| m.saturating_sub(s.elapsed_ms).max(0));
            }
        }
        .max(0),
    )
}

fn eligible(s: &Session, i: usize) -> bool {
    !s.participants[i].has_expired && group_of(s, i).is_none_or(|g| !s.groups[g].has_expired)
}

fn first_eligible(s: &Session) -> Option<usize> {
    if s.sync_mode == SyncMode::PerGroup {
        let g = s.groups.iter().position(|g| !g.has_expired)?;
        return next_member(s, g);
    }
    (0..s.participants.len()).find(|&i| eligible(s, i))
}

/// The next participant in rotation after the active one, wrapping around
/// (the active one itself comes last), skipping whoever has expired.
fn next_eligible(s: &Session) -> Option<usize> {
    if s.sync_mode == SyncMode::PerGroup {
        let n = s.groups.len();
        let start = s.active_group.map_or(0, |g| g + 1);
        return (0..n)
            .map(|k| (start + k) % n)
            .find(|&g| !s.groups[g].has_expired)
            .and_then(|g| next_member(s, g));
    }
    let n = s.participants.len();
    let start = s.active.map_or(0, |i| i + 1);
    (0..n).map(|k| (start + k) % n).find(|&i| eligible(s, i))
}

/// The member of group `g` after the one who played last, round-robin.
fn next_member(s: &Session, g: usize) -> Option<usize> {
    let gid = &s.groups[g].id;
    let members: Vec<usize> = (0..s.participants.len())
        .filter(|&i| s.participants[i].group_id.as_ref() == Some(gid))
        .collect();
    let after = s.groups[g]
        .last_member
        .and_then(|last| members.iter().position(|&m| m == last))
        .map_or(0, |pos| pos + 1);
    members.get(after % members.len().max(1)).copied()
}

fn push_event(
    s: &Session,
    events: &mut Vec<Event>,
    ty: EventType,
    who: Option<usize>,
    at: i64,
    meta: Map<String, Value>,
) {
    let remaining = crate::view::clock_remaining_for(s, who, at);
    push_raw(s, events, ty, who, at, remaining, None, None, meta);
}

#[allow(clippy::too_many_arguments)] // The event's fields, named at each call.
fn push_raw(
    s: &Session,
    events: &mut Vec<Event>,
    ty: EventType,
    who: Option<usize>,
    at: i64,
    remaining: Option<i64>,
    elapsed: Option<i64>,
    action: Option<String>,
    metadata: Map<String, Value>,
) {
    let seq = events.iter().filter(|e| e.version == s.version).count();
    let participant = who.and_then(|i| s.participants.get(i));
    let group_id: Option<GroupId> = who
        .and_then(|i| group_of(s, i))
        .map(|g| s.groups[g].id.clone())
        .or_else(|| participant.and_then(|p| p.group_id.clone()));
    events.push(Event {
        event_id: Event::make_id(s.id, s.created_at_ms, s.version, seq),
        session_id: s.id,
        version: s.version,
        event_type: ty,
        participant_id: participant.map(|p| p.id.clone()),
        group_id,
        at_ms: at,
        time_remaining_ms: remaining,
        time_elapsed_ms: elapsed,
        action,
        metadata,
    });
}
