//! Admission of a WebSocket: everything decided before a socket's task
//! starts. Draining and a full instance are answered 503 before the
//! upgrade (they tell a balancer or client to go elsewhere); every other
//! refusal (origin, connect rate, token, per-user cap, session id) is a
//! close frame after it, because a browser's WebSocket API shows close
//! codes but never the status of a refused handshake. The close code comes
//! from the error's wire code (`error::close_code`).

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use std::collections::HashMap;

use kairos_domain::{Actor, SessionId};

use crate::error::{ApiError, Code, close_code};
use crate::limits::{self, Kind};
use crate::presence::Seat;
use crate::state::{AppState, AuthMode};
use crate::ws::connection::{Admitted, close_reason};
use crate::ws::guards::Slot;
use crate::ws::upgrade::{Handover, Takeover};

/// Parses the session id; the error is the close reason. A bad id is
/// reported after the upgrade (close 1008), because a browser's WebSocket
/// API shows close codes but never the status of a refused handshake.
pub(crate) fn parse_target(raw: Option<&str>) -> Result<SessionId, &'static str> {
    let raw = raw.ok_or("sessionId is required")?;
    let id = raw.parse().map_err(|_| "sessionId must be a UUID")?;
    tracing::Span::current().record("session_id", tracing::field::display(&id));
    Ok(id)
}

/// Refuses when the instance is draining or full (503, the only answers
/// given before the upgrade: they tell a load balancer or client to go
/// elsewhere), otherwise answers 101 and leaves the socket's task (or its
/// refusal) to the upgrade service (`ws::upgrade`), which serves it once the
/// 101 is written. Every other refusal (connect rate, token, session id) is
/// a close frame after the upgrade, because a browser's WebSocket API shows
/// close codes but never the status of a refused handshake.
pub(crate) async fn accept(
    req: &HttpRequest,
    state: web::Data<AppState>,
    target: Result<SessionId, &'static str>,
) -> Result<HttpResponse, ApiError> {
    if state.lifecycle.is_draining() {
        return Err(ApiError::unavailable(
            "this instance is shutting down; connect to another",
            1,
        ));
    }
    let mut slot = Slot::acquire(state)?;
    let admitted = match check_origin(req, &slot.state) {
        Ok(()) => admit_connect(req, &slot.state).await,
        Err(e) => Err(e),
    };
    // A place under the per-user cap only for a socket that is otherwise
    // admitted: a refused one costs no call to the shared registry.
    let actor = match slot.state.settings.auth.authenticate_until(req) {
        Ok((actor, until)) => match actor.sub.clone() {
            Some(sub) if admitted.is_ok() && target.is_ok() => {
                slot.claim_user(&sub).await.map(|()| (actor, until))
            }
            _ => Ok((actor, until)),
        },
        Err(e) => Err(e),
    };
    let handshake = |why: String| {
        ApiError::new(
            Code::ValidationError,
            format!("expected a WebSocket handshake: {why}"),
        )
    };
    let response = actix_http::ws::handshake(req.head())
        .map_err(|e| handshake(e.to_string()))?
        .finish();
    // Only a request the upgrade service holds the connection of can be
    // upgraded (every `Upgrade: websocket` request of the HTTP/1 server).
    let takeover = req
        .extensions()
        .get::<Takeover>()
        .cloned()
        .ok_or_else(|| handshake("this connection cannot be upgraded".to_owned()))?;
    let tasks = slot.state.lifecycle.tasks().clone();
    let handover = match (admitted, actor, target) {
        (Ok(()), Ok((actor, until)), Ok(id)) => Handover::Open(Admitted {
            slot: {
                let mut slot = slot;
                slot.seat = Some(Box::new(seat(req, &slot.state, &actor)));
                slot
            },
            id,
            actor,
            expires_ms: until.map_or(u64::MAX, ms_until),
        }),
        // Refused: 1008, or 1013 (try again shortly) when a store the checks
        // need is unreachable (the connect limit, the shared per-user cap).
        // The place is held until the close frame is sent.
        (Err(e), _, _) | (_, Err(e), _) => {
            Handover::Refuse(slot, close_reason(close_code(e.code), &e.message))
        }
        (_, _, Err(why)) => {
            Handover::Refuse(slot, close_reason(close_code(Code::ValidationError), why))
        }
    };
    // Every task is tracked: shutdown waits for its close frame.
    takeover.hand_over(handover, tasks);
    Ok(HttpResponse::from(response).map_into_boxed_body())
}

/// Who the socket is for presence: the token's `sub` and `pid`; with
/// `AUTH_MODE=off` (no token) the `?user=` and `?participant_id=` of the
/// query (contract section 9).
fn seat(req: &HttpRequest, state: &AppState, actor: &Actor) -> Seat {
    if matches!(state.settings.auth, AuthMode::Off) {
        let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map(web::Query::into_inner)
            .unwrap_or_default();
        return Seat::new(
            query.get("user").cloned(),
            query.get("participant_id").cloned(),
        );
    }
    Seat::new(
        actor.sub.clone(),
        actor.pid.as_ref().map(|p| p.as_str().to_owned()),
    )
}

/// Milliseconds from now until `until_s` (seconds since the Unix epoch, by
/// the host clock, as the token was checked by), 0 when already past.
fn ms_until(until_s: i64) -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left = until_s.saturating_mul(1_000).saturating_sub(now_ms);
    u64::try_from(left).unwrap_or(0)
}

/// With `ALLOWED_ORIGINS` set, a browser (which always sends `Origin`) from
/// another origin is refused; clients that send no `Origin` (servers,
/// native apps) are not browsers and are not subject to it.
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(allowed) = &state.settings.allowed_origins else {
        return Ok(());
    };
    match req.headers().get(actix_web::http::header::ORIGIN) {
        None => Ok(()),
        Some(origin) => {
            let origin = origin.to_str().unwrap_or_default();
            if allowed.iter().any(|a| a == origin) {
                Ok(())
            } else {
                Err(ApiError::new(Code::Forbidden, "origin not allowed"))
            }
        }
    }
}

/// Counts a connect against the per-IP limit (contract section 7).
async fn admit_connect(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let ip = limits::client_ip(req, state.trusted_proxies())
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    state
        .rate(Kind::WsConnect, &format!("ip:{ip}"))
        .await
        .map(drop)
}
