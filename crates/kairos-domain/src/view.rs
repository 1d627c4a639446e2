//! The read model: every number of a session at a given instant.
//!
//! A read is a pure function of (stored state, now): deadlines that passed
//! are applied as of their deadline first, so a read after a timeout but
//! before any worker ran already shows it (contract section 1).

use crate::clock::{
    Elapsed, delay_left, group_remaining, group_used, participant_remaining, participant_used,
    session_remaining, settle_deadlines, stage_of_participant, stage_rules,
};
use crate::ids::{GroupId, ParticipantId, SessionId};
use crate::session::{DelayMode, Participant, Session, Stage, Status, SyncMode, TimeoutAction};

/// One participant as seen at `server_time_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantView {
    /// Who.
    pub participant_id: ParticipantId,
    /// Rotation position.
    pub participant_index: u32,
    /// Group membership.
    pub group_id: Option<GroupId>,
    /// The bank (starting time plus increments).
    pub total_time_ms: i64,
    /// Time used, the running cycle included.
    pub time_used_ms: i64,
    /// Time left on the clock this participant plays on (never negative).
    pub time_remaining_ms: i64,
    /// Cycles started.
    pub cycle_count: u32,
    /// Whether this participant is the active one.
    pub is_active: bool,
    /// Ran out and left the rotation.
    pub has_expired: bool,
    /// The stage of the bank this participant plays on (0-based; 0 without
    /// stages).
    pub stage_index: u32,
    /// Moves left before that bank enters the next stage; `None` in the last
    /// stage (and without stages).
    pub moves_to_next_stage: Option<u32>,
    /// What is left of the running turn's delay, for the active participant
    /// of a running or paused session whose stage has a delay; `None` for
    /// everyone else and when no delay applies.
    pub delay_remaining_ms: Option<i64>,
    /// The lag compensation quota left, in ms; `None` when lag compensation
    /// is off (a quota of 0 means compensation is on and spent).
    pub lag_quota_ms: Option<i64>,
}

/// One group as seen at `server_time_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// Which group.
    pub group_id: GroupId,
    /// Rotation position.
    pub group_index: u32,
    /// The bank.
    pub total_time_ms: i64,
    /// Time used, the running cycle included.
    pub time_used_ms: i64,
    /// Time left (never negative).
    pub time_remaining_ms: i64,
    /// Whether this group is the active one.
    pub is_active: bool,
    /// Ran out and left the rotation.
    pub has_expired: bool,
    /// The group's stage (0-based).
    pub stage_index: u32,
    /// Moves left before the group enters the next stage; `None` in the last.
    pub moves_to_next_stage: Option<u32>,
    /// What is left of the running turn's delay for the active group;
    /// `None` otherwise and when no delay applies.
    pub delay_remaining_ms: Option<i64>,
}

/// A session as seen at `server_time_ms` (contract section 3, "Session view").
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// The session.
    pub session_id: SessionId,
    /// Sync mode.
    pub sync_mode: SyncMode,
    /// Status at `server_time_ms`.
    pub status: Status,
    /// Version at `server_time_ms` (due deadlines included).
    pub version: u64,
    /// Participants in rotation order.
    pub participants: Vec<ParticipantView>,
    /// The active participant.
    pub active_participant_id: Option<ParticipantId>,
    /// Session bank (global), as configured.
    pub total_time_ms: Option<i64>,
    /// Cycle length (per_cycle).
    pub time_per_cycle_ms: Option<i64>,
    /// Increment per switch.
    pub increment_ms: i64,
    /// Bank cap / stopwatch limit.
    pub max_time_ms: Option<i64>,
    /// When the current cycle started.
    pub cycle_started_at_ms: Option<i64>,
    /// When the session started.
    pub session_started_at_ms: Option<i64>,
    /// When it ended.
    pub session_completed_at_ms: Option<i64>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Client metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The instant every number here is computed at.
    pub server_time_ms: i64,
    /// The active group (per_group).
    pub active_group_id: Option<GroupId>,
    /// Groups in rotation order.
    pub groups: Vec<GroupView>,
    /// The session countdown (global mode only).
    pub time_remaining_ms: Option<i64>,
    /// Running time since start, pauses excluded.
    pub elapsed_ms: i64,
    /// What a timeout does.
    pub action_on_timeout: TimeoutAction,
    /// Start the next cycle at once after a skipped one.
    pub auto_advance: bool,
    /// The stages, as configured (empty without).
    pub stages: Vec<Stage>,
    /// The session-level delay (0 without).
    pub delay_ms: i64,
    /// The session-level delay mode.
    pub delay_mode: DelayMode,
    /// Lag compensation is on.
    pub lag_compensation: bool,
    /// Warning thresholds, descending.
    pub warnings_ms: Vec<i64>,
    /// When a pending session starts by itself.
    pub start_at_ms: Option<i64>,
    /// The auto-pause period of contract section 9, if configured.
    pub auto_pause_on_disconnect_ms: Option<i64>,
}

/// The view of `state` at `now`, with every deadline up to `now` applied.
///
/// ```
/// use kairos_domain::{machine, view, Command, SessionConfig, SessionId};
/// let cfg = SessionConfig::parse(&serde_json::json!({
///     "sync_mode": "per_participant",
///     "participants": [{"participant_id": "white", "total_time_ms": 300000},
///                      {"participant_id": "black", "total_time_ms": 300000}],
///     "increment_ms": 2000
/// })).unwrap();
/// let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// let (s, _) = machine::create(cfg, id, None, 0);
/// let s = machine::decide(&s, &Command::Start, None, 1_000).unwrap().state;
/// // White thinks for 15 s, then presses the clock.
/// let s = machine::decide(&s, &Command::Switch { next: None, lag_ms: None }, None, 16_000).unwrap().state;
/// let v = view::view(&s, 20_000);
/// assert_eq!(v.participants[0].total_time_ms, 302_000);
/// assert_eq!(v.participants[0].time_used_ms, 15_000);
/// assert_eq!(v.participants[0].time_remaining_ms, 287_000);
/// // Black has been thinking for 4 s.
/// assert_eq!(v.participants[1].time_remaining_ms, 296_000);
/// ```
pub fn view(state: &Session, now: i64) -> SessionView {
    let s = settle_deadlines(state, now);
    view_settled(&s, now)
}

/// The view of a state known to have no deadline due at `now`.
fn view_settled(s: &Session, now: i64) -> SessionView {
    let live = Elapsed::at(s, now);
    // The delay left shows while a turn is on (running or paused).
    let turn_on = matches!(s.status, Status::Running | Status::Paused);
    let delay = if turn_on {
        delay_left(s, live.cycle)
    } else {
        None
    };
    let stage = |index: u32, moves: u32| -> Option<u32> {
        stage_rules(s, index).moves.map(|m| m.saturating_sub(moves))
    };
    let participants = s
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let active = s.active == Some(i);
            ParticipantView {
                participant_id: p.id.clone(),
                participant_index: p.index,
                group_id: p.group_id.clone(),
                // In per_group the bank a participant plays on is its group's.
                total_time_ms: group_bank(s, p).unwrap_or(p.total_time_ms),
                time_used_ms: participant_used(s, i, &live),
                time_remaining_ms: participant_remaining(s, i, &live),
                cycle_count: p.cycle_count,
                is_active: active,
                has_expired: p.has_expired,
                stage_index: stage_of_participant(s, i).0,
                moves_to_next_stage: {
                    let (index, moves) = stage_of_participant(s, i);
                    stage(index, moves)
                },
                delay_remaining_ms: delay.filter(|_| active),
                lag_quota_ms: s.lag_compensation.then_some(p.lag_quota_ms),
            }
        })
        .collect();
    let groups = s
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let active = s.active_group == Some(i);
            GroupView {
                group_id: g.id.clone(),
                group_index: g.index,
                total_time_ms: g.total_time_ms,
                time_used_ms: group_used(s, i, &live),
                time_remaining_ms: group_remaining(s, i, &live),
                is_active: active,
                has_expired: g.has_expired,
                stage_index: g.stage_index,
                moves_to_next_stage: stage(g.stage_index, g.stage_moves),
                delay_remaining_ms: delay.filter(|_| active),
            }
        })
        .collect();
    SessionView {
        session_id: s.id,
        sync_mode: s.sync_mode,
        status: s.status,
        version: s.version,
        participants,
        active_participant_id: s.active_participant().map(|p| p.id.clone()),
        total_time_ms: s.total_time_ms,
        time_per_cycle_ms: s.time_per_cycle_ms,
        increment_ms: s.increment_ms,
        max_time_ms: s.max_time_ms,
        cycle_started_at_ms: s.cycle_started_at_ms,
        session_started_at_ms: s.session_started_at_ms,
        session_completed_at_ms: s.session_completed_at_ms,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        metadata: s.metadata.clone(),
        server_time_ms: now,
        active_group_id: s.active_group().map(|g| g.id.clone()),
        groups,
        time_remaining_ms: (s.sync_mode == SyncMode::Global).then(|| session_remaining(s, &live)),
        elapsed_ms: live.session,
        action_on_timeout: s.action_on_timeout.clone(),
        auto_advance: s.auto_advance,
        stages: s.stages.clone(),
        delay_ms: s.delay_ms,
        delay_mode: s.delay_mode,
        lag_compensation: s.lag_compensation,
        warnings_ms: s.warnings_ms.clone(),
        start_at_ms: s.start_at_ms,
        auto_pause_on_disconnect_ms: s.auto_pause_on_disconnect_ms,
    }
}

/// The bank a participant plays on in `per_group`: its group's.
fn group_bank(s: &Session, p: &Participant) -> Option<i64> {
    if s.sync_mode != SyncMode::PerGroup {
        return None;
    }
    let g = s.group_position(p.group_id.as_ref()?)?;
    Some(s.groups[g].total_time_ms)
}
