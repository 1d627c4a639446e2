//! One socket's task: after admission, the loop that serves a socket until
//! it must end, over three sources (client frames, the session's hub
//! frames, the heartbeat), and the clock commands a client sends, run as
//! REST runs them (`AppState::execute`).
//!
//! Kept small on purpose (contract target: 50,000 idle sockets at <= 4 KiB
//! each; the project's, 2 KiB): every service call is boxed so its (large)
//! future is allocated only while the call runs, not for the whole life of
//! an idle socket, and text frames are written straight from their
//! (shared) text to the TCP stream, so no write buffer outlives a write.

use std::io::IoSlice;
use std::time::Duration;

use kairos_domain::{Actor, Command, ServiceError, SessionId, SessionView};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};

use crate::error::{ApiError, CLOSE_NO_SUCH_SESSION, Code, close_code, from_service};
use crate::hub::{Frame, Member};
use crate::state::AppState;
use crate::wire::{self, ClientMessage, STATE_SYNC, parse_client_message};
use crate::ws::guards::{RateWindow, Slot, VersionGate};

pub(crate) use crate::ws::socket::Socket;

/// How long a close frame may wait for room in the socket, and then for the
/// peer's answering close: a peer that stopped reading must not keep its
/// task alive.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends a close frame, then lets go of `slot` (the socket's place is held
/// until its close frame is sent, as long as [`CLOSE_TIMEOUT`] at most),
/// then waits (for the rest of [`CLOSE_TIMEOUT`]) for the peer's answer,
/// reading and discarding whatever it still sends, so that closing never
/// resets a connection whose peer is still writing (the close frame would
/// be lost with the reset). After a close from the peer this sends the
/// answer tungstenite queued.
pub(crate) async fn close(mut socket: Socket, reason: CloseFrame, slot: Slot) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let sent = tokio::time::timeout_at(deadline, socket.close(reason)).await;
    drop(slot);
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout_at(deadline, async {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

/// A close frame with `code` and `why`.
pub(crate) fn close_reason(code: u16, why: &str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: why.to_owned().into(),
    }
}

/// Why a socket's task ends.
#[derive(Debug)]
enum Exit {
    /// Send this close frame, then stop.
    Close(CloseFrame),
    /// The peer is gone or stopped reading: nothing more can be sent.
    Dead,
}

impl Exit {
    fn close(code: CloseCode, why: &str) -> Self {
        Self::Close(close_reason(code.into(), why))
    }
}

/// A socket admitted by the handshake, waiting for its TCP stream (see
/// `ws::upgrade`): its slot, session, caller and token expiry.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) slot: Slot,
    pub(crate) id: SessionId,
    pub(crate) actor: Actor,
    /// When the token stops being accepted, in ms from now (`u64::MAX`
    /// without a token).
    pub(crate) expires_ms: u64,
}

impl Admitted {
    /// The socket's task over `socket`.
    pub(crate) fn serve(self, socket: Socket) -> impl Future<Output = ()> + 'static {
        let mut connection = Connection::new(self.slot, socket, self.id, self.actor);
        connection.expires_ms = connection.elapsed_ms().saturating_add(self.expires_ms);
        connection.serve()
    }
}

/// Everything one socket keeps between messages. Kept small on purpose
/// (contract target: 50,000 idle sockets at <= 4 KiB each): no buffers
/// beyond tungstenite's small read buffer and a message in progress,
/// no copy of the session.
pub(crate) struct Connection {
    slot: Slot,
    socket: Socket,
    id: SessionId,
    actor: Actor,
    gate: VersionGate,
    rate: RateWindow,
    /// When the client last sent any frame (pongs included), in ms since
    /// the instance started (the lifecycle's clock, shared by every socket:
    /// no start time of its own in each).
    last_seen_ms: u64,
    /// When the token stops being accepted, in ms since the instance started
    /// (`u64::MAX` without a token). The socket closes with 1008 then.
    pub(crate) expires_ms: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(slot: Slot, socket: Socket, id: SessionId, actor: Actor) -> Self {
        let now_ms = uptime_ms(&slot.state);
        Self {
            slot,
            socket,
            id,
            actor,
            gate: VersionGate::default(),
            rate: RateWindow::default(),
            last_seen_ms: now_ms,
            expires_ms: u64::MAX,
        }
    }

    /// Closes with 1008 once the token has expired. Checked on every tick
    /// (so within one heartbeat period of the expiry) and before every data
    /// frame (so no message is acted on under an expired token). A client
    /// reconnects with a fresh token, as it would after any close.
    fn check_token(&self) -> Result<(), Exit> {
        if self.elapsed_ms() >= self.expires_ms {
            return Err(Exit::close(CloseCode::Policy, "token expired"));
        }
        Ok(())
    }

    /// The socket's task.
    ///
    /// No span: one that lives as long as the socket is paid by every idle
    /// connection (in the task's size, and in the subscriber's registry
    /// when enabled), and `#[tracing::instrument]` on an `async fn` nests
    /// the body in a second future holding its own copy of `self`. The
    /// socket's log lines name the session instead.
    /// Written as a function returning an `async move` block on purpose:
    /// as an `async fn` taking `self` by value the task holds `self` twice
    /// (1,424 bytes instead of 928 in a debug build).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn serve(mut self) -> impl Future<Output = ()> + 'static {
        async move {
            let exit = self.run().await;
            tracing::debug!(session_id = %self.id, ?exit, "WebSocket closing");
            if let Exit::Close(reason) = exit {
                Box::pin(close(self.socket, reason, self.slot)).await;
            }
        }
    }

    fn state(&self) -> &AppState {
        &self.slot.state
    }

    fn now_ms(&self) -> i64 {
        self.state().service.now_ms()
    }

    fn elapsed_ms(&self) -> u64 {
        uptime_ms(self.state())
    }

    /// Serves the socket until it must end. Every await besides the idle
    /// `select!` is boxed: a task's size is that of its largest suspended
    /// state, paid by every idle socket, so the rare large states (a
    /// service call, a send with its timer) are allocated only while they
    /// run.
    async fn run(&mut self) -> Exit {
        // Beating at the shorter of the two periods bounds how late a silent
        // client is noticed, whatever the configuration.
        let settings = &self.state().settings;
        let period = settings
            .ws_heartbeat_interval
            .min(settings.ws_connection_timeout)
            .max(Duration::from_millis(10));
        // One receiver for the instance's heartbeat and its call to close
        // (`crate::pulse`): no timer of its own in an idle socket.
        let mut beat = self.state().lifecycle.heartbeat(period);
        if beat.borrow_and_update().closing {
            return Exit::close(CloseCode::Away, "server shutting down");
        }
        let mut member = match Box::pin(self.connect()).await {
            Ok(member) => member,
            Err(exit) => return exit,
        };

        loop {
            let step = tokio::select! {
                // The heartbeat first: once closing is signalled nothing
                // else matters.
                biased;
                changed = beat.changed() => match changed {
                    Ok(()) if !beat.borrow_and_update().closing => {
                        Box::pin(self.on_tick()).await
                    }
                    // Closed or closing: the instance is going away.
                    _ => Err(Exit::close(CloseCode::Away, "server shutting down")),
                },
                message = self.socket.next() => {
                    self.last_seen_ms = self.elapsed_ms();
                    match message {
                        Some(Ok(message)) => Box::pin(self.on_client_frame(message)).await,
                        Some(Err(e)) => Err(protocol_exit(e)),
                        None => Err(Exit::Dead),
                    }
                }
                frame = member.recv() => match frame {
                    Some(frame) => Box::pin(self.on_hub_frame(frame)).await,
                    None => Err(Exit::close(CloseCode::Error, "session channel closed")),
                },
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// Joins the session's fan-out, then sends `CONNECTED` and `STATE_SYNC`.
    /// Subscribing comes before loading the snapshot: every version
    /// committed after the load is then on its way to this socket, and the
    /// ones before it are skipped by version.
    async fn connect(&mut self) -> Result<Member, Exit> {
        let member = match self.state().hub.join(self.id).await {
            Ok(member) => member,
            Err(e) => {
                tracing::warn!(session_id = %self.id, error = %e, "cannot subscribe to the session");
                return Err(refusal(&ApiError::unavailable(
                    "event bus unavailable; retry shortly",
                    1,
                )));
            }
        };
        let view = match Box::pin(self.state().service.get(&self.actor, self.id)).await {
            Ok(view) => view,
            Err(e) => return Err(connect_refusal(e)),
        };
        if let Some(mut seat) = self.slot.seat.take() {
            let state = self.slot.state.clone();
            Box::pin(
                state
                    .presence
                    .join(&state.service, &mut seat, self.id, &view),
            )
            .await;
            self.slot.seat = Some(seat);
        }
        let connected = wire::connected_message(self.id, self.now_ms());
        self.send(connected).await?;
        self.send_sync(view, true).await?;
        Ok(member)
    }

    /// A message from the client. Every data message (text, binary) counts
    /// against the rate limit; control frames do not, so the client's
    /// automatic pongs never count. Fragments arrive reassembled (at most
    /// 10 KiB in all, see `ws::upgrade::socket_config`); a ping is answered
    /// by tungstenite, which queues the pong and sends it with the
    /// next read or write.
    async fn on_client_frame(&mut self, message: Message) -> Result<(), Exit> {
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            self.check_token()?;
            let limit = self.state().settings.ws_messages_per_minute;
            let now = self.elapsed_ms();
            if !self.rate.hit(now, limit) {
                return Err(Exit::close(
                    CloseCode::Policy,
                    "message rate limit exceeded",
                ));
            }
        }
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => self.on_binary().await,
            Message::Ping(_) => self.flush().await,
            Message::Close(_) => Err(Exit::close(CloseCode::Normal, "closing")),
            Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_binary(&mut self) -> Result<(), Exit> {
        let error = ApiError::new(
            Code::ValidationError,
            "binary frames are not supported; send JSON text",
        );
        self.send_error(&error, None).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Exit> {
        match parse_client_message(text) {
            Ok(ClientMessage::Ping { client_time_ms }) => {
                let pong = wire::pong_message(self.now_ms(), client_time_ms);
                self.send(pong).await
            }
            Ok(ClientMessage::Reconnect) => self.resync(true).await,
            Ok(ClientMessage::Command {
                command,
                expected_version,
                request_id,
            }) => self.command(command, expected_version, request_id).await,
            Err(rejected) => {
                self.send_error(&rejected.error, rejected.request_id.as_ref())
                    .await
            }
        }
    }

    /// Runs a client command as REST runs it ([`AppState::execute`]).
    /// Success is not answered directly: the commit's bus message reaches
    /// this socket as `STATE_UPDATE` (with every intermediate version, e.g.
    /// a timeout the command found), like every other subscriber.
    async fn command(
        &mut self,
        command: Command,
        expected: Option<u64>,
        request_id: Option<Value>,
    ) -> Result<(), Exit> {
        // The id that 500 answers quote, and that the log line carries.
        let rid = uuid::Uuid::new_v4().simple().to_string();
        let result = Box::pin(
            self.state()
                .execute(&self.actor, self.id, command, expected, &rid),
        )
        .await;
        match result {
            Ok((executed, _)) => {
                // Without a healthy bus the update may never arrive: send
                // the result itself (the gate drops it if the bus was faster).
                if self.state().service.bus_healthy() {
                    Ok(())
                } else {
                    self.send_sync(executed.view, false).await
                }
            }
            Err(error) => self.send_error(&error, request_id.as_ref()).await,
        }
    }

    async fn on_hub_frame(&mut self, frame: Frame) -> Result<(), Exit> {
        match frame {
            Frame::Update { version, texts } => {
                if self.gate.admit(version) {
                    self.send_together(&texts).await?;
                }
                Ok(())
            }
            Frame::Sync { version, text } => {
                if self.gate.admit(version) {
                    self.send_shared(&text).await?;
                }
                Ok(())
            }
            Frame::Event { sub, text } => {
                let own = self.slot.seat.as_ref().is_some_and(|s| s.sub() == &*sub);
                if own {
                    return Ok(());
                }
                self.send_shared(&text).await
            }
            Frame::Deleted { text } => {
                self.send_shared(&text).await?;
                Err(Exit::close(CloseCode::Normal, "session deleted"))
            }
            Frame::Gone => Err(Exit::Close(close_reason(
                CLOSE_NO_SUCH_SESSION,
                "session not found",
            ))),
            Frame::Resync => self.resync(false).await,
        }
    }

    /// Pings, or closes a client silent for `timeout`. 1011 rather than
    /// 1000: from the server's side the connection failed, and SDKs treat
    /// 1000 as "do not reconnect" while a client that still hears this
    /// should reconnect. (A silent client rarely hears anything.)
    async fn on_tick(&mut self) -> Result<(), Exit> {
        self.check_token()?;
        let timeout = self.state().settings.ws_connection_timeout;
        let silent = Duration::from_millis(self.elapsed_ms().saturating_sub(self.last_seen_ms));
        if silent >= timeout {
            return Err(Exit::close(CloseCode::Error, "connection timed out"));
        }
        self.write_frame(OPCODE_PING, b"").await
    }

    /// Sends a fresh snapshot from the store. `force` (RECONNECT) sends it
    /// even when the client already has this version.
    async fn resync(&mut self, force: bool) -> Result<(), Exit> {
        match Box::pin(self.state().service.get(&self.actor, self.id)).await {
            Ok(view) => self.send_sync(view, force).await,
            Err(e) => {
                let rid = uuid::Uuid::new_v4().simple().to_string();
                let error = from_service(e, &rid);
                match error.code {
                    // The session is gone or no longer readable: close.
                    Code::SessionNotFound | Code::Forbidden => Err(refusal(&error)),
                    // A passing fault: the socket stays, the client hears why.
                    _ => self.send_error(&error, None).await,
                }
            }
        }
    }

    async fn send_sync(&mut self, view: SessionView, force: bool) -> Result<(), Exit> {
        let version = view.version;
        if !(self.gate.admit(version) || force) {
            return Ok(());
        }
        let text = wire::state_message(STATE_SYNC, self.id, self.now_ms(), view);
        self.send(text).await
    }

    async fn send_error(
        &mut self,
        error: &ApiError,
        request_id: Option<&Value>,
    ) -> Result<(), Exit> {
        let text = wire::error_message(error, request_id);
        self.send(text).await
    }

    /// Sends one text frame.
    async fn send(&mut self, text: String) -> Result<(), Exit> {
        self.send_shared(&text).await
    }

    /// Sends a text frame, e.g. one the hub serialized once for every
    /// socket of the session.
    async fn send_shared(&mut self, text: &str) -> Result<(), Exit> {
        self.write_frame(OPCODE_TEXT, text.as_bytes()).await?;
        self.state().metrics.ws_messages_sent.inc();
        Ok(())
    }

    /// Sends the text frames of one update (its `STATE_UPDATE` and its
    /// `EVENT`s) in one vectored write, so they leave in one segment where
    /// they fit instead of one system call each.
    async fn send_together(&mut self, texts: &[Box<str>]) -> Result<(), Exit> {
        if let [one] = texts {
            return self.send_shared(one).await;
        }
        let heads: Vec<([u8; 10], usize)> = texts
            .iter()
            .map(|text| {
                let mut head = [0_u8; 10];
                let len = frame_header(&mut head, OPCODE_TEXT, text.len());
                (head, len)
            })
            .collect();
        let mut bufs: Vec<IoSlice<'_>> = heads
            .iter()
            .zip(texts)
            .flat_map(|((head, len), text)| {
                [IoSlice::new(&head[..*len]), IoSlice::new(text.as_bytes())]
            })
            .collect();
        self.write_vectored_all(&mut bufs).await?;
        self.state()
            .metrics
            .ws_messages_sent
            .inc_by(u64::try_from(texts.len()).unwrap_or(u64::MAX));
        Ok(())
    }

    /// Sends what tungstenite has queued (the pong to a client's ping).
    async fn flush(&mut self) -> Result<(), Exit> {
        let timeout = self.state().settings.ws_connection_timeout;
        match tokio::time::timeout(timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Exit::Dead),
        }
    }

    /// Writes one unfragmented frame from the server (so unmasked) straight
    /// from `payload` to the TCP stream, header and payload in one vectored
    /// write: nothing is copied into a buffer the socket keeps. Whatever
    /// tungstenite queued goes first, so frames never interleave. A
    /// client that leaves its receive window full for a whole connection
    /// timeout is treated as gone, so a stalled reader cannot pin its task
    /// forever.
    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Exit> {
        let mut head = [0_u8; 10];
        let len = frame_header(&mut head, opcode, payload.len());
        let mut bufs = [IoSlice::new(&head[..len]), IoSlice::new(payload)];
        self.write_vectored_all(&mut bufs).await
    }

    /// Writes whole frames (headers and payloads, in order) to the TCP
    /// stream, after whatever tungstenite queued, within the connection
    /// timeout (see [`Self::write_frame`]).
    async fn write_vectored_all(&mut self, bufs: &mut [IoSlice<'_>]) -> Result<(), Exit> {
        let timeout = self.state().settings.ws_connection_timeout;
        let socket = &mut self.socket;
        let write = async move {
            socket.flush().await.map_err(|_| Exit::Dead)?;
            let io = socket.tcp();
            let mut bufs = bufs;
            while !bufs.is_empty() {
                match io.write_vectored(bufs).await {
                    Ok(0) | Err(_) => return Err(Exit::Dead),
                    Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(Exit::Dead),
        }
    }
}

/// Milliseconds since the instance started: the clock of every socket's
/// silence, token expiry and message rate.
fn uptime_ms(state: &AppState) -> u64 {
    u64::try_from(state.lifecycle.uptime().as_millis()).unwrap_or(u64::MAX)
}

/// The opcode of a text frame (RFC 6455, section 5.2).
const OPCODE_TEXT: u8 = 0x1;
/// The opcode of a ping.
const OPCODE_PING: u8 = 0x9;

/// Writes the header of a final, unmasked frame of `len` payload bytes into
/// `head` and returns its length (2, 4 or 10 bytes).
fn frame_header(head: &mut [u8; 10], opcode: u8, len: usize) -> usize {
    head[0] = 0x80 | opcode;
    if len < 126 {
        // Below 126, so the cast cannot truncate.
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// How a failed first read ends the socket: the close code of its wire
/// code (4404, 1008, 1013 or 1011), the error's message as the reason.
fn connect_refusal(e: ServiceError) -> Exit {
    let rid = uuid::Uuid::new_v4().simple().to_string();
    refusal(&from_service(e, &rid))
}

/// The close frame for an error that ends a socket.
fn refusal(error: &ApiError) -> Exit {
    Exit::Close(close_reason(close_code(error.code), &error.message))
}

/// How a broken frame ends the socket.
fn protocol_exit(e: WsError) -> Exit {
    match e {
        WsError::Capacity(_) => Exit::close(CloseCode::Size, "frame over 10 KiB"),
        WsError::Utf8(_) => Exit::close(CloseCode::Invalid, "text is not UTF-8"),
        // The transport failed or the peer went away: nothing can be sent.
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Exit::Dead,
        other => {
            tracing::debug!(error = %other, "WebSocket protocol error");
            Exit::close(CloseCode::Protocol, "protocol error")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::web;
    use std::sync::atomic::Ordering;

    /// An idle socket's task is paid 50,000 times over: keep it small.
    /// (It was 3.2 KiB before the handlers were boxed, 1,024 bytes with
    /// tokio-tungstenite's stream, a timer, a start time and a span of its
    /// own; 912 in a debug build since, which makes its tokio task cell
    /// 1,024 bytes instead of 1,152: cells are multiples of 128. The
    /// contract budget is 4 KiB per socket in all, the project's 2 KiB,
    /// the TCP stream's buffers included.)
    #[actix_web::test]
    async fn an_idle_socket_task_stays_within_912_bytes() {
        use std::sync::Arc;

        use adapter_memory::{MemoryBus, MemoryStore, SystemClock};

        let bus = Arc::new(MemoryBus::new());
        let service = kairos_domain::DynSessionService::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            bus.clone(),
            Arc::new(SystemClock::new()),
        );
        let state = web::Data::new(AppState::new(
            service,
            bus,
            crate::state::HttpSettings::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let socket = Socket::new(stream, Vec::new(), crate::ws::upgrade::socket_config());
        let slot = Slot::acquire(state.clone()).unwrap();
        let id = SessionId::from_uuid(uuid::Uuid::new_v4());
        let admitted = Admitted {
            slot,
            id,
            actor: Actor::anonymous_admin(),
            expires_ms: u64::MAX,
        };

        let task = admitted.serve(socket);
        let size = std::mem::size_of_val(&task);
        eprintln!("the socket task is {size} bytes");
        assert!(size <= 912, "the socket task is {size} bytes");
        assert_eq!(state.ws_connections.load(Ordering::SeqCst), 1);
        drop(task);
        assert_eq!(
            state.ws_connections.load(Ordering::SeqCst),
            0,
            "the slot is released"
        );
        assert_eq!(state.metrics.ws_connections.get(), 0);
        drop(client);
    }

    #[test]
    fn frame_headers_take_the_shortest_length_form() {
        let mut head = [0_u8; 10];
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 125), 2);
        assert_eq!(head[..2], [0x81, 125]);
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 126), 4);
        assert_eq!(head[..4], [0x81, 126, 0, 126]);
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 65_536), 10);
        assert_eq!(head[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame_header(&mut head, OPCODE_PING, 0), 2);
        assert_eq!(head[..2], [0x89, 0]);
    }
}
