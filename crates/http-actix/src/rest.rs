//! The REST endpoints of contract section 3, one handler per endpoint, each
//! parsing its input into domain types, calling the service, and shaping the
//! answer; errors go through `error::from_service`. The seven commands have a
//! path (and an OpenAPI operation) each, and share one body: name to
//! command in `command`, the rest in `AppState::execute`, as the
//! WebSocket's commands do. Participants joining and leaving (contract
//! section 9) have paths of their own and take the same command path.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use kairos_domain::{Command, ParticipantId, SessionConfig, SessionId};
use serde_json::{Value, json};

use crate::command::CommandName;
use crate::dto::{CommandBody, JoinBody, WireEvent, WireView};
use crate::error::{ApiError, Code, from_service, get_only, resource};
use crate::limits::{self, Kind};
use crate::middleware::request_id;
use crate::schemas::{
    AccessErrors, AddTimeBodyDoc, AdminSessionsEnvelope, CommandBodyDoc, CommandErrors, ErrorBody,
    EventsEnvelope, HealthBody, JoinBodyDoc, JoinErrors, ReadyBody, SessionConfigDoc,
    SwitchBodyDoc, TimeBody, ViewEnvelope,
};
use crate::state::AppState;

/// Request bodies over this many bytes are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most events one history page returns.
pub const MAX_HISTORY_LIMIT: usize = 500;
/// The most sessions one page of `GET /v1/admin/sessions` asks the store for.
pub const MAX_ADMIN_LIMIT: usize = 100;
/// The longest cursor `GET /v1/admin/sessions` accepts (the stores' are short).
const MAX_CURSOR_CHARS: usize = 100;
/// Health probes give the store this long to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Registers the switch, before every other route (see [`configure`]).
///
/// The router tries the resources in the order they were registered, and
/// each one with a path parameter is a regular expression run over the
/// path: the switch, the most frequent request by far, comes first
/// (profiled: the five patterns tried before it cost 4 % of a switch's CPU).
pub fn configure_switch(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/sessions/{id}/switch").route(web::post().to(switch_session)));
}

/// Registers the REST routes but the switch ([`configure_switch`]). Each
/// path is a resource so that a wrong method gets 405 rather than 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/sessions").route(web::post().to(create_session)))
        .service(
            resource("/v1/sessions/{id}")
                .route(web::get().to(get_session))
                .route(web::delete().to(delete_session)),
        )
        .service(resource("/v1/sessions/{id}/presence").route(web::get().to(session_presence)))
        .service(resource("/v1/sessions/{id}/events").route(web::get().to(session_events)))
        .service(resource("/v1/sessions/{id}/start").route(web::post().to(start_session)))
        .service(resource("/v1/sessions/{id}/pause").route(web::post().to(pause_session)))
        .service(resource("/v1/sessions/{id}/resume").route(web::post().to(resume_session)))
        .service(resource("/v1/sessions/{id}/complete").route(web::post().to(complete_session)))
        .service(resource("/v1/sessions/{id}/cancel").route(web::post().to(cancel_session)))
        .service(resource("/v1/sessions/{id}/add_time").route(web::post().to(add_time)))
        .service(resource("/v1/sessions/{id}/participants").route(web::post().to(join_participant)))
        .service(
            resource("/v1/sessions/{id}/participants/{participant_id}")
                .route(web::delete().to(leave_participant)),
        )
        // Any other name: 404 whatever the method (after the paths above and
        // `/events`): there is no such resource.
        .service(
            web::resource("/v1/sessions/{id}/{command}").default_service(web::to(unknown_command)),
        )
        .service(resource("/v1/admin/sessions").route(web::get().to(admin_sessions)))
        .service(resource("/v1/time").route(web::get().to(time)))
        .service(get_only("/health", health))
        .service(get_only("/ready", ready))
        .service(get_only("/metrics", metrics_on_main));
}

fn parse_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::field("session_id", "path id must be a UUID"))
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]; an empty body is `null`.
pub(crate) async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("request body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::field("body", format!("unreadable body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::field("body", format!("malformed JSON: {e}")))
}

/// The `{"data": ...}` envelope of every successful body, serialised straight
/// to bytes: `json!` would first copy the whole view into a `Value` tree (about
/// 4% of the switch path's CPU, docs/performance.md). It also keeps the view's
/// fields in their declared order, the one WebSocket messages use, whatever
/// serde_json features the build unifies.
#[derive(serde::Serialize)]
struct Data<T> {
    data: T,
}

fn data(value: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok().json(Data { data: value })
}

/// Create a session.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    request_body(content = SessionConfigDoc, description = "Session config (contract section 3)"),
    responses(
        (status = 201, description = "Created; `Location` names the session", body = ViewEnvelope),
        (status = 400, description = "VALIDATION_ERROR listing every bad field", body = ErrorBody),
        (status = 409, description = "SESSION_EXISTS", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub async fn create_session(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let actor = state.settings.auth.authenticate(&req)?;
    let rate = state
        .rate(Kind::Create, &caller(&state, &actor, &req))
        .await?;
    let body = read_json(&req, payload).await?;
    // With the rules that need the current instant (`start_at_ms`), so that
    // every bad field is named in one answer.
    let config =
        SessionConfig::parse_at(&body, state.service.now_ms()).map_err(ApiError::validation)?;
    let generated = SessionId::from_uuid(uuid::Uuid::new_v4());
    let view = state
        .service
        .create(&actor, config, generated)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let location = format!("/v1/sessions/{}", view.session_id);
    tracing::info!(session_id = %view.session_id, "session created");
    let mut response = HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(Data {
            data: WireView::from_view(view, None),
        });
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Read a session as of now.
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    responses(
        (status = 200, description = "The session view", body = ViewEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path))]
pub async fn get_session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    let actor = state.settings.auth.authenticate(&req)?;
    let rate = state.rate(Kind::Get, &caller(&state, &actor, &req)).await?;
    let view = state
        .service
        .get(&actor, id)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let mut response = data(WireView::from_view(view, None));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Who is connected to a session's WebSockets, counted over every
/// instance (contract section 9): connections and users, for anyone who
/// may read the session.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/presence", tag = "sessions", operation_id = "sessionPresence",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    responses(
        (status = 200, description = "Connections and users", body = crate::schemas::PresenceEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path))]
pub async fn session_presence(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    let actor = state.settings.auth.authenticate(&req)?;
    let rate = state.rate(Kind::Get, &caller(&state, &actor, &req)).await?;
    let presence = state
        .service
        .presence(&actor, id)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let mut response = data(crate::dto::WirePresence::from(presence));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Start a session (`pending` to `running`).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/start", tag = "sessions", operation_id = "startSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "start"))]
pub async fn start_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Start, payload, state).await
}

/// Switch: charge the active clock and activate the next participant (contract section 2).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/switch", tag = "sessions", operation_id = "switchSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<SwitchBodyDoc>, description = "Optional: expected_version, next_participant_id"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "switch"))]
pub async fn switch_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Switch, payload, state).await
}

/// Pause a running session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/pause", tag = "sessions", operation_id = "pauseSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "pause"))]
pub async fn pause_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Pause, payload, state).await
}

/// Resume a paused session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/resume", tag = "sessions", operation_id = "resumeSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "resume"))]
pub async fn resume_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Resume, payload, state).await
}

/// Complete a session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/complete", tag = "sessions", operation_id = "completeSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "complete"))]
pub async fn complete_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Complete, payload, state).await
}

/// Cancel a session (ext); it is kept until its TTL.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/cancel", tag = "sessions", operation_id = "cancelSession",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the command", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "cancel"))]
pub async fn cancel_session(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::Cancel, payload, state).await
}

/// The arbiter's "two more minutes" (ext, contract section 8): raise a
/// participant's or group's bank, in any status but ended. Owner or admin.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/add_time", tag = "sessions", operation_id = "addTime",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = AddTimeBodyDoc, description = "participant_id or group_id, ms, reason?, expected_version?"),
    responses(
        (status = 200, description = "The session after the command (a `time_added` event)", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "add_time"))]
pub async fn add_time(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    session_command(req, &path, CommandName::AddTime, payload, state).await
}

/// A participant joins a live session (ext, contract section 9): at the
/// end of the rotation or at its `participant_index`, in any status but
/// ended. Owner or admin.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/participants", tag = "sessions", operation_id = "addParticipant",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    request_body(content = JoinBodyDoc, description = "One participant object of the session config, and expected_version?"),
    responses(
        (status = 200, description = "The session after the join (a `participant_joined` event)", body = ViewEnvelope),
        JoinErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path, command = "join"))]
pub async fn join_participant(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body = JoinBody::parse(&read_json(&req, payload).await?)?;
    let command = Command::Join(body.joiner);
    run_command(&req, id, command, body.expected_version, &state).await
}

/// A participant leaves a live session (ext, contract section 9); if its
/// turn was on, the turn's time is charged and the next eligible
/// participant plays from that instant; with nobody eligible left the
/// session completes. Owner or admin.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}/participants/{participant_id}", tag = "sessions", operation_id = "removeParticipant",
    params(
        ("id" = uuid::Uuid, Path, description = "Session id (UUID)"),
        ("participant_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "Who leaves"),
    ),
    request_body(content = Option<CommandBodyDoc>, description = "Optional: expected_version"),
    responses(
        (status = 200, description = "The session after the leave (a `participant_left` event, and `session_completed` when nobody eligible is left)", body = ViewEnvelope),
        CommandErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path.0, command = "leave"))]
pub async fn leave_participant(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, raw_participant) = path.into_inner();
    let id = parse_id(&raw_id)?;
    let participant_id = ParticipantId::parse(&raw_participant)
        .map_err(|e| ApiError::field("participant_id", e.to_string()))?;
    let body = CommandBody::parse(&read_json(&req, payload).await?)?;
    for (sent, field) in [
        (body.next_participant_id.is_some(), "next_participant_id"),
        (body.lag_ms.is_some(), "lag_ms"),
    ] {
        if sent {
            return Err(ApiError::field(field, "is only accepted by switch"));
        }
    }
    let command = Command::Leave { participant_id };
    run_command(&req, id, command, body.expected_version, &state).await
}

/// Authenticates, runs a parsed command through [`AppState::execute`] (the
/// one command path) and answers with the view.
async fn run_command(
    req: &HttpRequest,
    id: SessionId,
    command: Command,
    expected: Option<u64>,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(req);
    let actor = state.settings.auth.authenticate(req)?;
    let (executed, rate) = state.execute(&actor, id, command, expected, &rid).await?;
    let mut response = data(WireView::from_view(
        executed.view,
        executed.expired_participant_id,
    ));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// What every command path does: parse, authenticate, then run the
/// command as a WebSocket's would be ([`AppState::execute`]).
async fn session_command(
    req: HttpRequest,
    raw_id: &str,
    name: CommandName,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(raw_id)?;
    let (command, expected) = name.parse(&read_json(&req, payload).await?)?;
    run_command(&req, id, command, expected, &state).await
}

/// `POST /v1/sessions/{id}/<anything else>`: 404, before the id or the
/// token is looked at.
async fn unknown_command(path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::NotFound,
        format!("no such command: {}", path.into_inner().1),
    ))
}

/// Delete a session (cancelled first if still live).
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    responses(
        (status = 204, description = "Deleted, subscribers got SESSION_DELETED; also for an unknown or already deleted id (idempotent)"),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path))]
pub async fn delete_session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    let actor = state.settings.auth.authenticate(&req)?;
    state
        .service
        .delete(&actor, id)
        .await
        .map_err(|e| from_service(e, &rid))?;
    Ok(HttpResponse::NoContent().finish())
}

/// A session's audit events, newest first.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/events", tag = "sessions",
    params(
        ("id" = uuid::Uuid, Path, description = "Session id (UUID)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "At most this many events (1..=500, default 100)"),
        ("before_ms" = Option<i64>, Query, description = "Only events with at_ms before this instant (paging)"),
    ),
    responses(
        (status = 200, description = "Events, newest first", body = EventsEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID, or a bad limit or before_ms", body = ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path))]
pub async fn session_events(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<std::collections::HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    let mut errors = Vec::new();
    let limit = match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                errors.push(kairos_domain::FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_HISTORY_LIMIT}"),
                ));
                0
            }
        },
    };
    let before_ms = match query.get("before_ms") {
        None => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(kairos_domain::FieldError::new(
                    "before_ms",
                    "must be an integer (ms since the Unix epoch)",
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let actor = state.settings.auth.authenticate(&req)?;
    let events = state
        .service
        .history(&actor, id, limit, before_ms)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let wire: Vec<WireEvent> = events.iter().map(WireEvent::from).collect();
    Ok(data(wire))
}

/// Every stored session, a page at a time (ext, the admin view): admin
/// tokens not scoped to a session only. The walk's guarantees and cost are
/// the store's (`SessionStore::list`): follow `next_cursor` until it is
/// `null`; a page may hold fewer sessions than `limit` (even none) while the
/// walk goes on, and on Redis up to one `SCAN` batch more.
#[utoipa::path(
    get, path = "/v1/admin/sessions", tag = "admin", operation_id = "listSessions",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "About this many sessions (1..=100, default 50)"),
        ("cursor" = Option<String>, Query, max_length = 100, description = "The previous page's next_cursor; left out: the first page"),
    ),
    responses(
        (status = 200, description = "Views of the sessions of this page, and the next page's cursor", body = AdminSessionsEnvelope),
        (status = 400, description = "VALIDATION_ERROR: a bad limit or cursor", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub async fn admin_sessions(
    req: HttpRequest,
    query: web::Query<std::collections::HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let mut errors = Vec::new();
    let limit = match query.get("limit") {
        None => 50,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_ADMIN_LIMIT).contains(&n) => n,
            _ => {
                errors.push(kairos_domain::FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_ADMIN_LIMIT}"),
                ));
                0
            }
        },
    };
    let cursor = query.get("cursor").cloned();
    if cursor
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.chars().count() > MAX_CURSOR_CHARS)
    {
        errors.push(kairos_domain::FieldError::new(
            "cursor",
            "is not a cursor this server gave out",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let actor = state.settings.auth.authenticate(&req)?;
    let (views, next_cursor) = state
        .service
        .list(&actor, cursor, limit)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let sessions: Vec<WireView> = views
        .into_iter()
        .map(|v| WireView::from_view(v, None))
        .collect();
    Ok(data(
        json!({ "sessions": sessions, "next_cursor": next_cursor }),
    ))
}

/// Server time, for clients estimating their clock offset.
#[utoipa::path(
    get, path = "/v1/time", tag = "time",
    responses(
        (status = 200, description = "Server time", body = TimeBody),
        (status = 429, description = "RATE_LIMITED", body = ErrorBody),
    )
)]
pub async fn time(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ip = limits::client_ip(&req, state.trusted_proxies())
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let rate = state.rate(Kind::Time, &format!("ip:{ip}")).await?;
    let mut response = HttpResponse::Ok().json(json!({
        "timestamp_ms": state.service.now_ms(),
        "server_version": state.settings.version,
        "drift_tolerance_ms": 50,
    }));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// The rate-limit key of the caller: its token subject, else its IP.
fn caller(state: &AppState, actor: &kairos_domain::Actor, req: &HttpRequest) -> String {
    limits::caller_key(actor, req, state.trusted_proxies())
}

/// The service's dependencies, the store's ping bounded by [`PROBE_TIMEOUT`].
async fn probe(state: &AppState) -> kairos_domain::Health {
    tokio::time::timeout(PROBE_TIMEOUT, state.service.health())
        .await
        .unwrap_or(kairos_domain::Health {
            store: false,
            bus: state.service.bus_healthy(),
        })
}

/// Liveness and dependencies.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = HealthBody),
        (status = 503, description = "The primary store or the bus is down", body = HealthBody),
    )
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let kairos_domain::Health { store, bus } = probe(&state).await;
    if !store {
        state.metrics.store_errors.inc();
    }
    let body = json!({
        "status": if store && bus { "ok" } else { "unavailable" },
        "store": if store { "ok" } else { "unavailable" },
        "bus": if bus { "ok" } else { "unavailable" },
        "audit": audit_str((state.audit_health)()),
        "uptime_s": state.lifecycle.uptime().as_secs(),
        "version": state.settings.version,
    });
    if store && bus {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The wire value of the audit trail's health.
fn audit_str(health: kairos_domain::AuditHealth) -> &'static str {
    match health {
        kairos_domain::AuditHealth::Ok => "ok",
        kairos_domain::AuditHealth::Degraded => "degraded",
        kairos_domain::AuditHealth::Disabled => "disabled",
    }
}

/// Readiness for load balancers.
#[utoipa::path(
    get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyBody),
        (status = 503, description = "Starting, draining, or the store is unreachable", body = ReadyBody),
    )
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let reason = if state.lifecycle.is_draining() {
        Some("draining")
    } else if !state.lifecycle.is_ready() {
        Some("starting")
    } else {
        match probe(&state).await {
            kairos_domain::Health { store: false, .. } => Some("store unreachable"),
            kairos_domain::Health { bus: false, .. } => Some("event bus unreachable"),
            _ => None,
        }
    };
    match reason {
        None => HttpResponse::Ok().json(json!({"status": "ready"})),
        Some(reason) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not_ready", "reason": reason})),
    }
}

/// Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn metrics_on_main(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.settings.metrics_on_main_port {
        Ok(metrics(state).await)
    } else {
        Err(ApiError::new(
            Code::NotFound,
            "metrics are served on METRICS_PORT",
        ))
    }
}

/// Fallback for unknown paths.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(Code::NotFound, format!("no route for {}", req.path())).error_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_wraps_the_value_in_its_declared_field_order() {
        #[derive(serde::Serialize)]
        struct View {
            zulu: u8,
            alpha: &'static str,
        }

        let body = serde_json::to_string(&Data {
            data: View {
                zulu: 1,
                alpha: "a",
            },
        })
        .expect("serialisable");

        assert_eq!(body, r#"{"data":{"zulu":1,"alpha":"a"}}"#);
    }
}
