//! The wire types of the contract (`docs/protocol.md`), owned by the client so
//! that it depends on none of the server's crates: the session config sent to
//! `POST /v1/sessions`, the session view every answer and `STATE_*` message
//! carries, events, and `GET /v1/time`.
//!
//! Deserialization is tolerant: unknown fields are kept in `extra` (or
//! ignored), fields a v2 server leaves out (`increment_ms`, `max_time_ms`, a
//! participant's `group_id`) are `None`, and enum values this version does
//! not know become `Other`, so a newer server does not break an older client.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// How a session's clocks run (`sync_mode`, contract section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Each participant has a bank; the active one's runs (chess clocks).
    PerParticipant,
    /// A fresh `time_per_cycle_ms` every cycle (auction bids, quiz questions).
    PerCycle,
    /// Each group has a bank; members take turns inside the group.
    PerGroup,
    /// One bank for the whole session (a countdown).
    Global,
    /// A stopwatch from 0, up to `max_time_ms` when set.
    CountUp,
    /// A mode this version of the client does not know.
    #[serde(other)]
    Other,
}

/// A session's status (`status`, contract section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created, not started.
    Pending,
    /// A clock is running.
    Running,
    /// Paused; resumable.
    Paused,
    /// Ended by `complete`.
    Completed,
    /// Ended by `cancel` (or a delete of a live session).
    Cancelled,
    /// Ended by a timeout.
    Expired,
    /// A status this version of the client does not know.
    #[serde(other)]
    Other,
}

impl Status {
    /// Whether the session has ended (no state-changing command is accepted).
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }
}

/// `action_on_timeout`: what happens when the running clock reaches zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOnTimeout {
    /// `end_session`, `skip_cycle` or `auto_action`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The client-defined action of `auto_action` (`"fold"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Further client-defined fields, stored and echoed by the server.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ActionOnTimeout {
    /// `{"type": kind}` with no action and no extra fields.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            action: None,
            extra: Map::new(),
        }
    }
}

/// One participant of a session config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantConfig {
    /// 1 to 64 characters from `A-Z a-z 0-9 _ . : -`.
    pub participant_id: String,
    /// Its place in the rotation; left out, list order is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_index: Option<u32>,
    /// Its bank in ms (required in `per_participant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time_ms: Option<i64>,
    /// Its group (`per_group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

impl ParticipantConfig {
    /// A participant with an id and nothing else.
    pub fn new(participant_id: impl Into<String>) -> Self {
        Self {
            participant_id: participant_id.into(),
            participant_index: None,
            total_time_ms: None,
            group_id: None,
        }
    }
}

/// One group of a `per_group` session config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// The group's id.
    pub group_id: String,
    /// The group's bank in ms.
    pub total_time_ms: i64,
}

/// The body of `POST /v1/sessions` (contract section 3, "Session config").
///
/// Built with [`SessionConfig::new`] and the builder methods, or as a struct
/// literal. Fields of later releases (stages, warnings, ...) go in `extra`.
///
/// ```
/// use kairos_client::{SessionConfig, SyncMode};
///
/// let config = SessionConfig::new(SyncMode::PerParticipant)
///     .participant("white", 300_000)
///     .participant("black", 300_000)
///     .increment_ms(2_000);
/// assert_eq!(config.participants.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// The session's UUID; left out, the server makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// How the clocks run.
    pub sync_mode: SyncMode,
    /// The participants, in rotation order unless indexes say otherwise.
    #[serde(default)]
    pub participants: Vec<ParticipantConfig>,
    /// The groups of a `per_group` session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
    /// The session bank (`global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time_ms: Option<i64>,
    /// The cycle length (`per_cycle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_per_cycle_ms: Option<i64>,
    /// Added to a bank on each switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment_ms: Option<i64>,
    /// The bank cap, or the stopwatch limit in `count_up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time_ms: Option<i64>,
    /// What a timeout does (default `end_session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_on_timeout: Option<ActionOnTimeout>,
    /// Whether `skip_cycle` starts the next participant's cycle at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_advance: Option<bool>,
    /// The application's own data, echoed in every view (at most 10 KiB).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Any further field, sent as is (`stages`, `warnings_ms`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionConfig {
    /// An empty config of `sync_mode`.
    pub fn new(sync_mode: SyncMode) -> Self {
        Self {
            session_id: None,
            sync_mode,
            participants: Vec::new(),
            groups: Vec::new(),
            total_time_ms: None,
            time_per_cycle_ms: None,
            increment_ms: None,
            max_time_ms: None,
            action_on_timeout: None,
            auto_advance: None,
            metadata: Map::new(),
            extra: Map::new(),
        }
    }

    /// Sets the session id (otherwise the server makes one).
    pub fn session_id(mut self, id: Uuid) -> Self {
        self.session_id = Some(id);
        self
    }

    /// Adds a participant with a bank of `total_time_ms`.
    pub fn participant(mut self, id: impl Into<String>, total_time_ms: i64) -> Self {
        let mut p = ParticipantConfig::new(id);
        p.total_time_ms = Some(total_time_ms);
        self.participants.push(p);
        self
    }

    /// Adds a participant as given (no bank, a group, an index, ...).
    pub fn participant_config(mut self, participant: ParticipantConfig) -> Self {
        self.participants.push(participant);
        self
    }

    /// Adds a group (`per_group`).
    pub fn group(mut self, id: impl Into<String>, total_time_ms: i64) -> Self {
        self.groups.push(GroupConfig {
            group_id: id.into(),
            total_time_ms,
        });
        self
    }

    /// Sets the session bank (`global`).
    pub fn total_time_ms(mut self, ms: i64) -> Self {
        self.total_time_ms = Some(ms);
        self
    }

    /// Sets the cycle length (`per_cycle`).
    pub fn time_per_cycle_ms(mut self, ms: i64) -> Self {
        self.time_per_cycle_ms = Some(ms);
        self
    }

    /// Sets the increment added on each switch.
    pub fn increment_ms(mut self, ms: i64) -> Self {
        self.increment_ms = Some(ms);
        self
    }

    /// Sets the bank cap (the stopwatch limit in `count_up`).
    pub fn max_time_ms(mut self, ms: i64) -> Self {
        self.max_time_ms = Some(ms);
        self
    }

    /// Sets what a timeout does.
    pub fn action_on_timeout(mut self, action: ActionOnTimeout) -> Self {
        self.action_on_timeout = Some(action);
        self
    }

    /// Sets `auto_advance`.
    pub fn auto_advance(mut self, on: bool) -> Self {
        self.auto_advance = Some(on);
        self
    }

    /// Sets one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// Sets a field this type has no member for, sent as is.
    pub fn extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
}

/// A participant in a session view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantView {
    /// Its id.
    pub participant_id: String,
    /// Its place in the rotation.
    #[serde(default)]
    pub participant_index: u32,
    /// Its group; absent when it is in none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Its bank: starting time plus increments received.
    #[serde(default)]
    pub total_time_ms: i64,
    /// Time used, as of the view's `server_time_ms`.
    #[serde(default)]
    pub time_used_ms: i64,
    /// The clock it plays on, as of the view's `server_time_ms`.
    #[serde(default)]
    pub time_remaining_ms: i64,
    /// Cycles it has started.
    #[serde(default)]
    pub cycle_count: u64,
    /// Whether it is the active participant.
    #[serde(default)]
    pub is_active: bool,
    /// Whether its clock ran out and it left the rotation.
    #[serde(default)]
    pub has_expired: bool,
    /// Fields this version does not know (`stage_index`, `lag_quota_ms`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A group in a session view (`per_group`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// Its id.
    pub group_id: String,
    /// Its place in the rotation.
    #[serde(default)]
    pub group_index: u32,
    /// Its bank.
    #[serde(default)]
    pub total_time_ms: i64,
    /// Time used, as of the view's `server_time_ms`.
    #[serde(default)]
    pub time_used_ms: i64,
    /// Time left, as of the view's `server_time_ms`.
    #[serde(default)]
    pub time_remaining_ms: i64,
    /// Whether it is the active group.
    #[serde(default)]
    pub is_active: bool,
    /// Whether its clock ran out.
    #[serde(default)]
    pub has_expired: bool,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The session view (contract section 3): the state of a session computed at
/// `server_time_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    /// The session's id.
    pub session_id: Uuid,
    /// How its clocks run.
    pub sync_mode: SyncMode,
    /// Its status.
    pub status: Status,
    /// Increases by exactly 1 on every state change.
    pub version: u64,
    /// Its participants, in rotation order.
    #[serde(default)]
    pub participants: Vec<ParticipantView>,
    /// The active participant, if any.
    #[serde(default)]
    pub active_participant_id: Option<String>,
    /// The session bank (`global`).
    #[serde(default)]
    pub total_time_ms: Option<i64>,
    /// The cycle length (`per_cycle`).
    #[serde(default)]
    pub time_per_cycle_ms: Option<i64>,
    /// The increment; a v2 server may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment_ms: Option<i64>,
    /// The bank cap or stopwatch limit; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time_ms: Option<i64>,
    /// RFC 3339 start of the current cycle.
    #[serde(default)]
    pub cycle_started_at: Option<String>,
    /// RFC 3339 start of the session.
    #[serde(default)]
    pub session_started_at: Option<String>,
    /// RFC 3339 end of the session.
    #[serde(default)]
    pub session_completed_at: Option<String>,
    /// RFC 3339 creation instant.
    #[serde(default)]
    pub created_at: Option<String>,
    /// RFC 3339 instant of the last change.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The application's data.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The server instant (ms since the epoch) the numbers are computed at.
    #[serde(default)]
    pub server_time_ms: i64,
    /// Start of the current cycle, ms since the epoch.
    #[serde(default)]
    pub cycle_started_at_ms: Option<i64>,
    /// Start of the session, ms since the epoch.
    #[serde(default)]
    pub session_started_at_ms: Option<i64>,
    /// End of the session, ms since the epoch.
    #[serde(default)]
    pub session_completed_at_ms: Option<i64>,
    /// Creation instant, ms since the epoch.
    #[serde(default)]
    pub created_at_ms: Option<i64>,
    /// Instant of the last change, ms since the epoch.
    #[serde(default)]
    pub updated_at_ms: Option<i64>,
    /// The active group (`per_group`).
    #[serde(default)]
    pub active_group_id: Option<String>,
    /// The groups (`per_group`).
    #[serde(default)]
    pub groups: Vec<GroupView>,
    /// The session countdown (`global`); null in other modes.
    #[serde(default)]
    pub time_remaining_ms: Option<i64>,
    /// Running time since start, pauses excluded.
    #[serde(default)]
    pub elapsed_ms: i64,
    /// What a timeout does.
    #[serde(default)]
    pub action_on_timeout: Option<ActionOnTimeout>,
    /// Whether `skip_cycle` starts the next cycle at once.
    #[serde(default)]
    pub auto_advance: bool,
    /// In a switch's answer: the participant whose clock the switch found run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_participant_id: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionView {
    /// The participant with this id.
    pub fn participant(&self, participant_id: &str) -> Option<&ParticipantView> {
        self.participants
            .iter()
            .find(|p| p.participant_id == participant_id)
    }

    /// The active participant.
    pub fn active_participant(&self) -> Option<&ParticipantView> {
        self.participants.iter().find(|p| p.is_active)
    }
}

/// An event of the audit trail or of an `EVENT` message (contract section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: the same when an event is written twice.
    pub event_id: Uuid,
    /// The session it belongs to.
    pub session_id: Uuid,
    /// The version it produced; `None` for events that are no state change
    /// (presence).
    #[serde(default)]
    pub version: Option<u64>,
    /// `session_created`, `cycle_switched`, `participant_expired`, ...
    /// (a string: later releases add types).
    pub event_type: String,
    /// The participant concerned.
    #[serde(default)]
    pub participant_id: Option<String>,
    /// The group concerned.
    #[serde(default)]
    pub group_id: Option<String>,
    /// When it took effect (for a timeout, the deadline), ms since the epoch.
    pub at_ms: i64,
    /// The clock left at that instant, when it applies.
    #[serde(default)]
    pub time_remaining_ms: Option<i64>,
    /// The time the turn took, when it applies.
    #[serde(default)]
    pub time_elapsed_ms: Option<i64>,
    /// The `auto_action` action.
    #[serde(default)]
    pub action: Option<String>,
    /// Further details.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The answer of `GET /v1/time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTime {
    /// The server's clock, ms since the epoch.
    pub timestamp_ms: i64,
    /// The server's version.
    #[serde(default)]
    pub server_version: String,
    /// How far clients may drift, in ms (50).
    #[serde(default)]
    pub drift_tolerance_ms: i64,
}

/// A page query of `GET /v1/sessions/{id}/events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsQuery {
    /// At most this many (1..=500; the server's default is 100).
    pub limit: Option<u32>,
    /// Only events with `at_ms` strictly before this.
    pub before_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_view_without_the_optional_v2_fields_and_with_unknown_ones_deserializes() {
        let view: SessionView = serde_json::from_value(json!({
            "session_id": "123e4567-e89b-12d3-a456-426614174000",
            "sync_mode": "per_participant",
            "status": "running",
            "version": 3,
            "participants": [
                {"participant_id": "white", "participant_index": 0, "total_time_ms": 302000,
                 "time_used_ms": 15000, "time_remaining_ms": 287000, "cycle_count": 1,
                 "is_active": false, "has_expired": false, "stage_index": 0}
            ],
            "active_participant_id": "white",
            "server_time_ms": 1760970620000i64,
            "future_field": {"x": 1},
            "action_on_timeout": {"type": "auto_action", "action": "fold", "penalty": 5}
        }))
        .unwrap();
        assert_eq!(view.increment_ms, None);
        assert_eq!(view.max_time_ms, None);
        assert_eq!(view.participants[0].group_id, None);
        assert_eq!(view.participants[0].extra["stage_index"], json!(0));
        assert_eq!(view.extra["future_field"], json!({"x": 1}));
        let action = view.action_on_timeout.unwrap();
        assert_eq!(action.action.as_deref(), Some("fold"));
        assert_eq!(action.extra["penalty"], json!(5));
    }

    #[test]
    fn unknown_modes_and_statuses_are_other() {
        let mode: SyncMode = serde_json::from_value(json!("per_planet")).unwrap();
        let status: Status = serde_json::from_value(json!("hibernating")).unwrap();
        assert_eq!((mode, status), (SyncMode::Other, Status::Other));
    }

    #[test]
    fn a_config_leaves_out_what_is_not_set() {
        let config = SessionConfig::new(SyncMode::Global)
            .total_time_ms(60_000)
            .extra("warnings_ms", json!([10_000]));
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            json!({"sync_mode": "global", "participants": [], "total_time_ms": 60000,
                   "warnings_ms": [10000]})
        );
    }
}
