//! Wire shapes that exist only for the OpenAPI document: the envelopes,
//! the error body, the session config and command bodies as a client
//! writes them (the server parses those by hand to report every bad field,
//! see `dto` and `kairos_domain::config`), and the error rows every
//! authenticated endpoint shares ([`AccessErrors`]). Beside `dto`, which
//! holds the shapes the server actually serializes.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

use crate::dto::{WireEvent, WireView};

/// `{"data": view}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewEnvelope {
    data: WireView,
}

/// `{"data": [event, ...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsEnvelope {
    data: Vec<WireEvent>,
}

/// `{"data": {"sessions": [view, ...], "next_cursor"}}` of
/// `GET /v1/admin/sessions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSessionsEnvelope {
    data: AdminSessionsPage,
}

/// One page of the walk over every session.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminSessionsPage {
    /// The views of this page's sessions, as of now.
    sessions: Vec<WireView>,
    /// The next page's cursor; `null` when the walk is complete.
    next_cursor: Option<String>,
}

/// `{"data": {"connections", "users"}}` of `GET /v1/sessions/{id}/presence`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceEnvelope {
    data: crate::dto::WirePresence,
}

/// The error body: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDoc,
}

/// The inside of an error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDoc {
    /// VALIDATION_ERROR, INVALID_STATE_TRANSITION, UNAUTHORIZED, FORBIDDEN,
    /// SESSION_NOT_FOUND, CONFLICT, SESSION_EXISTS, PARTICIPANT_EXISTS, PAYLOAD_TOO_LARGE,
    /// RATE_LIMITED, UNAVAILABLE, INTERNAL_ERROR (and NOT_FOUND,
    /// METHOD_NOT_ALLOWED for unknown routes).
    code: String,
    message: String,
    /// Field errors (`[{"field", "message"}]`, an array), versions (CONFLICT,
    /// an object), or the request id (500, an object).
    details: Option<serde_json::Value>,
}

/// One participant of a session config.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantConfigDoc {
    /// 1 to 64 characters from `[A-Za-z0-9_.:-]`.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    participant_id: String,
    /// Rotation position; list order when left out.
    participant_index: Option<u32>,
    /// Bank in ms (1000..=86400000); required in per_participant.
    #[schema(minimum = 1000, maximum = 86400000)]
    total_time_ms: Option<i64>,
    /// The group (per_group).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    group_id: Option<String>,
}

/// One group of a session config.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupConfigDoc {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    group_id: String,
    /// Bank in ms (1000..=86400000).
    #[schema(minimum = 1000, maximum = 86400000)]
    total_time_ms: i64,
}

/// `sync_mode` (contract section 2).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncModeDoc {
    PerParticipant,
    PerCycle,
    PerGroup,
    Global,
    CountUp,
}

/// The session config of `POST /v1/sessions` (contract section 3).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionConfigDoc {
    /// UUID; generated when left out.
    #[schema(value_type = Option<uuid::Uuid>)]
    session_id: Option<String>,
    sync_mode: SyncModeDoc,
    /// At most 1000, with unique ids and indexes.
    #[schema(max_items = 1000)]
    participants: Option<Vec<ParticipantConfigDoc>>,
    groups: Option<Vec<GroupConfigDoc>>,
    /// Session bank (required in global), 1000..=86400000.
    #[schema(minimum = 1000, maximum = 86400000)]
    total_time_ms: Option<i64>,
    /// Cycle length (required in per_cycle), 1000..=86400000.
    #[schema(minimum = 1000, maximum = 86400000)]
    time_per_cycle_ms: Option<i64>,
    /// 0..=3600000.
    #[schema(minimum = 0, maximum = 3600000)]
    increment_ms: Option<i64>,
    /// Bank cap, or the stopwatch limit in count_up; 1000..=86400000.
    #[schema(minimum = 1000, maximum = 86400000)]
    max_time_ms: Option<i64>,
    /// `{"type": "end_session" | "skip_cycle" | "auto_action", "action"?: string, ...extra}`.
    #[schema(value_type = Option<Object>)]
    action_on_timeout: Option<serde_json::Value>,
    auto_advance: Option<bool>,
    /// At most 10 KiB serialized.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    /// (section 8) At most 10 stages, `per_participant` and `per_group`;
    /// with stages the session-level `increment_ms` must be absent or 0.
    #[schema(max_items = 10)]
    stages: Option<Vec<StageDoc>>,
    /// (section 8) The session-level delay without `stages`, 0..=600000;
    /// above 0 it needs a `delay_mode` other than `none`.
    #[schema(minimum = 0, maximum = 600000)]
    delay_ms: Option<i64>,
    /// (section 8) Default `none`.
    delay_mode: Option<DelayModeDoc>,
    /// (section 8) `{"enabled": bool}`; default off.
    lag_compensation: Option<LagCompensationDoc>,
    /// (section 8) At most 5 distinct thresholds, each 1000..=3600000.
    #[schema(max_items = 5)]
    warnings_ms: Option<Vec<i64>>,
    /// (section 8) The session starts by itself at this instant (ms since
    /// the Unix epoch), from now to 7 days ahead.
    start_at_ms: Option<i64>,
    /// (section 9) Pause by itself when the active participant, having
    /// connected, has had no connection for this long while the session
    /// runs; 1000..=600000.
    #[schema(minimum = 1000, maximum = 600000)]
    auto_pause_on_disconnect_ms: Option<i64>,
}

/// `delay_mode` (contract section 8).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DelayModeDoc {
    None,
    Simple,
    Bronstein,
}

/// One stage of a session config (contract section 8).
#[derive(Debug, Serialize, ToSchema)]
pub struct StageDoc {
    /// 1..=1000; required on every stage but the last, absent on the last.
    #[schema(minimum = 1, maximum = 1000)]
    moves: Option<u32>,
    /// Added to the bank when a clock enters this stage, 0..=86400000;
    /// absent or 0 on the first.
    #[schema(minimum = 0, maximum = 86400000)]
    add_ms: Option<i64>,
    /// 0..=3600000.
    #[schema(minimum = 0, maximum = 3600000)]
    increment_ms: Option<i64>,
    /// 0..=600000; above 0 it needs a `delay_mode` other than `none`.
    #[schema(minimum = 0, maximum = 600000)]
    delay_ms: Option<i64>,
    delay_mode: Option<DelayModeDoc>,
}

/// `lag_compensation` of a session config.
#[derive(Debug, Serialize, ToSchema)]
pub struct LagCompensationDoc {
    enabled: bool,
}

/// The optional body of `start`, `pause`, `resume`, `complete` and `cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandBodyDoc {
    /// Apply only at this version (else 409 CONFLICT).
    expected_version: Option<u64>,
}

/// The optional body of `switch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SwitchBodyDoc {
    /// Apply only at this version (else 409 CONFLICT).
    expected_version: Option<u64>,
    /// Who plays next; by default the next in `participant_index` order
    /// that has not expired.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    next_participant_id: Option<String>,
    /// (section 8) The network delay the client measured for this move,
    /// 0..=10000 ms; used when the session has lag compensation on.
    #[schema(minimum = 0, maximum = 10000)]
    lag_ms: Option<u32>,
}

/// The body of `add_time` (contract section 8): exactly one of
/// `participant_id` and `group_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddTimeBodyDoc {
    /// Whose bank (in `per_group` the participant's group's, in `global` the session's).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    participant_id: Option<String>,
    /// A group's bank (`per_group`).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    group_id: Option<String>,
    /// How much, 1..=3600000 ms (capped at `max_time_ms`).
    #[schema(minimum = 1, maximum = 3600000)]
    ms: i64,
    /// Why, at most 200 characters; echoed in the `time_added` event.
    #[schema(max_length = 200)]
    reason: Option<String>,
    /// Apply only at this version (else 409 CONFLICT).
    expected_version: Option<u64>,
}

/// The body of `POST /v1/sessions/{id}/participants` (contract section
/// 9): one participant object of the session config.
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinBodyDoc {
    /// 1 to 64 characters from `[A-Za-z0-9_.:-]`; taken: 409 PARTICIPANT_EXISTS.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    participant_id: String,
    /// Where in the rotation: the participants at or after this index move
    /// up by one. Left out: the end of the rotation.
    participant_index: Option<u32>,
    /// Bank in ms (1000..=86400000); required in per_participant.
    #[schema(minimum = 1000, maximum = 86400000)]
    total_time_ms: Option<i64>,
    /// The group (required in per_group, and it must be one of the session's).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    group_id: Option<String>,
    /// Apply only at this version (else 409 CONFLICT).
    expected_version: Option<u64>,
}

/// `GET /v1/time`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimeBody {
    timestamp_ms: i64,
    server_version: String,
    drift_tolerance_ms: i64,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// ok | unavailable
    status: String,
    /// ok | unavailable
    store: String,
    /// ok | unavailable
    bus: String,
    /// ok | degraded | disabled
    audit: String,
    uptime_s: u64,
    version: String,
}

/// `GET /ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    /// ready | not_ready
    status: String,
    /// Why not ready: starting, draining, store unreachable.
    reason: Option<String>,
}

/// The error rows of every endpoint that authenticates, counts a rate
/// limit and reads the store: 401, 403, 429 and 503, each an [`ErrorBody`].
/// Handlers list it once beside their own rows.
#[derive(Debug)]
pub struct AccessErrors;

impl IntoResponses for AccessErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("401", "UNAUTHORIZED: no valid token (authentication on)"),
            ("403", "FORBIDDEN: the token lacks the right"),
            ("429", "RATE_LIMITED (Retry-After)"),
            ("503", "UNAVAILABLE: the store is unreachable (Retry-After)"),
        ]
        .into_iter()
        .map(|(status, description)| (status.to_owned(), error_response(description)))
        .collect()
    }
}

/// The error rows of the seven command paths: 400, 404 and 409, then
/// [`AccessErrors`].
#[derive(Debug)]
pub struct CommandErrors;

impl IntoResponses for CommandErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut rows: BTreeMap<String, RefOr<Response>> = [
            ("400", "VALIDATION_ERROR or INVALID_STATE_TRANSITION"),
            ("404", "SESSION_NOT_FOUND"),
            ("409", "CONFLICT: expected_version differs"),
        ]
        .into_iter()
        .map(|(status, description)| (status.to_owned(), error_response(description)))
        .collect();
        rows.extend(AccessErrors::responses());
        rows
    }
}

/// The error rows of joining a session: [`CommandErrors`], with 409 for a
/// taken participant id too.
#[derive(Debug)]
pub struct JoinErrors;

impl IntoResponses for JoinErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut rows = CommandErrors::responses();
        rows.insert(
            "409".to_owned(),
            error_response(
                "CONFLICT: expected_version differs; PARTICIPANT_EXISTS: the participant_id is taken",
            ),
        );
        rows
    }
}

/// One error row: `description`, an [`ErrorBody`] as JSON.
fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}
