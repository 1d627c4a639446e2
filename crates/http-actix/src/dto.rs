//! Wire shapes: the session view, events and request bodies as the contract
//! spells them. Domain types convert here and nowhere else.

use chrono::{DateTime, SecondsFormat};
use kairos_domain::{Event, GroupView, ParticipantId, ParticipantView, SessionView};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;

/// RFC 3339 with millisecond precision and `Z`, as the v2 format has it.
pub fn rfc3339(ms: i64) -> Option<String> {
    DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// One participant in a view.
#[derive(Debug, Serialize, ToSchema)]
pub struct WireParticipant {
    participant_id: String,
    participant_index: u32,
    /// Omitted, never `null`, outside a group: v2 clients validate it as an
    /// optional string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    group_id: Option<String>,
    total_time_ms: i64,
    time_used_ms: i64,
    time_remaining_ms: i64,
    cycle_count: u32,
    is_active: bool,
    has_expired: bool,
}

/// One group in a view (ext).
#[derive(Debug, Serialize, ToSchema)]
pub struct WireGroup {
    group_id: String,
    group_index: u32,
    total_time_ms: i64,
    time_used_ms: i64,
    time_remaining_ms: i64,
    is_active: bool,
    has_expired: bool,
}

/// The session view (contract section 3).
#[derive(Debug, Serialize, ToSchema)]
pub struct WireView {
    session_id: String,
    /// `per_participant`, `per_cycle`, `per_group`, `global` or `count_up`.
    sync_mode: &'static str,
    /// `pending`, `running`, `paused`, `completed`, `cancelled` or `expired`.
    status: &'static str,
    version: u64,
    participants: Vec<WireParticipant>,
    active_participant_id: Option<String>,
    total_time_ms: Option<i64>,
    time_per_cycle_ms: Option<i64>,
    /// Always present (0 when none was configured, as v2 stores it), but
    /// optional in the schema, which v2 clients validate.
    #[schema(required = false)]
    increment_ms: i64,
    /// Omitted, never `null`, when there is no cap: v2 clients validate it
    /// as an optional number.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    max_time_ms: Option<i64>,
    cycle_started_at: Option<String>,
    session_started_at: Option<String>,
    session_completed_at: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    server_time_ms: i64,
    cycle_started_at_ms: Option<i64>,
    session_started_at_ms: Option<i64>,
    session_completed_at_ms: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
    active_group_id: Option<String>,
    groups: Vec<WireGroup>,
    time_remaining_ms: Option<i64>,
    elapsed_ms: i64,
    #[schema(value_type = Object)]
    action_on_timeout: Value,
    auto_advance: bool,
    /// Present on a switch that found the active clock run out.
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_participant_id: Option<String>,
}

impl WireView {
    /// Converts a domain view.
    pub fn from_view(v: SessionView, expired: Option<ParticipantId>) -> Self {
        Self {
            session_id: v.session_id.to_string(),
            sync_mode: v.sync_mode.as_str(),
            status: v.status.as_str(),
            version: v.version,
            participants: v.participants.into_iter().map(participant).collect(),
            active_participant_id: v.active_participant_id.map(String::from),
            total_time_ms: v.total_time_ms,
            time_per_cycle_ms: v.time_per_cycle_ms,
            increment_ms: v.increment_ms,
            max_time_ms: v.max_time_ms,
            cycle_started_at: v.cycle_started_at_ms.and_then(rfc3339),
            session_started_at: v.session_started_at_ms.and_then(rfc3339),
            session_completed_at: v.session_completed_at_ms.and_then(rfc3339),
            created_at: rfc3339(v.created_at_ms),
            updated_at: rfc3339(v.updated_at_ms),
            metadata: v.metadata,
            server_time_ms: v.server_time_ms,
            cycle_started_at_ms: v.cycle_started_at_ms,
            session_started_at_ms: v.session_started_at_ms,
            session_completed_at_ms: v.session_completed_at_ms,
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
            active_group_id: v.active_group_id.map(String::from),
            groups: v.groups.into_iter().map(group).collect(),
            time_remaining_ms: v.time_remaining_ms,
            elapsed_ms: v.elapsed_ms,
            action_on_timeout: v.action_on_timeout.to_json(),
            auto_advance: v.auto_advance,
            expired_participant_id: expired.map(String::from),
        }
    }
}

fn participant(p: ParticipantView) -> WireParticipant {
    WireParticipant {
        participant_id: p.participant_id.into(),
        participant_index: p.participant_index,
        group_id: p.group_id.map(String::from),
        total_time_ms: p.total_time_ms,
        time_used_ms: p.time_used_ms,
        time_remaining_ms: p.time_remaining_ms,
        cycle_count: p.cycle_count,
        is_active: p.is_active,
        has_expired: p.has_expired,
    }
}

fn group(g: GroupView) -> WireGroup {
    WireGroup {
        group_id: g.group_id.into(),
        group_index: g.group_index,
        total_time_ms: g.total_time_ms,
        time_used_ms: g.time_used_ms,
        time_remaining_ms: g.time_remaining_ms,
        is_active: g.is_active,
        has_expired: g.has_expired,
    }
}

/// An event (contract section 5).
#[derive(Debug, Serialize, ToSchema)]
pub struct WireEvent {
    event_id: String,
    session_id: String,
    version: u64,
    /// One of the ten event types of contract section 5.
    event_type: &'static str,
    participant_id: Option<String>,
    group_id: Option<String>,
    at_ms: i64,
    time_remaining_ms: Option<i64>,
    time_elapsed_ms: Option<i64>,
    action: Option<String>,
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
}

impl From<&Event> for WireEvent {
    fn from(e: &Event) -> Self {
        Self {
            event_id: e.event_id.hyphenated().to_string(),
            session_id: e.session_id.to_string(),
            version: e.version,
            event_type: e.event_type.as_str(),
            participant_id: e.participant_id.as_ref().map(|p| p.as_str().to_owned()),
            group_id: e.group_id.as_ref().map(|g| g.as_str().to_owned()),
            at_ms: e.at_ms,
            time_remaining_ms: e.time_remaining_ms,
            time_elapsed_ms: e.time_elapsed_ms,
            action: e.action.clone(),
            metadata: e.metadata.clone(),
        }
    }
}

/// The optional body of a command (`start`, `switch`, `pause`, ...).
#[derive(Debug, Default, Clone, PartialEq, Eq, ToSchema)]
pub struct CommandBody {
    /// Optimistic lock: the command applies only at this version.
    pub expected_version: Option<u64>,
    /// `switch` only: who plays next.
    #[schema(value_type = Option<String>)]
    pub next_participant_id: Option<ParticipantId>,
}

impl CommandBody {
    /// Parses a command body (`null`, `{}` or absent fields are fine),
    /// reporting every bad field.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        let mut out = Self::default();
        let obj = match value {
            Value::Null => return Ok(out),
            Value::Object(obj) => obj,
            _ => return Err(ApiError::field("body", "must be a JSON object")),
        };
        let mut errors = Vec::new();
        match obj.get("expected_version") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) => out.expected_version = Some(n),
                None => errors.push(kairos_domain::FieldError::new(
                    "expected_version",
                    "must be a non-negative integer",
                )),
            },
        }
        match obj.get("next_participant_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match ParticipantId::parse(s) {
                Ok(id) => out.next_participant_id = Some(id),
                Err(e) => errors.push(kairos_domain::FieldError::new(
                    "next_participant_id",
                    e.to_string(),
                )),
            },
            Some(_) => errors.push(kairos_domain::FieldError::new(
                "next_participant_id",
                "must be a string",
            )),
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instants_render_with_milliseconds_and_z() {
        assert_eq!(
            rfc3339(1_760_970_600_000).as_deref(),
            Some("2025-10-20T14:30:00.000Z")
        );
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
    }

    #[test]
    fn command_bodies_parse_and_report_bad_fields() {
        assert_eq!(
            CommandBody::parse(&Value::Null).unwrap(),
            CommandBody::default()
        );
        let b = CommandBody::parse(&json!({"expected_version": 4, "next_participant_id": "black"}))
            .unwrap();
        assert_eq!(b.expected_version, Some(4));
        assert_eq!(b.next_participant_id.unwrap().as_str(), "black");
        let e = CommandBody::parse(&json!({"expected_version": -1, "next_participant_id": 3}))
            .unwrap_err();
        assert_eq!(
            *e.details.unwrap(),
            json!([
                {"field": "expected_version", "message": "must be a non-negative integer"},
                {"field": "next_participant_id", "message": "must be a string"}
            ])
        );
    }
}
