//! The state machine: one pure function of (state, command, now).
//!
//! [`decide`] first applies every deadline that passed before `now`, each as
//! of its own deadline and each as its own version (contract section 1), then
//! the command. Adapters never decide anything: they store what this returns.
//!
//! The numbers (time used and left, deadlines) and what a timeout does come
//! from the time model, `clock`; who plays next from `rotation`. This module
//! adds the client commands on top, `AddTime` included, and the one rule of
//! a lag grace that needs the command: a switch whose compensated charge
//! leaves time is a move; any other command in the grace finds the clock
//! run out as of the instant it did. [`next_deadline`], [`next_due`],
//! [`settle_deadlines`] and [`MAX_CATCH_UP`] are re-exported from `clock` so
//! callers keep one path.

use serde_json::Map;

use crate::clock::{
    DueKind, Elapsed, LAG_QUOTA_START_GAINS, begin_turn, catch_up, charge_cycle,
    ended_clock_remaining, event_remaining, lag_gain_ms, push_event, push_raw, raise_bank, settle,
    start_session, switch_leaves_time,
};
use crate::config::{
    ADD_TIME_RANGE_MS, FieldError, Joiner, MAX_PARTICIPANTS, ParticipantConfig, SessionConfig,
};
use crate::event::{Event, EventType};
use crate::ids::{GroupId, ParticipantId, SessionId};
use crate::rotation::{
    eligible, eligible_from, first_eligible, group_of, insert_participant, next_eligible,
    remove_participant, shift_room,
};
use crate::session::{Group, Participant, Session, Status, SyncMode};

pub use crate::clock::{MAX_CATCH_UP, next_deadline, next_due, settle_deadlines};

/// The ms of an `add_time` command: 1..=3600000
/// ([`ADD_TIME_RANGE_MS`]); only [`AddMs::new`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddMs(i64);

impl AddMs {
    /// `ms` if it is within [`ADD_TIME_RANGE_MS`].
    pub fn new(ms: i64) -> Option<Self> {
        ADD_TIME_RANGE_MS.contains(&ms).then_some(Self(ms))
    }

    /// The value.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Whose bank an `add_time` command raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddTarget {
    /// A participant's bank (in `per_group`, the bank of its group; in
    /// `global`, the session's).
    Participant(ParticipantId),
    /// A group's bank (`per_group`).
    Group(GroupId),
}

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
        /// The network delay the client measured for this move, in ms
        /// (0..=10000, [`crate::config::LAG_RANGE_MS`], checked where the
        /// switch is parsed); used only with lag compensation on.
        lag_ms: Option<u32>,
    },
    /// The arbiter's "two more minutes" (owner or admin): adds `ms` to a
    /// bank (capped at `max_time_ms`) in any status but ended; one version
    /// and a `time_added` event. `per_participant`, `per_group` and
    /// `global` only (the modes with a bank to add to).
    AddTime {
        /// Whose bank.
        target: AddTarget,
        /// How much.
        ms: AddMs,
        /// Why, echoed in the event's metadata.
        reason: Option<String>,
    },
    /// A participant joins (contract section 9): at the end of the rotation
    /// or at its `participant_index` (those at or after it move up by one),
    /// in any status but ended; owner or admin. An existing id is
    /// [`TransitionError::ParticipantExists`]; a bank missing in
    /// `per_participant`, a group missing or unknown in `per_group`, or a
    /// full session is [`TransitionError::InvalidParticipant`]. One version
    /// and a `participant_joined` event. The running turn goes on; in a
    /// pending session the first to play is recomputed; a running or paused
    /// session with nobody active (`global` or `count_up` started empty)
    /// makes the joiner active, its turn starting now.
    Join(Joiner),
    /// A participant leaves (contract section 9), in any status but ended;
    /// owner or admin. The ones after it move down by one index. If its
    /// turn was on (running or paused), the turn's time is charged as the
    /// clock shows it (as a timeout charges, not a move: no increment, no
    /// stage, no lag compensation) and the next eligible participant in
    /// rotation order (as a switch picks it) begins its turn at that
    /// instant. A session left with nobody eligible completes. One version:
    /// `participant_left`, and `session_completed` when it ends the session.
    Leave {
        /// Who leaves (must exist).
        participant_id: ParticipantId,
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
    /// The system's pause of contract section 9: `participant_id` has had
    /// no connection since `absent_since_ms`. Pauses the session as of
    /// [`crate::presence::auto_pause_due`] (deadlines before that instant
    /// first, each as of its own), with `metadata.reason` =
    /// `disconnected`; [`TransitionError::NothingDue`] when that is not
    /// due by `now` (not running, not its turn, not long enough, already
    /// paused by another instance). Never sent by a client.
    AutoPause {
        /// The absent participant.
        participant_id: ParticipantId,
        /// When its last connection closed.
        absent_since_ms: i64,
    },
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
            Self::AddTime { .. } => "add_time",
            Self::Join(_) => "join",
            Self::Leave { .. } => "leave",
            Self::Timeout => "timeout",
            Self::AutoPause { .. } => "auto_pause",
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
    /// A joining participant's id is already in the session (contract
    /// section 9: 409).
    #[error("participant {0} is already in the session")]
    ParticipantExists(ParticipantId),
    /// A joining participant breaks a rule that needs the session (a bank
    /// in `per_participant`, a known group in `per_group`, room for one
    /// more): each field named, as a config's violations are.
    #[error("the participant is invalid for this session: {} field(s)", .0.len())]
    InvalidParticipant(Vec<FieldError>),
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
            stage_index: 0,
            stage_moves: 0,
        })
        .collect();
    let mut s = Session {
        id,
        sync_mode: config.sync_mode,
        status: Status::Pending,
        version: 1,
        participants: Vec::new(),
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
        stages: config.stages,
        delay_ms: config.delay_ms,
        delay_mode: config.delay_mode,
        lag_compensation: config.lag_compensation,
        warnings_ms: config.warnings_ms,
        warned_ms: Vec::new(),
        start_at_ms: config.start_at_ms,
        auto_pause_on_disconnect_ms: config.auto_pause_on_disconnect_ms,
    };
    s.participants = config
        .participants
        .into_iter()
        .map(|p| new_participant(&s, p))
        .collect();
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

/// A participant's stored clock as it enters the session (at create or
/// when it joins). Only `per_participant` banks are required; elsewhere the
/// bank shown is the clock the participant plays on.
fn new_participant(s: &Session, p: ParticipantConfig) -> Participant {
    let default_bank = match s.sync_mode {
        SyncMode::PerParticipant => 0,
        SyncMode::PerCycle => s.time_per_cycle_ms.unwrap_or(0),
        SyncMode::PerGroup => p
            .group_id
            .as_ref()
            .and_then(|g| s.group_position(g))
            .map_or(0, |g| s.groups[g].total_time_ms),
        SyncMode::Global => s.total_time_ms.unwrap_or(0),
        SyncMode::CountUp => s.max_time_ms.unwrap_or(0),
    };
    let total_time_ms = p.total_time_ms.unwrap_or(default_bank);
    // E is taken on the bank this participant plays on, first stage.
    let first_increment = s
        .stages
        .first()
        .map_or(s.increment_ms, |st| st.increment_ms);
    let lag_gain_ms = if s.lag_compensation {
        lag_gain_ms(default_bank.max(total_time_ms), first_increment)
    } else {
        0
    };
    Participant {
        id: p.id,
        index: p.index,
        group_id: p.group_id,
        total_time_ms,
        time_used_ms: 0,
        cycle_count: 0,
        has_expired: false,
        stage_index: 0,
        stage_moves: 0,
        lag_quota_ms: lag_gain_ms.saturating_mul(LAG_QUOTA_START_GAINS),
        lag_gain_ms,
    }
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
    if let Command::AutoPause {
        participant_id,
        absent_since_ms,
    } = command
    {
        return auto_pause(
            state,
            participant_id,
            *absent_since_ms,
            expected_version,
            now,
        );
    }
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut intermediate = Vec::new();
    let mut fired = Vec::new();
    let mut expired_participant_id = None;

    let mut expiries = 0usize;
    let mut scheduled_start = false;
    let mut record = |s: &Session, _: &mut Vec<Event>, applied: crate::clock::Fired| {
        if expired_participant_id.is_none() {
            expired_participant_id = applied
                .exhausted
                .and_then(|i| s.participants.get(i))
                .map(|p| p.id.clone());
        }
        match applied.kind {
            DueKind::Expiry => expiries += 1,
            DueKind::ScheduledStart => scheduled_start = true,
            DueKind::Warning(_) => {}
        }
        fired.push(applied.at);
        intermediate.push(s.clone());
    };
    catch_up(&mut s, now, false, &mut events, &mut record);
    // Inside a lag compensation grace only a switch whose compensated
    // charge leaves time is taken as made in time; anything else finds the
    // clock run out, as of the instant it did.
    let in_grace = next_due(&s)
        .is_some_and(|d| d.kind == DueKind::Expiry && d.effect_at <= now && now < d.fire_at);
    let survives = match command {
        Command::Switch { lag_ms, .. } => switch_leaves_time(&s, *lag_ms, now),
        // The scheduler applies what a read at `now` shows, no more.
        Command::Timeout => true,
        _ => false,
    };
    if in_grace && !survives {
        catch_up(&mut s, now, true, &mut events, &mut record);
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
        Command::Switch { .. } => expiries > 0 && expected_version.is_none(),
        // A start that finds the scheduled start passed: it started then.
        Command::Start => scheduled_start && expected_version.is_none(),
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
            start_session(s, now, false, events);
        }
        Command::Switch { next, lag_ms } => {
            if s.status != Status::Running {
                return Err(invalid(s, command));
            }
            let chosen = match next {
                Some(id) => Some(check_next(s, id)?),
                None => None,
            };
            settle(s, now);
            let ended = s.active;
            let charged = charge_cycle(s, Some(*lag_ms));
            let cycle = charged.cycle;
            let target = chosen.or_else(|| next_eligible(s));
            begin_turn(s, target, now);
            bump(s, now);
            let mut meta = Map::new();
            if let Some(p) = s.active_participant() {
                meta.insert("next_participant_id".into(), p.id.as_str().into());
            }
            if s.lag_compensation {
                meta.insert("lag_compensated_ms".into(), charged.lag_compensated.into());
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
        Command::AddTime { target, ms, reason } => {
            if s.status.is_ended() {
                return Err(invalid(s, command));
            }
            add_time(s, command, target, *ms, reason.as_deref(), now, events)?;
        }
        Command::Join(joiner) => {
            if s.status.is_ended() {
                return Err(invalid(s, command));
            }
            join(s, joiner, now, events)?;
        }
        Command::Leave { participant_id } => {
            if s.status.is_ended() {
                return Err(invalid(s, command));
            }
            let i = s
                .participant_position(participant_id)
                .ok_or_else(|| TransitionError::UnknownParticipant(participant_id.clone()))?;
            leave(s, i, now, events);
        }
        Command::Timeout | Command::AutoPause { .. } => return Err(TransitionError::NothingDue),
    }
    Ok(())
}

/// `Join`: checks the joiner against the session, then puts it into the
/// rotation (see [`Command::Join`]).
fn join(
    s: &mut Session,
    joiner: &Joiner,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<(), TransitionError> {
    if s.participant_position(&joiner.id).is_some() {
        return Err(TransitionError::ParticipantExists(joiner.id.clone()));
    }
    let mut errors = Vec::new();
    if s.participants.len() >= MAX_PARTICIPANTS {
        errors.push(FieldError::new(
            "participants",
            format!(
                "the session already has {MAX_PARTICIPANTS} participants, the most it may hold"
            ),
        ));
    }
    if s.sync_mode == SyncMode::PerParticipant && joiner.total_time_ms.is_none() {
        errors.push(FieldError::new(
            "total_time_ms",
            "is required in per_participant mode",
        ));
    }
    let group = match (&joiner.group_id, s.sync_mode) {
        (None, SyncMode::PerGroup) => {
            errors.push(FieldError::new("group_id", "is required in per_group mode"));
            None
        }
        (Some(g), SyncMode::PerGroup) => {
            let found = s.group_position(g);
            if found.is_none() {
                errors.push(FieldError::new(
                    "group_id",
                    format!("names no group of this session: {g}"),
                ));
            }
            found
        }
        _ => None,
    };
    let end = s
        .participants
        .last()
        .map_or(Some(0), |last| last.index.checked_add(1));
    let index = match (joiner.index, end) {
        (Some(k), _) if shift_room(s, k) => Some(k),
        (None, Some(end)) => Some(end),
        _ => {
            errors.push(FieldError::new(
                "participant_index",
                "leaves no room in the rotation (indexes are at most 4294967295)",
            ));
            None
        }
    };
    let Some(index) = index.filter(|_| errors.is_empty()) else {
        return Err(TransitionError::InvalidParticipant(errors));
    };
    let mut p = new_participant(
        s,
        ParticipantConfig {
            id: joiner.id.clone(),
            index,
            total_time_ms: joiner.total_time_ms,
            group_id: joiner.group_id.clone(),
        },
    );
    // A member of a group that ran out is out of the rotation with it.
    p.has_expired = group.is_some_and(|g| s.groups[g].has_expired);
    let at = insert_participant(s, p);
    bump(s, now);
    match s.status {
        // Who plays first may be the joiner.
        Status::Pending => {
            s.active = first_eligible(s);
            s.active_group = s.active.and_then(|i| group_of(s, i));
        }
        // Nobody's turn was on (an empty `global` or `count_up`): the
        // joiner's begins now.
        _ if s.active.is_none() && eligible(s, at) => {
            settle(s, now);
            begin_turn(s, Some(at), now);
        }
        _ => {}
    }
    let mut meta = Map::new();
    meta.insert("index".into(), index.into());
    push_event(s, events, EventType::ParticipantJoined, Some(at), now, meta);
    Ok(())
}

/// `Leave`: takes participant `i` out of the rotation (see [`Command::Leave`]).
fn leave(s: &mut Session, i: usize, now: i64, events: &mut Vec<Event>) {
    let turn_on = matches!(s.status, Status::Running | Status::Paused) && s.active == Some(i);
    settle(s, now);
    let (charged, remaining) = if turn_on {
        // Charged as the clock shows it: a `simple` delay is not.
        let charged = Elapsed::at(s, now).charge;
        let cycle = charge_cycle(s, None).cycle;
        (Some(charged), ended_clock_remaining(s, Some(i), cycle))
    } else {
        (None, event_remaining(s, Some(i), now))
    };
    bump(s, now);
    let left = s.participants[i].id.clone();
    let group_id = s.participants[i].group_id.clone();
    let mut meta = Map::new();
    remove_participant(s, i);
    if turn_on {
        // Position `i` now holds the one after the leaver; in `per_group`
        // the active group still marks where the rotation stands.
        let next = if s.sync_mode == SyncMode::PerGroup {
            next_eligible(s)
        } else {
            eligible_from(s, i)
        };
        begin_turn(s, next, now);
        if let Some(p) = s.active_participant() {
            meta.insert("next_participant_id".into(), p.id.as_str().into());
        }
    } else if s.status == Status::Pending {
        s.active = first_eligible(s);
        s.active_group = s.active.and_then(|i| group_of(s, i));
    }
    push_raw(
        s,
        events,
        EventType::ParticipantLeft,
        None,
        now,
        remaining,
        charged,
        None,
        meta,
    );
    if let Some(ev) = events.last_mut() {
        ev.participant_id = Some(left);
        ev.group_id = group_id;
    }
    if first_eligible(s).is_none() {
        // Nobody left to play: the session completes, in the same version.
        s.active = None;
        s.active_group = None;
        s.segment_started_at_ms = None;
        s.session_completed_at_ms = Some(now);
        s.status = Status::Completed;
        push_event(
            s,
            events,
            EventType::SessionCompleted,
            None,
            now,
            Map::new(),
        );
    }
}

/// [`Command::AutoPause`]: finds the instant the absence pauses the
/// session, applying first every deadline due up to it (an expiry may end
/// the turn, then the pause is not due, or start a new segment, then the
/// instant moves), and pauses as of that instant. A later change already
/// committed (the scheduler applied a warning after it) moves the pause
/// to that change's instant: time never runs backwards inside a session.
fn auto_pause(
    state: &Session,
    participant_id: &ParticipantId,
    absent_since_ms: i64,
    expected_version: Option<u64>,
    now: i64,
) -> Result<Decision, TransitionError> {
    let mut s = state.clone();
    let mut events = Vec::new();
    let mut intermediate = Vec::new();
    let mut fired = Vec::new();
    let mut expired_participant_id = None;
    let mut record = |s: &Session, _: &mut Vec<Event>, applied: crate::clock::Fired| {
        if expired_participant_id.is_none() {
            expired_participant_id = applied
                .exhausted
                .and_then(|i| s.participants.get(i))
                .map(|p| p.id.clone());
        }
        fired.push(applied.at);
        intermediate.push(s.clone());
    };
    let mut at = None;
    // Each round applies at least one deadline or ends: bounded like the
    // catch-up loop itself.
    for _ in 0..=MAX_CATCH_UP {
        let due = crate::presence::auto_pause_due(&s, participant_id, absent_since_ms)
            .filter(|&due| due <= now)
            .ok_or(TransitionError::NothingDue)?;
        let before = s.version;
        catch_up(&mut s, due, false, &mut events, &mut record);
        if s.version == before {
            at = Some(due);
            break;
        }
    }
    let at = at.ok_or(TransitionError::NothingDue)?;
    if let Some(expected) = expected_version
        && expected != s.version
    {
        return Err(TransitionError::Conflict {
            expected,
            actual: s.version,
        });
    }
    apply_command(&mut s, &Command::Pause, at, &mut events)?;
    if let Some(paused) = events.last_mut() {
        paused
            .metadata
            .insert("reason".into(), "disconnected".into());
        paused
            .metadata
            .insert("absent_since_ms".into(), absent_since_ms.into());
    }
    Ok(Decision {
        state: s,
        events,
        intermediate,
        expired_participant_id,
        fired_deadlines: fired,
    })
}

/// `AddTime`: raises the bank `target` plays on by `ms` (capped).
fn add_time(
    s: &mut Session,
    command: &Command,
    target: &AddTarget,
    ms: AddMs,
    reason: Option<&str>,
    now: i64,
    events: &mut Vec<Event>,
) -> Result<(), TransitionError> {
    let unknown = |id: &str| {
        // Group ids share the participant id alphabet.
        ParticipantId::parse(id)
            .map_or_else(|_| invalid(s, command), TransitionError::UnknownParticipant)
    };
    let (who, group) = match target {
        AddTarget::Participant(id) => {
            let i = s
                .participant_position(id)
                .ok_or_else(|| TransitionError::UnknownParticipant(id.clone()))?;
            (Some(i), group_of(s, i))
        }
        AddTarget::Group(id) => match s.group_position(id) {
            Some(g) if s.sync_mode == SyncMode::PerGroup => (None, Some(g)),
            _ => return Err(unknown(id.as_str())),
        },
    };
    let cap = s.max_time_ms;
    match (s.sync_mode, who, group) {
        (SyncMode::PerParticipant, Some(i), _) => {
            let p = &mut s.participants[i];
            p.total_time_ms = raise_bank(p.total_time_ms, ms.get(), cap);
        }
        (SyncMode::PerGroup, _, Some(g)) => {
            let g = &mut s.groups[g];
            g.total_time_ms = raise_bank(g.total_time_ms, ms.get(), cap);
        }
        (SyncMode::Global, Some(_), _) => {
            s.total_time_ms = s.total_time_ms.map(|t| raise_bank(t, ms.get(), cap));
        }
        _ => return Err(invalid(s, command)),
    }
    bump(s, now);
    let mut meta = Map::new();
    meta.insert("ms".into(), ms.get().into());
    meta.insert(
        "reason".into(),
        reason.map_or(serde_json::Value::Null, Into::into),
    );
    let e = Elapsed::at(s, now);
    let remaining = match (who, group) {
        (Some(_), _) => crate::clock::event_remaining(s, who, now),
        (None, Some(g)) => Some(crate::clock::group_remaining(s, g, &e)),
        (None, None) => None,
    };
    push_raw(
        s,
        events,
        EventType::TimeAdded,
        who,
        now,
        remaining,
        None,
        None,
        meta,
    );
    if let (None, Some(g), Some(ev)) = (who, group, events.last_mut()) {
        ev.group_id = Some(s.groups[g].id.clone());
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
