//! The REST endpoints of contract section 3, one handler per endpoint, each
//! parsing its input into domain types, calling the service, and shaping the
//! answer; errors go through [`crate::error::from_service`].

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use kairos_domain::{Command, SessionConfig, SessionId};
use serde_json::{Value, json};

use crate::auth::authenticate;
use crate::dto::{CommandBody, WireEvent, WireView};
use crate::error::{ApiError, Code, from_service};
use crate::limits::{self, Kind};
use crate::middleware::request_id;
use crate::state::AppState;

/// Request bodies over this many bytes are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most events one history page returns.
pub const MAX_HISTORY_LIMIT: usize = 500;
/// Health probes give the store this long to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Registers the REST routes. Each path is a resource so that a wrong method
/// gets 405 rather than 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::to(method_not_allowed);
    cfg.service(
        web::resource("/v1/sessions")
            .route(web::post().to(create_session))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/sessions/{id}")
            .route(web::get().to(get_session))
            .route(web::delete().to(delete_session))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/sessions/{id}/events")
            .route(web::get().to(session_events))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/sessions/{id}/{command}")
            .route(web::post().to(session_command))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/v1/time")
            .route(web::get().to(time))
            .default_service(not_allowed()),
    )
    .service(web::resource("/health").route(web::get().to(health)))
    .service(web::resource("/ready").route(web::get().to(ready)))
    .service(web::resource("/metrics").route(web::get().to(metrics_on_main)));
}

fn parse_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::field("session_id", "path id must be a UUID"))
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]; an empty body is `null`.
async fn read_json(req: &HttpRequest, mut payload: web::Payload) -> Result<Value, ApiError> {
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
    request_body(content = crate::openapi::SessionConfigDoc, description = "Session config (contract section 3)"),
    responses(
        (status = 201, description = "Created; `Location` names the session", body = crate::openapi::ViewEnvelope),
        (status = 400, description = "VALIDATION_ERROR listing every bad field", body = crate::openapi::ErrorBody),
        (status = 409, description = "SESSION_EXISTS", body = crate::openapi::ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token (authentication on)", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the right", body = crate::openapi::ErrorBody),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store is unreachable (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn create_session(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let actor = authenticate(&req, &state)?;
    let rate = limits::check(&state, Kind::Create, &caller(&state, &actor, &req)).await?;
    let body = read_json(&req, payload).await?;
    let config = SessionConfig::parse(&body).map_err(ApiError::validation)?;
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
        (status = 200, description = "The session view", body = crate::openapi::ViewEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = crate::openapi::ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token (authentication on)", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the right", body = crate::openapi::ErrorBody),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store is unreachable (Retry-After)", body = crate::openapi::ErrorBody),
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
    let actor = authenticate(&req, &state)?;
    let rate = limits::check(&state, Kind::Get, &caller(&state, &actor, &req)).await?;
    let view = state
        .service
        .get(&actor, id)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let mut response = data(WireView::from_view(view, None));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Start, switch, pause, resume, complete or cancel a session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/{command}", tag = "sessions",
    params(
        ("id" = uuid::Uuid, Path, description = "Session id (UUID)"),
        ("command" = crate::openapi::CommandDoc, Path, description = "start | switch | pause | resume | complete | cancel"),
    ),
    request_body(content = Option<crate::openapi::CommandBodyDoc>, description = "Optional: expected_version, and next_participant_id for switch"),
    responses(
        (status = 200, description = "The session after the command", body = crate::openapi::ViewEnvelope),
        (status = 400, description = "VALIDATION_ERROR or INVALID_STATE_TRANSITION", body = crate::openapi::ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND, or an unknown command", body = crate::openapi::ErrorBody),
        (status = 409, description = "CONFLICT: expected_version differs", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token (authentication on)", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the right", body = crate::openapi::ErrorBody),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store is unreachable (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(session_id = %path.0, command = %path.1))]
pub async fn session_command(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let (raw_id, name) = path.into_inner();
    let is_switch = name == "switch";
    let body_value;
    let command = match name.as_str() {
        "start" | "pause" | "resume" | "complete" | "cancel" | "switch" => {
            let id = parse_id(&raw_id)?;
            body_value = read_json(&req, payload).await?;
            let body = CommandBody::parse(&body_value)?;
            if body.next_participant_id.is_some() && !is_switch {
                return Err(ApiError::field(
                    "next_participant_id",
                    "is only accepted by switch",
                ));
            }
            let command = match name.as_str() {
                "start" => Command::Start,
                "pause" => Command::Pause,
                "resume" => Command::Resume,
                "complete" => Command::Complete,
                "cancel" => Command::Cancel,
                _ => Command::Switch {
                    next: body.next_participant_id,
                    lag_ms: None,
                },
            };
            (id, command, body.expected_version)
        }
        _ => {
            return Err(ApiError::new(
                Code::NotFound,
                format!("no such command: {name}"),
            ));
        }
    };
    let (id, command, expected) = command;
    let actor = authenticate(&req, &state)?;
    let rate = if is_switch {
        limits::check(&state, Kind::Switch, &id.to_string()).await?
    } else {
        None
    };
    let started = Instant::now();
    let result = state.service.execute(&actor, id, command, expected).await;
    if is_switch {
        state
            .metrics
            .switch_latency
            .observe(started.elapsed().as_secs_f64());
    }
    let executed = result.map_err(|e| {
        if matches!(e, kairos_domain::ServiceError::Unavailable(_)) {
            state.metrics.store_errors.inc();
        }
        from_service(e, &rid)
    })?;
    let mut response = data(WireView::from_view(
        executed.view,
        executed.expired_participant_id,
    ));
    limits::apply_headers(&mut response, rate.as_ref());
    Ok(response)
}

/// Delete a session (cancelled first if still live).
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "Session id (UUID)")),
    responses(
        (status = 204, description = "Deleted; subscribers got SESSION_DELETED"),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = crate::openapi::ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token (authentication on)", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the right", body = crate::openapi::ErrorBody),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store is unreachable (Retry-After)", body = crate::openapi::ErrorBody),
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
    let actor = authenticate(&req, &state)?;
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
        (status = 200, description = "Events, newest first", body = crate::openapi::EventsEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID, or a bad limit or before_ms", body = crate::openapi::ErrorBody),
        (status = 404, description = "SESSION_NOT_FOUND", body = crate::openapi::ErrorBody),
        (status = 401, description = "UNAUTHORIZED: no valid token (authentication on)", body = crate::openapi::ErrorBody),
        (status = 403, description = "FORBIDDEN: the token lacks the right", body = crate::openapi::ErrorBody),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = crate::openapi::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store is unreachable (Retry-After)", body = crate::openapi::ErrorBody),
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
    let actor = authenticate(&req, &state)?;
    let events = state
        .service
        .history(&actor, id, limit, before_ms)
        .await
        .map_err(|e| from_service(e, &rid))?;
    let wire: Vec<WireEvent> = events.iter().map(WireEvent::from).collect();
    Ok(data(wire))
}

/// Server time, for clients estimating their clock offset.
#[utoipa::path(
    get, path = "/v1/time", tag = "time",
    responses(
        (status = 200, description = "Server time", body = crate::openapi::TimeBody),
        (status = 429, description = "RATE_LIMITED", body = crate::openapi::ErrorBody),
    )
)]
pub async fn time(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ip = state
        .limiter
        .as_ref()
        .and_then(|l| limits::client_ip(&req, &l.limits.trusted_proxies))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let rate = limits::check(&state, Kind::Time, &format!("ip:{ip}")).await?;
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
    let trusted = state
        .limiter
        .as_ref()
        .map_or(&[][..], |l| l.limits.trusted_proxies.as_slice());
    limits::caller_key(actor, req, trusted)
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
        (status = 200, description = "Healthy", body = crate::openapi::HealthBody),
        (status = 503, description = "The primary store or the bus is down", body = crate::openapi::HealthBody),
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
        "audit": (state.audit_health)().as_str(),
        "uptime_s": state.lifecycle.uptime().as_secs(),
        "version": state.settings.version,
    });
    if store && bus {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Readiness for load balancers.
#[utoipa::path(
    get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::ReadyBody),
        (status = 503, description = "Starting, draining, or the store is unreachable", body = crate::openapi::ReadyBody),
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

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(
        Code::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .error_response()
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
