//! The WebSocket endpoint of contract section 4: live session state pushed to
//! clients, and the clock commands (`SWITCH`, `PAUSE`, `RESUME`) for clients
//! that would rather not open a second connection for REST.
//!
//! One task per socket, on the TCP stream itself (the HTTP/1 dispatcher is
//! gone after the handshake, see [`upgrade`]). It owns everything the
//! socket needs and nothing more: the bus subscription is shared per session through the hub,
//! and every service call is boxed so its (large) future is allocated only
//! while the call runs, not for the whole life of an idle socket.
//!
//! Close codes: 1000 after `SESSION_DELETED` (and in answer to a client's
//! close), 1001 on shutdown, 1007 for text that is not UTF-8, 1008 for a bad
//! session id, a refused token or read, a token that expired while the
//! socket was open (reason `token expired`), or too many messages, 1009 for a
//! frame or message over 10 KiB, 1011 for a silent client or an unexpected
//! fault, 1013 when the store or bus is unreachable at connect (the session,
//! the connect limit or the per-user cap cannot be checked), 4404 for an
//! unknown session.

//! Refusal codes come from the error mapping (`error::close_code`), as
//! status codes do.
//!
//! # Layout
//!
//! - [`admission`]: the handshake: draining and capacity (503 before the
//!   upgrade), origin, connect rate, token, per-user cap, session id
//!   (close frames after it).
//! - [`connection`]: one socket's task: the loop over client frames, hub
//!   frames and heartbeats, and the clock commands.
//! - [`guards`]: what keeps a socket within bounds: its connection slot,
//!   the version gate, the message rate window.
//! - [`upgrade`]: where a socket leaves actix-http: the HTTP/1 server's
//!   upgrade service runs the handshake through the application, writes
//!   the 101 and hands the TCP stream to the socket's task
//!   (tungstenite, `socket`), so no HTTP/1 buffers stay with an idle socket.
//! - [`socket`]: the WebSocket over the TCP stream (tungstenite's protocol,
//!   the stream's own readiness for waking, no waker `Arc`s).
//!
//! The messages themselves (types, parser, encoders) are `wire`'s.

pub mod admission;
pub mod connection;
pub mod guards;
pub mod socket;
pub mod upgrade;

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::state::AppState;
use crate::ws::admission::{accept, parse_target};

/// `GET /ws?sessionId=<uuid>[&token=<jwt>]`. The query is never logged: it
/// may carry a token.
#[tracing::instrument(skip_all, fields(session_id = tracing::field::Empty))]
pub async fn ws_query(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let target = parse_target(query.get("sessionId").map(String::as_str));
    accept(&req, state, target).await
}

/// `GET /v1/sessions/{id}/ws` (ext): the same socket with the id in the path.
#[tracing::instrument(skip_all, fields(session_id = tracing::field::Empty))]
pub async fn ws_path(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let target = parse_target(Some(path.as_str()));
    accept(&req, state, target).await
}
