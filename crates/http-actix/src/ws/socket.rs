//! One WebSocket over its TCP stream, spoken by tungstenite's protocol state
//! machine without tokio-tungstenite's adapter. Why: that adapter gives
//! every socket two `Arc`s of wakers (one per direction, 64 bytes each, so
//! that a split stream can be read and written from different tasks); a
//! socket here is read and written by its one task only, and the TCP
//! stream's own readiness (tokio's I/O registration, which every socket has
//! anyway) holds that task's waker for either direction. 128 bytes and two
//! allocations less per idle socket (see docs/performance.md, "Where an
//! idle socket's bytes go").
//!
//! tungstenite reads and writes through `Io`, which never waits: it tries
//! the syscall and reports `WouldBlock` when the stream is not ready,
//! noting which direction blocked; `Socket::drive` then registers the
//! task for that direction's readiness and tries again when it comes.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::task::{Context, Poll};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The TCP stream as tungstenite's blocking `Read`/`Write`: each call tries
/// the syscall once and notes a direction that would block.
#[derive(Debug)]
struct Io {
    tcp: TcpStream,
    read_blocked: bool,
    write_blocked: bool,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.tcp.try_read(buf);
        if matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.read_blocked = true;
        }
        read
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.tcp.try_write(buf);
        if matches!(&written, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.write_blocked = true;
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        // A TCP stream has no user-space buffer to flush.
        Ok(())
    }
}

/// A server-side WebSocket on a TCP stream, served by a single task.
#[derive(Debug)]
pub(crate) struct Socket {
    ws: WebSocket<Io>,
    /// The peer closed or a fatal error was returned: the stream is over.
    ended: bool,
}

impl Socket {
    /// A socket over `tcp`, whose handshake is done; `part` is what the
    /// client already sent after its handshake.
    pub(crate) fn new(tcp: TcpStream, part: Vec<u8>, config: WebSocketConfig) -> Self {
        let io = Io {
            tcp,
            read_blocked: false,
            write_blocked: false,
        };
        Self {
            ws: WebSocket::from_partially_read(io, part, Role::Server, Some(config)),
            ended: false,
        }
    }

    /// The TCP stream, for writing frames straight to it (the caller keeps
    /// frames whole: see `connection::Connection::write_frame`).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        &mut self.ws.get_mut().tcp
    }

    /// Runs `step` until it no longer would block, waiting for the readiness
    /// of whichever direction blocked.
    fn drive<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut WebSocket<Io>) -> Result<R, WsError>,
    ) -> Poll<Result<R, WsError>> {
        loop {
            let io = self.ws.get_mut();
            io.read_blocked = false;
            io.write_blocked = false;
            match step(&mut self.ws) {
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    let io = self.ws.get_mut();
                    // Registering both directions when both blocked; a
                    // readiness that arrived meanwhile means try again.
                    let mut again = false;
                    if io.write_blocked {
                        again |= io.tcp.poll_write_ready(cx).is_ready();
                    }
                    if io.read_blocked || !io.write_blocked {
                        again |= io.tcp.poll_read_ready(cx).is_ready();
                    }
                    if !again {
                        return Poll::Pending;
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }

    /// The next message from the peer (pings are answered and closes
    /// acknowledged by tungstenite, with the next read or write); `None`
    /// once the connection is closed. Cancel-safe: a partly read frame stays
    /// in tungstenite's buffer.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, WsError>> {
        if self.ended {
            return None;
        }
        let read = poll_fn(|cx| self.drive(cx, WebSocket::read)).await;
        match read {
            Ok(message) => Some(Ok(message)),
            Err(e) => {
                self.ended = true;
                if matches!(e, WsError::AlreadyClosed | WsError::ConnectionClosed) {
                    None
                } else {
                    Some(Err(e))
                }
            }
        }
    }

    /// Sends what tungstenite has queued (a pong, a close frame). A
    /// connection whose close handshake just completed is flushed.
    pub(crate) async fn flush(&mut self) -> Result<(), WsError> {
        match poll_fn(|cx| self.drive(cx, WebSocket::flush)).await {
            Err(WsError::ConnectionClosed) => Ok(()),
            other => other,
        }
    }

    /// Starts the close handshake with `reason` (or answers the peer's
    /// close) and sends the close frame.
    pub(crate) async fn close(&mut self, reason: CloseFrame) -> Result<(), WsError> {
        match self.ws.close(Some(reason)) {
            Ok(()) | Err(WsError::ConnectionClosed) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        self.flush().await
    }
}
