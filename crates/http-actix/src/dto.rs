//! Wire shapes: the session view, events and request bodies as the contract
//! spells them. Domain types convert here and nowhere else.

use chrono::{DateTime, SecondsFormat};
use kairos_domain::config::{ADD_TIME_RANGE_MS, LAG_RANGE_MS};
use kairos_domain::{
    AddMs, AddTarget, Event, FieldError, GroupId, GroupView, Joiner, ParticipantId,
    ParticipantView, SessionView, Stage,
};
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
    /// (ext, section 8) The stage of the bank this participant plays on, 0-based.
    stage_index: u32,
    /// (ext) Moves left before that bank enters the next stage; `null` in
    /// the last stage and without stages.
    moves_to_next_stage: Option<u32>,
    /// (ext) What is left of the running turn's delay, for the active
    /// participant when a delay applies; `null` otherwise.
    delay_remaining_ms: Option<i64>,
    /// (ext) The lag compensation quota left; `null` when lag compensation is off.
    lag_quota_ms: Option<i64>,
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
    /// (ext, section 8) The group's stage, 0-based.
    stage_index: u32,
    /// (ext) Moves left before the group enters the next stage; `null` in the last.
    moves_to_next_stage: Option<u32>,
    /// (ext) What is left of the running turn's delay for the active group;
    /// `null` otherwise.
    delay_remaining_ms: Option<i64>,
}

/// One stage of the time control (ext, contract section 8), as configured.
#[derive(Debug, Serialize, ToSchema)]
pub struct WireStage {
    /// Moves in this stage; `null` on the last stage, which lasts to the end.
    moves: Option<u32>,
    /// Added to the bank when a clock enters this stage.
    add_ms: i64,
    /// Added by every move made in this stage.
    increment_ms: i64,
    /// The delay of every turn of this stage.
    delay_ms: i64,
    /// `none`, `simple` or `bronstein`.
    delay_mode: &'static str,
}

/// `{"enabled": bool}`, as the config spells it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WireLagCompensation {
    enabled: bool,
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
    /// (ext, section 8) The stages, as configured; `[]` without.
    stages: Vec<WireStage>,
    /// (ext) The session-level delay; 0 without.
    delay_ms: i64,
    /// (ext) `none`, `simple` or `bronstein`.
    delay_mode: &'static str,
    /// (ext) Whether lag compensation is on.
    lag_compensation: WireLagCompensation,
    /// (ext) Warning thresholds, descending; `[]` without.
    warnings_ms: Vec<i64>,
    /// (ext) When a pending session starts by itself; `null` without.
    start_at_ms: Option<i64>,
    /// (ext, section 9) The auto-pause period; `null` without.
    auto_pause_on_disconnect_ms: Option<i64>,
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
            stages: v.stages.iter().map(stage).collect(),
            delay_ms: v.delay_ms,
            delay_mode: v.delay_mode.as_str(),
            lag_compensation: WireLagCompensation {
                enabled: v.lag_compensation,
            },
            warnings_ms: v.warnings_ms,
            start_at_ms: v.start_at_ms,
            auto_pause_on_disconnect_ms: v.auto_pause_on_disconnect_ms,
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
        stage_index: p.stage_index,
        moves_to_next_stage: p.moves_to_next_stage,
        delay_remaining_ms: p.delay_remaining_ms,
        lag_quota_ms: p.lag_quota_ms,
    }
}

fn stage(s: &Stage) -> WireStage {
    WireStage {
        moves: s.moves,
        add_ms: s.add_ms,
        increment_ms: s.increment_ms,
        delay_ms: s.delay_ms,
        delay_mode: s.delay_mode.as_str(),
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
        stage_index: g.stage_index,
        moves_to_next_stage: g.moves_to_next_stage,
        delay_remaining_ms: g.delay_remaining_ms,
    }
}

/// An event (contract section 5).
#[derive(Debug, Serialize, ToSchema)]
pub struct WireEvent {
    event_id: String,
    session_id: String,
    version: u64,
    /// One of the event types of contract section 5 (and `time_warning`,
    /// `time_added` of section 8).
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

/// Who is connected to a session (contract section 9), over every instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct WirePresence {
    /// Live WebSocket connections.
    connections: u32,
    /// Their users, earliest first.
    users: Vec<WirePresenceUser>,
}

/// One user of [`WirePresence`].
#[derive(Debug, Serialize, ToSchema)]
pub struct WirePresenceUser {
    /// The token's `sub`; with `AUTH_MODE=off` the `?user=` of the
    /// connection, else `anonymous`.
    sub: String,
    /// The participant its connection plays as (the token's `pid`, or
    /// `?participant_id=` with auth off), when it names one of the session.
    participant_id: Option<String>,
    /// Its live connections.
    connections: u32,
    /// When its earliest live connection opened (ms).
    since_ms: i64,
}

impl From<kairos_domain::PresenceSnapshot> for WirePresence {
    fn from(p: kairos_domain::PresenceSnapshot) -> Self {
        Self {
            connections: p.connections,
            users: p
                .users
                .into_iter()
                .map(|u| WirePresenceUser {
                    sub: u.sub,
                    participant_id: u.participant_id.map(String::from),
                    connections: u.connections,
                    since_ms: u.since_ms,
                })
                .collect(),
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
    /// `switch` only: the network delay the client measured, 0..=10000 ms.
    pub lag_ms: Option<u32>,
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
        match obj.get("lag_ms") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if LAG_RANGE_MS.contains(&n) => out.lag_ms = Some(n),
                _ => errors.push(FieldError::new(
                    "lag_ms",
                    format!(
                        "must be an integer from {} to {}",
                        LAG_RANGE_MS.start(),
                        LAG_RANGE_MS.end()
                    ),
                )),
            },
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

/// The most characters an `add_time` `reason` may have.
pub const MAX_REASON_CHARS: usize = 200;

/// The body of `add_time` (REST `POST /v1/sessions/{id}/add_time`, WS
/// `ADD_TIME`), contract section 8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddTimeBody {
    /// Optimistic lock: apply only at this version.
    pub expected_version: Option<u64>,
    /// Whose bank: exactly one of `participant_id` and `group_id`.
    pub target: AddTarget,
    /// How much, 1..=3600000 ms.
    pub ms: AddMs,
    /// Why (at most [`MAX_REASON_CHARS`] characters), echoed in the
    /// `time_added` event's metadata.
    pub reason: Option<String>,
}

impl AddTimeBody {
    /// Parses an `add_time` body, reporting every bad field.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        let Value::Object(obj) = value else {
            return Err(ApiError::field("body", "must be a JSON object"));
        };
        let mut errors = Vec::new();
        let expected_version = match obj.get("expected_version") {
            None | Some(Value::Null) => None,
            Some(v) => v.as_u64().or_else(|| {
                errors.push(FieldError::new(
                    "expected_version",
                    "must be a non-negative integer",
                ));
                None
            }),
        };
        let mut id = |field: &'static str| -> Option<String> {
            match obj.get(field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match ParticipantId::parse(s) {
                    Ok(_) => Some(s.clone()),
                    Err(e) => {
                        errors.push(FieldError::new(field, e.to_string()));
                        None
                    }
                },
                Some(_) => {
                    errors.push(FieldError::new(field, "must be a string"));
                    None
                }
            }
        };
        let participant = id("participant_id");
        let group = id("group_id");
        let named = |f: &str| obj.get(f).is_some_and(|v| !v.is_null());
        let target = match (participant, group) {
            (Some(p), None) => ParticipantId::parse(&p).ok().map(AddTarget::Participant),
            (None, Some(g)) => GroupId::parse(&g).ok().map(AddTarget::Group),
            _ => {
                if named("participant_id") == named("group_id") {
                    errors.push(FieldError::new(
                        "participant_id",
                        "give exactly one of participant_id and group_id",
                    ));
                }
                None
            }
        };
        let ms = match obj.get("ms") {
            None | Some(Value::Null) => {
                errors.push(FieldError::new("ms", "is required"));
                None
            }
            Some(v) => v.as_i64().and_then(AddMs::new).or_else(|| {
                errors.push(FieldError::new(
                    "ms",
                    format!(
                        "must be an integer from {} to {}",
                        ADD_TIME_RANGE_MS.start(),
                        ADD_TIME_RANGE_MS.end()
                    ),
                ));
                None
            }),
        };
        let reason = match obj.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= MAX_REASON_CHARS => Some(s.clone()),
            Some(Value::String(_)) => {
                errors.push(FieldError::new(
                    "reason",
                    format!("must be at most {MAX_REASON_CHARS} characters"),
                ));
                None
            }
            Some(_) => {
                errors.push(FieldError::new("reason", "must be a string"));
                None
            }
        };
        match (target, ms) {
            (Some(target), Some(ms)) if errors.is_empty() => Ok(Self {
                expected_version,
                target,
                ms,
                reason,
            }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

/// The body of `POST /v1/sessions/{id}/participants` (contract section 9):
/// one participant object of the session config (`participant_index` may
/// be left out: the end of the rotation), and `expected_version` beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinBody {
    /// Optimistic lock: apply only at this version.
    pub expected_version: Option<u64>,
    /// Who joins, parsed with the config's rules.
    pub joiner: Joiner,
}

impl JoinBody {
    /// Parses a join body, reporting every bad field by its name.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        let Value::Object(obj) = value else {
            return Err(ApiError::field("body", "must be a JSON object"));
        };
        let mut errors = Vec::new();
        let expected_version = match obj.get("expected_version") {
            None | Some(Value::Null) => None,
            Some(v) => v.as_u64().or_else(|| {
                errors.push(FieldError::new(
                    "expected_version",
                    "must be a non-negative integer",
                ));
                None
            }),
        };
        match Joiner::parse(value) {
            Ok(joiner) if errors.is_empty() => Ok(Self {
                expected_version,
                joiner,
            }),
            Ok(_) => Err(ApiError::validation(errors)),
            Err(mut fields) => {
                fields.extend(errors);
                Err(ApiError::validation(fields))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_join_body_is_a_participant_object_and_an_optional_expected_version() {
        let body = JoinBody::parse(&json!({
            "participant_id": "carol", "participant_index": 1,
            "total_time_ms": 60000, "expected_version": 4
        }))
        .expect("valid");
        assert_eq!(body.expected_version, Some(4));
        assert_eq!(body.joiner.id.as_str(), "carol");
        assert_eq!(body.joiner.index, Some(1));
        let refused = JoinBody::parse(&json!({"participant_id": "", "expected_version": -1}))
            .expect_err("two bad fields");
        assert_eq!(refused.message, "2 fields are invalid");
        let fields: Vec<String> = refused.details.map_or_else(Vec::new, |d| {
            d.as_array()
                .map(|a| a.iter().map(|f| f["field"].to_string()).collect())
                .unwrap_or_default()
        });
        assert_eq!(fields, ["\"participant_id\"", "\"expected_version\""]);
        assert!(JoinBody::parse(&Value::Null).is_err());
    }

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
        assert_eq!(
            CommandBody::parse(&json!({"lag_ms": 120})).unwrap().lag_ms,
            Some(120)
        );
        for bad in [json!(-1), json!(10001), json!(1.5), json!("5")] {
            let e = CommandBody::parse(&json!({ "lag_ms": bad })).unwrap_err();
            assert_eq!(e.details.unwrap()[0]["field"], "lag_ms", "{bad}");
        }
    }

    #[test]
    fn add_time_bodies_parse_and_report_every_bad_field() {
        let b = AddTimeBody::parse(
            &json!({"participant_id": "white", "ms": 120000, "reason": "arbiter", "expected_version": 3}),
        )
        .unwrap();
        assert_eq!(
            b.target,
            AddTarget::Participant(ParticipantId::parse("white").unwrap())
        );
        assert_eq!(b.ms.get(), 120_000);
        assert_eq!(b.reason.as_deref(), Some("arbiter"));
        assert_eq!(b.expected_version, Some(3));
        let g = AddTimeBody::parse(&json!({"group_id": "red", "ms": 1})).unwrap();
        assert_eq!(g.target, AddTarget::Group(GroupId::parse("red").unwrap()));

        let fields = |body: Value| -> Vec<String> {
            let e = AddTimeBody::parse(&body).unwrap_err();
            e.details
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["field"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            fields(json!({"ms": 0, "reason": 5, "expected_version": -1})),
            ["expected_version", "participant_id", "ms", "reason"]
        );
        assert_eq!(
            fields(json!({"participant_id": "a", "group_id": "b", "ms": 3600001})),
            ["participant_id", "ms"]
        );
        assert_eq!(
            fields(json!({"group_id": "b", "reason": "x".repeat(201)})),
            ["ms", "reason"]
        );
        assert!(
            AddTimeBody::parse(&json!({"group_id": "b", "ms": 3600000, "reason": "x".repeat(200)}))
                .is_ok()
        );
    }
}
