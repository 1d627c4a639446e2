//! Where a WebSocket leaves actix-http: the upgrade service of the HTTP/1
//! server. Without it the 101 is a streaming response and actix-http's
//! dispatcher keeps running for the whole life of the socket, with its read
//! and write buffers (8 KiB each, 16 of an idle socket's 22.5 KiB of heap,
//! see docs/performance.md); nothing in actix-web lets a handler release
//! them.
//!
//! actix-http hands every request that asks for `Upgrade: websocket` (and
//! `CONNECT`) to this service together with the connection itself. The
//! request still runs through the actix-web application, middleware and
//! handlers included, so admission (origin, limits, token, per-user cap,
//! 503s) is decided exactly as for any request; the WebSocket handler
//! leaves a `Handover` in the request's `Takeover` cell. Then the
//! response head is written here, and on a 101 the raw TCP stream (with any
//! bytes the client already sent after its handshake) becomes a
//! tungstenite socket (`ws::socket`) with small buffers; the HTTP/1 dispatcher and its
//! buffers are dropped. Any other answer (a refusal before the upgrade, a
//! 404, a `CONNECT`) is written whole and the connection closed, since the
//! dispatcher cannot take it back.

use std::cell::RefCell;
use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1;
use actix_http::{ConnectionType, Request, StatusCode};
use actix_web::HttpMessage;
use actix_web::web::Bytes;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_util::task::TaskTracker;

use crate::wire::MAX_MESSAGE_BYTES;
use crate::ws::connection::{Admitted, close};
use crate::ws::guards::Slot;
use crate::ws::socket::Socket;

/// What the WebSocket handler decided for an upgraded connection.
#[derive(Debug)]
pub(crate) enum Handover {
    /// Serve the socket.
    Open(Admitted),
    /// Send this close frame, then end; the slot is held until it is sent.
    Refuse(Slot, CloseFrame),
}

/// The cell an upgrade request carries in its extensions, in which the
/// WebSocket handler leaves its [`Handover`] together with the tracker the
/// socket's task must be spawned on. Only requests that came through
/// [`serve_upgrade`] carry one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Takeover(Rc<RefCell<Option<(Handover, TaskTracker)>>>);

impl Takeover {
    /// The handler's decision for this connection.
    pub(crate) fn hand_over(&self, handover: Handover, tasks: TaskTracker) {
        *self.0.borrow_mut() = Some((handover, tasks));
    }

    fn take(&self) -> Option<(Handover, TaskTracker)> {
        self.0.borrow_mut().take()
    }
}

/// The read buffer of an idle socket, bytes. tungstenite allocates it up
/// front and keeps it, and reads at most this much per syscall: a pong or a
/// frame header fits, a client message (small JSON) takes a few reads into
/// room reserved for its whole length. (At 128 it cost every idle socket
/// 96 bytes more.)
const READ_BUFFER: usize = 32;

/// The protocol limits of every socket: frames and messages up to 10 KiB
/// (1009 beyond), nothing buffered before a write.
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Runs one upgrade request through `app` (the actix-web application), writes
/// its answer, and on a 101 turns the connection into a WebSocket served by
/// its own task. `app` is any service that answers a request the way the
/// application does.
pub(crate) async fn serve_upgrade<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    S: actix_service::Service<
            Request,
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    B: MessageBody + 'static,
{
    let takeover = Takeover::default();
    req.extensions_mut().insert(takeover.clone());
    let response: actix_http::Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.map_into_boxed_body().into(),
        Err(e) => e.error_response().into(),
    };
    let (mut head, body) = response.into_parts();
    let handover = takeover.take();
    match (head.status(), handover) {
        (StatusCode::SWITCHING_PROTOCOLS, Some((handover, tasks))) => {
            framed
                .send(h1::Message::Item((head, BodySize::None)))
                .await?;
            let parts = framed.into_parts();
            let socket = Socket::new(parts.io, parts.read_buf.to_vec(), socket_config());
            // The dispatcher's buffers go with `parts`.
            drop((parts.read_buf, parts.write_buf));
            match handover {
                Handover::Open(admitted) => {
                    actix_web::rt::spawn(tasks.track_future(admitted.serve(socket)));
                }
                Handover::Refuse(slot, reason) => {
                    actix_web::rt::spawn(tasks.track_future(close(socket, reason, slot)));
                }
            }
            Ok(())
        }
        _ => {
            head.head_mut().set_connection_type(ConnectionType::Close);
            let bytes: Bytes = match body.size() {
                BodySize::None => Bytes::new(),
                _ => actix_http::body::to_bytes(body).await.unwrap_or_default(),
            };
            let size = if head.status() == StatusCode::SWITCHING_PROTOCOLS {
                BodySize::None
            } else {
                BodySize::Sized(bytes.len() as u64)
            };
            framed.send(h1::Message::Item((head, size))).await?;
            if !bytes.is_empty() {
                framed.send(h1::Message::Chunk(Some(bytes))).await?;
            }
            framed.send(h1::Message::Chunk(None)).await?;
            framed.close().await?;
            Ok(())
        }
    }
}
