//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! wire types (never written by hand), served at `/openapi.json` and
//! rendered at `/docs` by a vendored Swagger UI (works offline).

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::dto::{WireEvent, WireGroup, WireParticipant, WireView};

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

/// The error body: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDoc,
}

/// The inside of an error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDoc {
    /// VALIDATION_ERROR, INVALID_STATE_TRANSITION, UNAUTHORIZED, FORBIDDEN,
    /// SESSION_NOT_FOUND, CONFLICT, SESSION_EXISTS, PAYLOAD_TOO_LARGE,
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
}

/// The `{command}` of `POST /v1/sessions/{id}/{command}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandDoc {
    Start,
    Switch,
    Pause,
    Resume,
    Complete,
    Cancel,
}

/// The optional body of a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandBodyDoc {
    /// Apply only at this version (else 409 CONFLICT).
    expected_version: Option<u64>,
    /// switch only: who plays next.
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    next_participant_id: Option<String>,
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

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "SyncKairos",
        description = "Shared clocks for many clients: REST commands, WebSocket updates at `/ws?sessionId=` and `/v1/sessions/{id}/ws` (see docs/api.md)."
    ),
    paths(
        crate::rest::create_session,
        crate::rest::get_session,
        crate::rest::session_command,
        crate::rest::delete_session,
        crate::rest::session_events,
        crate::rest::time,
        crate::rest::health,
        crate::rest::ready,
    ),
    components(schemas(
        ViewEnvelope, EventsEnvelope, ErrorBody, ErrorDoc, SessionConfigDoc, ParticipantConfigDoc,
        GroupConfigDoc, SyncModeDoc, CommandDoc, CommandBodyDoc, TimeBody, HealthBody, ReadyBody, WireView,
        WireParticipant, WireGroup, WireEvent
    )),
    tags(
        (name = "sessions", description = "Create, read and drive sessions"),
        (name = "time", description = "Server time"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

async fn to_docs() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}

/// Registers `/openapi.json` and the `/docs` page (`/docs` redirects to
/// `/docs/`; `/` is the demo page, see [`crate::web`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(to_docs))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document()));
}
