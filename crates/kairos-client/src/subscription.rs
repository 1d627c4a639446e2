//! A live session over the WebSocket (contract section 4), as the browser
//! SDK keeps it (docs/sdk.md): the last view in version order, the clock
//! offset from `PING`/`PONG`, reconnection with backoff and a resync, and
//! the clock commands (`SWITCH`, `PAUSE`, `RESUME`) over the socket.
//!
//! A background task owns the socket. It applies `STATE_SYNC` and
//! `STATE_UPDATE` only when their `version` is above the one it has (older
//! and repeated ones are ignored), sends `RECONNECT` when an update skips a
//! version, and after any close but 4404, 1008 and a deleted session
//! reconnects after `min(max, initial * factor^attempt)` with "equal jitter",
//! the count starting again once a `STATE_SYNC` arrives. The application
//! reads [`Update`]s (a [`Stream`](futures_core::Stream), or
//! [`Subscription::next`]) and the latest view and offset at any time.
//!
//! Socket commands are confirmed as the SDK does: the server handles one
//! message of a connection at a time, so a `PING` sent right behind the
//! command whose `PONG` comes back without an `ERROR` before it means the
//! command was committed; the command then resolves with the first view
//! whose version is above the expected one.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::display;
use crate::error::{ApiError, Error, ErrorCode};
use crate::offset::{LocalClock, OffsetEstimate, OffsetEstimator};
use crate::types::{Event, SessionView};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnect delays: attempt `n` waits `min(max, initial * factor^n)`, of
/// which the last `jitter` part is random ("equal jitter").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay's ceiling (default 500 ms).
    pub initial: Duration,
    /// The largest ceiling (default 15 s).
    pub max: Duration,
    /// The growth per attempt (default 2).
    pub factor: f64,
    /// The random part of each delay, 0 to 1 (default 0.5).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(15),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0-based), given a
    /// random number in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let ceiling = (self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp))
            .min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let secs = ceiling * (1.0 - jitter) + ceiling * jitter * random.clamp(0.0, 1.0);
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// How a [`Subscription`] behaves; the defaults are the browser SDK's.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Pause between clock-offset probes (default 4 s).
    pub ping_interval: Duration,
    /// Probes right after each connect (default 5) ...
    pub burst_pings: u32,
    /// ... this far apart (default 120 ms).
    pub burst_spacing: Duration,
    /// Probes the offset is computed from (default 8).
    pub offset_window: usize,
    /// A socket command not confirmed by then fails with [`Error::Timeout`] (default 10 s).
    pub command_timeout: Duration,
    /// The handshake's timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Updates kept for the application before the oldest unread are
    /// dropped (default 1024); the view and offset are always current.
    pub updates_buffer: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(4),
            burst_pings: 5,
            burst_spacing: Duration::from_millis(120),
            offset_window: 8,
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            updates_buffer: 1024,
        }
    }
}

/// The socket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connect is under way.
    Connecting,
    /// Connected (`CONNECTED` received).
    Open,
    /// Waiting to reconnect, or reconnecting; `attempt` counts from 1.
    Reconnecting {
        /// Attempts since the last `STATE_SYNC`.
        attempt: u32,
    },
    /// Ended for good (closed, deleted, or a fatal close).
    Closed,
}

/// What a [`Subscription`] reports, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Update {
    /// A socket opened (`CONNECTED`); a `State` follows.
    Connected,
    /// A view newer than any before it (from `STATE_SYNC` or `STATE_UPDATE`).
    State(Box<SessionView>),
    /// An `EVENT` (timeouts, presence, ...).
    Event(Box<Event>),
    /// An `ERROR` that answers none of this subscription's commands.
    Error(ApiError),
    /// The socket closed; a reconnect follows after `retry_in`.
    Disconnected {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason or the failure.
        reason: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// The session was deleted (`SESSION_DELETED`); `Closed` follows.
    Deleted,
    /// The subscription ended for good; nothing follows.
    Closed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

/// What the application's handle asks of the task.
enum Request {
    Command {
        message: Map<String, Value>,
        expected_version: Option<u64>,
        reply: oneshot::Sender<Result<SessionView, Error>>,
    },
    Resync,
    Close,
}

/// What the handle and the task share.
#[derive(Debug)]
struct Shared {
    view: Option<SessionView>,
    estimator: OffsetEstimator,
    connection: ConnectionState,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // The task never panics while holding it; a poisoned lock's data is still whole.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One session's live state over a WebSocket: made by
/// [`Client::subscribe`](crate::Client::subscribe). Dropping it closes the
/// socket.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Mutex<Shared>>,
    clock: LocalClock,
    updates: mpsc::Receiver<Update>,
    requests: mpsc::UnboundedSender<Request>,
    command_timeout: Duration,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Starts the task that connects to `url` (with `token` as
    /// `Authorization: Bearer`). Must be called within a Tokio runtime.
    pub(crate) fn open(
        url: Url,
        token: Option<String>,
        options: SubscribeOptions,
    ) -> Result<Self, Error> {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| Error::InvalidUrl(format!("token: {e}")))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let clock = LocalClock::new();
        let shared = Arc::new(Mutex::new(Shared {
            view: None,
            estimator: OffsetEstimator::new(options.offset_window),
            connection: ConnectionState::Connecting,
        }));
        let (updates_tx, updates) = mpsc::channel(options.updates_buffer.max(1));
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let command_timeout = options.command_timeout;
        let task = tokio::spawn(
            Task {
                request,
                options,
                shared: shared.clone(),
                clock,
                updates: updates_tx,
                requests: requests_rx,
                random: RandomState::new().build_hasher().finish(),
            }
            .run(),
        );
        Ok(Self {
            shared,
            clock,
            updates,
            requests,
            command_timeout,
            task,
        })
    }

    /// The next update; `None` once the subscription has ended and every
    /// update was read.
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Reads updates until a view satisfies `pred` (checking the current view
    /// first) and returns it; `None` when the subscription ends first.
    /// Other updates read meanwhile are dropped.
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&SessionView) -> bool,
    ) -> Option<SessionView> {
        if let Some(view) = self.view().filter(|v| pred(v)) {
            return Some(view);
        }
        while let Some(update) = self.next().await {
            if let Update::State(view) = update
                && pred(&view)
            {
                return Some(*view);
            }
        }
        None
    }

    /// The last applied view (`None` before the first `STATE_SYNC`).
    pub fn view(&self) -> Option<SessionView> {
        lock(&self.shared).view.clone()
    }

    /// The last applied view's version (0 before the first).
    pub fn version(&self) -> u64 {
        lock(&self.shared).view.as_ref().map_or(0, |v| v.version)
    }

    /// The socket's state.
    pub fn connection(&self) -> ConnectionState {
        lock(&self.shared).connection
    }

    /// Server minus this machine's clock in ms: measured once a `PONG` came
    /// back, rough (from `CONNECTED`) before, `None` before anything arrived.
    pub fn offset_ms(&self) -> Option<f64> {
        lock(&self.shared).estimator.offset_ms()
    }

    /// The offset estimate with its bounds, once a round trip was measured.
    pub fn offset(&self) -> Option<OffsetEstimate> {
        lock(&self.shared).estimator.estimate()
    }

    /// This machine's clock, in ms since the epoch, as the subscription reads
    /// it (wall clock at start, advanced monotonically).
    pub fn now_local_ms(&self) -> i64 {
        // Saturating float-to-int conversion.
        self.clock.now_ms().floor() as i64
    }

    /// The server's clock now: this machine's corrected by the offset.
    pub fn server_now_ms(&self) -> i64 {
        self.to_server_ms(self.now_local_ms())
    }

    fn to_server_ms(&self, local_ms: i64) -> i64 {
        let offset = self.offset_ms().unwrap_or(0.0).round() as i64;
        local_ms.saturating_add(offset)
    }

    /// A participant's time remaining at local instant `now_local_ms` (ms
    /// since the epoch on this machine's clock, e.g. [`now_local_ms`](Self::now_local_ms)):
    /// computed from the last view at the corrected time, never below 0,
    /// moving only while the session runs. `None` before the first view or
    /// for an unknown participant.
    pub fn time_remaining_ms(&self, participant_id: &str, now_local_ms: i64) -> Option<i64> {
        let server_now = self.to_server_ms(now_local_ms);
        let shared = lock(&self.shared);
        display::participant_remaining_ms(shared.view.as_ref()?, participant_id, server_now)
    }

    /// `SWITCH` over the socket: resolves with the first view showing it.
    pub async fn switch(
        &self,
        next_participant_id: Option<&str>,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        let mut message = Map::new();
        if let Some(next) = next_participant_id {
            message.insert("next_participant_id".into(), json!(next));
        }
        self.command("SWITCH", message, expected_version).await
    }

    /// `PAUSE` over the socket.
    pub async fn pause(&self, expected_version: Option<u64>) -> Result<SessionView, Error> {
        self.command("PAUSE", Map::new(), expected_version).await
    }

    /// `RESUME` over the socket.
    pub async fn resume(&self, expected_version: Option<u64>) -> Result<SessionView, Error> {
        self.command("RESUME", Map::new(), expected_version).await
    }

    /// Sends `RECONNECT`: the server answers with a fresh `STATE_SYNC`.
    pub fn resync(&self) {
        let _ = self.requests.send(Request::Resync);
    }

    /// Closes the socket (1000) for good; `Closed` is the last update.
    pub fn close(&self) {
        let _ = self.requests.send(Request::Close);
    }

    async fn command(
        &self,
        kind: &str,
        mut message: Map<String, Value>,
        expected_version: Option<u64>,
    ) -> Result<SessionView, Error> {
        message.insert("type".into(), json!(kind));
        if let Some(v) = expected_version {
            message.insert("expected_version".into(), json!(v));
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Command {
                message,
                expected_version,
                reply,
            })
            .map_err(|_| closed("the subscription has ended"))?;
        match tokio::time::timeout(self.command_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed("the subscription has ended")),
            Err(_) => Err(Error::Timeout(self.command_timeout)),
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.updates.poll_recv(cx)
    }
}

fn closed(reason: &str) -> Error {
    Error::Closed {
        code: None,
        reason: reason.to_owned(),
    }
}

/// How a connection ended.
enum Outcome {
    /// The application closed the subscription.
    Stopped,
    /// For good: 4404, 1008, the session deleted.
    Fatal { code: Option<u16>, reason: String },
    /// Reconnect; `synced` when a `STATE_SYNC` arrived on it.
    Lost {
        code: Option<u16>,
        reason: String,
        synced: bool,
    },
}

/// The background task.
struct Task {
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    options: SubscribeOptions,
    shared: Arc<Mutex<Shared>>,
    clock: LocalClock,
    updates: mpsc::Sender<Update>,
    requests: mpsc::UnboundedReceiver<Request>,
    random: u64,
}

impl Task {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            let outcome = match self.connect().await {
                Ok(Some(socket)) => Conn::new(&mut self).run(socket).await,
                Ok(None) => Outcome::Stopped,
                Err(reason) => Outcome::Lost {
                    code: None,
                    reason,
                    synced: false,
                },
            };
            let (code, reason) = match outcome {
                Outcome::Stopped => return self.end(Some(1000), "closed by the application"),
                Outcome::Fatal { code, reason } => return self.end(code, &reason),
                Outcome::Lost {
                    code,
                    reason,
                    synced,
                } => {
                    if synced {
                        attempt = 0;
                    }
                    (code, reason)
                }
            };
            let random = self.next_random();
            let retry_in = self.options.backoff.delay(attempt, random);
            attempt = attempt.saturating_add(1);
            lock(&self.shared).connection = ConnectionState::Reconnecting { attempt };
            self.emit(Update::Disconnected {
                code,
                reason,
                retry_in,
            });
            if !self.wait(retry_in).await {
                return self.end(Some(1000), "closed by the application");
            }
        }
    }

    /// Waits before a reconnect, refusing commands meanwhile; false when the
    /// application closed the subscription.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return true,
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => return false,
                    Some(Request::Command { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected));
                    }
                    Some(Request::Resync) => {}
                },
            }
        }
    }

    /// Opens a socket; `Ok(None)` when the application closed the
    /// subscription meanwhile. Commands are refused until it is open, as
    /// while waiting: a late clock press is worse than none.
    async fn connect(&mut self) -> Result<Option<Socket>, String> {
        let handshake = tokio::time::timeout(
            self.options.connect_timeout,
            // `TCP_NODELAY`: a command written while an earlier frame (a
            // pong, another command) is unacknowledged would otherwise wait
            // for the server's delayed ACK, up to 40 ms on a clock press.
            tokio_tungstenite::connect_async_with_config(self.request.clone(), None, true),
        );
        tokio::pin!(handshake);
        loop {
            tokio::select! {
                done = &mut handshake => return match done {
                    Ok(Ok((socket, _response))) => Ok(Some(socket)),
                    Ok(Err(e)) => Err(format!("connect: {e}")),
                    Err(_) => Err(format!(
                        "connect: no handshake within {:?}",
                        self.options.connect_timeout
                    )),
                },
                request = self.requests.recv() => match request {
                    None | Some(Request::Close) => return Ok(None),
                    Some(Request::Command { reply, .. }) => {
                        let _ = reply.send(Err(Error::NotConnected));
                    }
                    Some(Request::Resync) => {}
                },
            }
        }
    }

    fn end(&mut self, code: Option<u16>, reason: &str) {
        lock(&self.shared).connection = ConnectionState::Closed;
        self.emit(Update::Closed {
            code,
            reason: reason.to_owned(),
        });
        // Commands that raced the end.
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            if let Request::Command { reply, .. } = request {
                let _ = reply.send(Err(closed(reason)));
            }
        }
    }

    /// Hands an update to the application; when it has not read
    /// `updates_buffer` of them, this one is dropped (the view stays current).
    fn emit(&self, update: Update) {
        let _ = self.updates.try_send(update);
    }

    /// xorshift64: jitter needs no more.
    fn next_random(&mut self) -> f64 {
        let mut x = self.random | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A `PING` in flight.
struct Ping {
    /// The `client_time_ms` sent (whole ms), echoed by the `PONG`.
    key: i64,
    /// When it was sent, to the fraction of a ms.
    sent: f64,
    /// The command this `PING` confirms, if it is a barrier.
    barrier: Option<String>,
}

/// A socket command waiting for its outcome.
struct Pending {
    /// It resolves with the first view above this version.
    after: u64,
    /// Its barrier `PONG` arrived (no `ERROR` came before it).
    confirmed: bool,
    reply: oneshot::Sender<Result<SessionView, Error>>,
}

/// One connection's state.
struct Conn<'a> {
    task: &'a mut Task,
    pings: VecDeque<Ping>,
    pending: HashMap<String, Pending>,
    next_request: u64,
    resync_requested: bool,
    synced: bool,
    deleted: bool,
    burst_left: u32,
    next_ping: Instant,
}

impl<'a> Conn<'a> {
    fn new(task: &'a mut Task) -> Self {
        Self {
            task,
            pings: VecDeque::new(),
            pending: HashMap::new(),
            next_request: 1,
            resync_requested: false,
            synced: false,
            deleted: false,
            burst_left: 0,
            // No probes before `CONNECTED`.
            next_ping: Instant::now() + Duration::from_secs(3600),
        }
    }

    async fn run(mut self, socket: Socket) -> Outcome {
        let (mut sink, mut stream) = socket.split();
        let outcome = loop {
            tokio::select! {
                frame = stream.next() => {
                    let received = self.task.clock.now_ms();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Err(e) = self.on_text(&mut sink, text.as_str(), received).await {
                                break self.lost(None, e);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => break self.on_close(frame),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break self.lost(None, format!("socket: {e}")),
                        None => break self.lost(None, "the connection dropped".to_owned()),
                    }
                }
                () = sleep_until(self.next_ping) => {
                    if let Err(e) = self.probe(&mut sink).await {
                        break self.lost(None, e);
                    }
                }
                request = self.task.requests.recv() => match request {
                    None | Some(Request::Close) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "client closed".into(),
                            })))
                            .await;
                        break Outcome::Stopped;
                    }
                    Some(Request::Resync) => {
                        if let Err(e) = send_json(&mut sink, &json!({"type": "RECONNECT"})).await {
                            break self.lost(None, e);
                        }
                    }
                    Some(Request::Command { message, expected_version, reply }) => {
                        if let Err(e) = self.command(&mut sink, message, expected_version, reply).await {
                            break self.lost(None, e);
                        }
                    }
                },
            }
        };
        // Complete the closing handshake (the reply to the server's close
        // frame is queued until flushed); a dead connection fails fast.
        let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
        let error = if self.deleted {
            closed("the session was deleted")
        } else {
            Error::Disconnected
        };
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(match &error {
                Error::Closed { code, reason } => Error::Closed {
                    code: *code,
                    reason: reason.clone(),
                },
                _ => Error::Disconnected,
            }));
        }
        outcome
    }

    fn lost(&self, code: Option<u16>, reason: String) -> Outcome {
        if self.deleted {
            return Outcome::Fatal {
                code,
                reason: "the session was deleted".to_owned(),
            };
        }
        Outcome::Lost {
            code,
            reason,
            synced: self.synced,
        }
    }

    fn on_close(&self, frame: Option<CloseFrame>) -> Outcome {
        let (code, reason) = match frame {
            Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
            None => (None, String::new()),
        };
        if self.deleted {
            return Outcome::Fatal {
                code,
                reason: "the session was deleted".to_owned(),
            };
        }
        match code {
            Some(4404) => Outcome::Fatal {
                code,
                reason: if reason.is_empty() {
                    "no such session".to_owned()
                } else {
                    reason
                },
            },
            // Policy: a refused token, origin, rate or id; reconnecting with
            // the same token cannot help.
            Some(1008) => Outcome::Fatal {
                code,
                reason: if reason.is_empty() {
                    "policy violation".to_owned()
                } else {
                    reason
                },
            },
            _ => self.lost(
                code,
                if reason.is_empty() {
                    "the server closed the connection".to_owned()
                } else {
                    reason
                },
            ),
        }
    }

    async fn on_text(
        &mut self,
        sink: &mut SplitSink<Socket, Message>,
        text: &str,
        received: f64,
    ) -> Result<(), String> {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return Ok(());
        };
        match msg.get("type").and_then(Value::as_str) {
            Some("CONNECTED") => {
                {
                    let mut shared = lock(&self.task.shared);
                    if shared.estimator.offset_ms().is_none()
                        && let Some(ts) = msg.get("timestamp").and_then(Value::as_f64)
                    {
                        // Until the first PONG: good to within one network leg.
                        shared.estimator.set_provisional(ts - received);
                    }
                    // A new connection may reach another instance: measure afresh.
                    shared.estimator.reset();
                    shared.connection = ConnectionState::Open;
                }
                self.task.emit(Update::Connected);
                self.burst_left = self.task.options.burst_pings;
                self.next_ping = Instant::now();
            }
            Some("STATE_SYNC") => {
                self.synced = true;
                self.resync_requested = false;
                if let Some(state) = parse_state(&msg) {
                    self.apply(state);
                }
            }
            Some("STATE_UPDATE") => {
                if let Some(state) = parse_state(&msg) {
                    let current = self.current_version();
                    if state.version <= current {
                        return Ok(());
                    }
                    if current > 0 && state.version > current + 1 && !self.resync_requested {
                        // A version went missing: the view is whole, so apply
                        // it, and ask for a fresh snapshot to be sure.
                        send_json(sink, &json!({"type": "RECONNECT"})).await?;
                        self.resync_requested = true;
                    }
                    self.apply(state);
                }
            }
            Some("PONG") => self.on_pong(&msg, received),
            Some("EVENT") => {
                if let Some(event) = msg
                    .get("event")
                    .and_then(|e| serde_json::from_value::<Event>(e.clone()).ok())
                {
                    self.task.emit(Update::Event(Box::new(event)));
                }
            }
            Some("ERROR") => self.on_error(&msg),
            Some("SESSION_DELETED") => {
                self.deleted = true;
                for (_, pending) in self.pending.drain() {
                    let _ = pending.reply.send(Err(closed("the session was deleted")));
                }
                self.task.emit(Update::Deleted);
            }
            _ => {}
        }
        Ok(())
    }

    fn current_version(&self) -> u64 {
        lock(&self.task.shared)
            .view
            .as_ref()
            .map_or(0, |v| v.version)
    }

    /// Applies a view newer than the current one; settles commands.
    fn apply(&mut self, state: SessionView) {
        {
            let mut shared = lock(&self.task.shared);
            if shared
                .view
                .as_ref()
                .is_some_and(|v| state.version <= v.version)
            {
                return;
            }
            shared.view = Some(state.clone());
        }
        self.task.emit(Update::State(Box::new(state)));
        self.settle();
    }

    /// Resolves every confirmed command whose resulting version has arrived.
    fn settle(&mut self) {
        let Some(view) = lock(&self.task.shared).view.clone() else {
            return;
        };
        let done: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.confirmed && view.version > p.after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some(p) = self.pending.remove(&id) {
                let _ = p.reply.send(Ok(view.clone()));
            }
        }
    }

    fn on_pong(&mut self, msg: &Value, received: f64) {
        let Some(echo) = msg.get("client_time_ms").and_then(Value::as_f64) else {
            return;
        };
        // PONGs come in the order of their PINGs: earlier unanswered ones are gone.
        let key = echo as i64;
        let Some(pos) = self.pings.iter().position(|p| p.key == key) else {
            return;
        };
        let ping = self.pings.drain(..=pos).next_back();
        let Some(ping) = ping else { return };
        match ping.barrier {
            Some(request_id) => {
                if let Some(p) = self.pending.get_mut(&request_id) {
                    p.confirmed = true;
                }
                self.settle();
            }
            None => {
                if let Some(server) = msg.get("timestamp").and_then(Value::as_f64) {
                    lock(&self.task.shared)
                        .estimator
                        .add_sample(ping.sent, received, server);
                }
            }
        }
    }

    fn on_error(&mut self, msg: &Value) {
        let error = ApiError {
            status: None,
            code: ErrorCode::parse(msg.get("code").and_then(Value::as_str).unwrap_or("ERROR")),
            message: msg
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the server refused a message")
                .to_owned(),
            details: msg.get("details").cloned(),
            retry_after: None,
        };
        let request_id = msg.get("request_id").and_then(Value::as_str);
        if let Some(pending) = request_id.and_then(|id| self.pending.remove(id)) {
            let _ = pending.reply.send(Err(Error::Api(Box::new(error))));
            return;
        }
        self.task.emit(Update::Error(error));
    }

    /// Sends a clock-offset probe and schedules the next.
    async fn probe(&mut self, sink: &mut SplitSink<Socket, Message>) -> Result<(), String> {
        self.ping(sink, None).await?;
        let options = &self.task.options;
        let mut wait = options.ping_interval;
        if self.burst_left > 0 {
            self.burst_left -= 1;
            if self.burst_left > 0 {
                wait = options.burst_spacing;
            }
        }
        self.next_ping = Instant::now() + wait;
        Ok(())
    }

    async fn ping(
        &mut self,
        sink: &mut SplitSink<Socket, Message>,
        barrier: Option<String>,
    ) -> Result<(), String> {
        // Forget probes that never came back, so the queue stays small.
        if self.pings.len() > 64 {
            self.pings.clear();
        }
        let sent = self.task.clock.now_ms();
        let key = sent.floor() as i64;
        self.pings.push_back(Ping { key, sent, barrier });
        send_json(sink, &json!({"type": "PING", "client_time_ms": key})).await
    }

    async fn command(
        &mut self,
        sink: &mut SplitSink<Socket, Message>,
        mut message: Map<String, Value>,
        expected_version: Option<u64>,
        reply: oneshot::Sender<Result<SessionView, Error>>,
    ) -> Result<(), String> {
        if reply.is_closed() {
            return Ok(());
        }
        let request_id = format!("k{}", self.next_request);
        self.next_request += 1;
        message.insert("request_id".into(), json!(request_id));
        // Drop the commands whose caller stopped waiting (timed out).
        self.pending.retain(|_, p| !p.reply.is_closed());
        let after = expected_version.unwrap_or_else(|| self.current_version());
        self.pending.insert(
            request_id.clone(),
            Pending {
                after,
                confirmed: false,
                reply,
            },
        );
        send_json(sink, &Value::Object(message)).await?;
        self.ping(sink, Some(request_id)).await
    }
}

fn parse_state(msg: &Value) -> Option<SessionView> {
    serde_json::from_value(msg.get("state")?.clone()).ok()
}

async fn send_json(sink: &mut SplitSink<Socket, Message>, value: &Value) -> Result<(), String> {
    sink.send(Message::Text(value.to_string().into()))
        .await
        .map_err(|e| format!("send: {e}"))
}
