//! The stored session state: what one commit writes, for all five sync modes.
//!
//! A running clock is stored as the instant its current segment started plus
//! what was used before it (contract section 1). Nothing here counts down:
//! the time model (`clock`) computes every number at a given instant. This
//! module is data only and imports nothing but the ids.

use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, ParticipantId, SessionId};

/// Whose clock runs and what a switch does (contract section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Each participant has a bank (chess clocks, exam students).
    PerParticipant,
    /// A fresh `time_per_cycle_ms` for every cycle (auction bids, quiz questions).
    PerCycle,
    /// Each group has a bank; members take turns round-robin (teams).
    PerGroup,
    /// One bank for the whole session; switch rotates the speaker.
    Global,
    /// A stopwatch from zero; switch records a lap.
    CountUp,
}

impl SyncMode {
    /// The wire name, as in the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerParticipant => "per_participant",
            Self::PerCycle => "per_cycle",
            Self::PerGroup => "per_group",
            Self::Global => "global",
            Self::CountUp => "count_up",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "per_participant" => Self::PerParticipant,
            "per_cycle" => Self::PerCycle,
            "per_group" => Self::PerGroup,
            "global" => Self::Global,
            "count_up" => Self::CountUp,
            _ => return None,
        })
    }
}

/// The session's lifecycle (contract section 2, "Statuses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Pending,
    /// A clock is running.
    Running,
    /// Stopped for now; `resume` continues.
    Paused,
    /// Ended by `complete`.
    Completed,
    /// Ended by `cancel` (or `DELETE`).
    Cancelled,
    /// Ended because time ran out and the timeout action ended it.
    Expired,
}

impl Status {
    /// The wire name, as in the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Ended sessions accept no further state-changing command.
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }
}

/// What happens when the running clock reaches zero (contract section 2, "Timeouts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    /// The session becomes `expired` at the deadline.
    EndSession,
    /// The cycle ends; the exhausted participant or group leaves the rotation.
    SkipCycle,
    /// As `SkipCycle`, and the timeout event carries a client-defined `action`.
    AutoAction,
}

impl TimeoutKind {
    /// The wire name, as in the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndSession => "end_session",
            Self::SkipCycle => "skip_cycle",
            Self::AutoAction => "auto_action",
        }
    }
}

/// `action_on_timeout`: the kind, the optional client-defined `action`, and
/// any extra client-defined fields, stored and echoed as they came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeoutAction {
    /// What the timeout does.
    pub kind: TimeoutKind,
    /// The client-defined action string carried by `auto_action` timeouts (e.g. `"fold"`).
    pub action: Option<String>,
    /// Extra fields (`penalty`, `outcome`, ...), echoed verbatim.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for TimeoutAction {
    fn default() -> Self {
        Self {
            kind: TimeoutKind::EndSession,
            action: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl TimeoutAction {
    /// The object as the contract shows it: `{"type": ..., "action"?: ..., extra...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = self.extra.clone();
        map.insert("type".into(), self.kind.as_str().into());
        if let Some(action) = &self.action {
            map.insert("action".into(), action.clone().into());
        }
        serde_json::Value::Object(map)
    }
}

/// How a turn's delay works (contract section 8, "Delay").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayMode {
    /// No delay.
    #[default]
    None,
    /// US delay: the clock waits `delay_ms` at the start of each turn, then runs.
    Simple,
    /// Bronstein: the clock runs; a move gets back what it used, up to `delay_ms`.
    Bronstein,
}

impl DelayMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Simple => "simple",
            Self::Bronstein => "bronstein",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "simple" => Self::Simple,
            "bronstein" => Self::Bronstein,
            _ => return None,
        })
    }
}

/// One stage of a staged time control (contract section 8, "Stages").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stage {
    /// Moves in this stage; `None` on the last stage, which lasts to the end.
    #[serde(default)]
    pub moves: Option<u32>,
    /// Added to the bank when a clock enters this stage (0 on the first).
    #[serde(default)]
    pub add_ms: i64,
    /// Added to the bank by every move made in this stage.
    #[serde(default)]
    pub increment_ms: i64,
    /// The delay of every turn played in this stage.
    #[serde(default)]
    pub delay_ms: i64,
    /// How the delay works.
    #[serde(default)]
    pub delay_mode: DelayMode,
}

/// One participant's stored clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    /// Who this is.
    pub id: ParticipantId,
    /// Position in the rotation (unique; the list is kept sorted by it).
    pub index: u32,
    /// The group this participant plays in (`per_group` mode).
    pub group_id: Option<GroupId>,
    /// The bank: starting time plus increments received (capped at `max_time_ms`).
    pub total_time_ms: i64,
    /// Time charged in completed cycles (the running cycle is added at read time).
    pub time_used_ms: i64,
    /// How many cycles this participant has started.
    pub cycle_count: u32,
    /// Ran out of time and left the rotation.
    pub has_expired: bool,
    /// The stage this participant's bank is in (`per_participant`; 0-based).
    #[serde(default)]
    pub stage_index: u32,
    /// Moves made in the current stage (`per_participant`; not counted in
    /// the last stage, which lasts to the end).
    #[serde(default)]
    pub stage_moves: u32,
    /// Lag compensation left to spend, in ms (0 when compensation is off).
    #[serde(default)]
    pub lag_quota_ms: i64,
    /// What each move adds to the quota, in ms (0 when compensation is off).
    #[serde(default)]
    pub lag_gain_ms: i64,
}

/// One group's stored clock (`per_group` mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Which group.
    pub id: GroupId,
    /// Position in the rotation (list order).
    pub index: u32,
    /// The group's bank: starting time plus increments received.
    pub total_time_ms: i64,
    /// Time charged in completed cycles.
    pub time_used_ms: i64,
    /// Ran out of time and left the rotation.
    pub has_expired: bool,
    /// Index (into the session's participants) of the member who played last,
    /// so members take turns round-robin.
    pub last_member: Option<usize>,
    /// The stage the group's bank is in (`per_group`; 0-based).
    #[serde(default)]
    pub stage_index: u32,
    /// Moves the group made in the current stage (not counted in the last).
    #[serde(default)]
    pub stage_moves: u32,
}

/// Everything stored about one session. Changed only by the transition
/// function (`machine::decide`, with the timeouts of `clock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session id.
    pub id: SessionId,
    /// The sync mode, fixed at create.
    pub sync_mode: SyncMode,
    /// Lifecycle status.
    pub status: Status,
    /// Rises by exactly one per state change.
    pub version: u64,
    /// Sorted by `index`.
    pub participants: Vec<Participant>,
    /// In configuration order.
    pub groups: Vec<Group>,
    /// Index into `participants` of the active participant.
    pub active: Option<usize>,
    /// Index into `groups` of the active group (`per_group`).
    pub active_group: Option<usize>,
    /// The session bank (`global` mode; informative elsewhere).
    pub total_time_ms: Option<i64>,
    /// The cycle length (`per_cycle`).
    pub time_per_cycle_ms: Option<i64>,
    /// Added to a bank at every switch (`per_participant`, `per_group`).
    pub increment_ms: i64,
    /// Cap on banks; the stopwatch limit in `count_up`.
    pub max_time_ms: Option<i64>,
    /// What a timeout does.
    pub action_on_timeout: TimeoutAction,
    /// After a skipped cycle, start the next one at once (else pause).
    pub auto_advance: bool,
    /// Client-defined, echoed.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The `sub` of the creator; `None` when authentication is off.
    pub owner: Option<String>,
    /// Session running time before the current segment, pauses excluded.
    pub elapsed_ms: i64,
    /// Time used in the current cycle before the current segment.
    pub cycle_used_ms: i64,
    /// When the current running segment started; `Some` exactly while running.
    pub segment_started_at_ms: Option<i64>,
    /// When the current cycle started.
    pub cycle_started_at_ms: Option<i64>,
    /// When the session was started.
    pub session_started_at_ms: Option<i64>,
    /// When the session ended (for an expiry: the deadline).
    pub session_completed_at_ms: Option<i64>,
    /// When the session was created.
    pub created_at_ms: i64,
    /// When the last state change took effect.
    pub updated_at_ms: i64,
    // --- Contract section 8. Every field defaults, so sessions stored by the
    // first release (which has none of them) load and behave as before.
    /// The stages of a staged control; empty: one stage of `increment_ms`,
    /// `delay_ms` and `delay_mode`.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// The session-level delay (without `stages`).
    #[serde(default)]
    pub delay_ms: i64,
    /// How the session-level delay works (without `stages`).
    #[serde(default)]
    pub delay_mode: DelayMode,
    /// Lag compensation is on.
    #[serde(default)]
    pub lag_compensation: bool,
    /// Warning thresholds, descending and distinct.
    #[serde(default)]
    pub warnings_ms: Vec<i64>,
    /// Thresholds done in the current turn: warned, or at or above the
    /// clock when the turn started (never warned in this turn).
    #[serde(default)]
    pub warned_ms: Vec<i64>,
    /// When a pending session starts by itself.
    #[serde(default)]
    pub start_at_ms: Option<i64>,
    // --- Contract section 9; defaults too.
    /// Pause by itself when the active participant has had no connection
    /// for this long (the presence module's `auto_pause_due`).
    #[serde(default)]
    pub auto_pause_on_disconnect_ms: Option<i64>,
}

impl Session {
    /// The active participant, if any.
    pub fn active_participant(&self) -> Option<&Participant> {
        self.active.and_then(|i| self.participants.get(i))
    }

    /// The active group, if any.
    pub fn active_group(&self) -> Option<&Group> {
        self.active_group.and_then(|i| self.groups.get(i))
    }

    /// Index of a participant by id.
    pub fn participant_position(&self, id: &ParticipantId) -> Option<usize> {
        self.participants.iter().position(|p| &p.id == id)
    }

    /// Index of a group by id.
    pub fn group_position(&self, id: &GroupId) -> Option<usize> {
        self.groups.iter().position(|g| &g.id == id)
    }
}
