//! Every accepted connection has `TCP_NODELAY`, WebSockets included: with
//! Nagle's algorithm a frame written while the previous one is still
//! unacknowledged waits for the client's delayed ACK (40 ms on Linux), and
//! a timeout's `EVENT` comes right after its `STATE_UPDATE`. Measured
//! before the fix: the `EVENT` 42 ms after the deadline at the median, the
//! `STATE_UPDATE` 2 ms (docs/performance.md).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use kairos_domain::SessionId;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running server with one two-player session.
struct Served {
    addr: SocketAddr,
    id: SessionId,
    handle: actix_web::dev::ServerHandle,
}

async fn serve() -> Served {
    let state = common::state();
    let id = common::chess_session(&state).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = http_actix::serve(listener, state, Some(1), || {}).unwrap();
    let handle = server.handle();
    tokio::spawn(server);
    Served { addr, id, handle }
}

/// Opens a WebSocket by hand (the test needs the raw stream's address) and
/// reads until its `CONNECTED` and `STATE_SYNC` have arrived.
async fn open_socket(served: &Served) -> TcpStream {
    let mut tcp = TcpStream::connect(served.addr).await.unwrap();
    let request = format!(
        "GET /ws?sessionId={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        served.id, served.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let mut buf = [0_u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the handshake and first frames within 5 s")
            .unwrap();
        assert_ne!(n, 0, "the server closed the socket");
        received.extend_from_slice(&buf[..n]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        frames = text_frames(&received[end + 4..]).0;
    }
    assert_eq!(frames[0]["type"], "CONNECTED");
    assert_eq!(frames[1]["type"], "STATE_SYNC");
    tcp
}

/// The complete unmasked text frames at the start of `bytes` (as JSON),
/// and how many bytes follow the last of them.
fn text_frames(mut bytes: &[u8]) -> (Vec<Value>, usize) {
    let mut frames = Vec::new();
    loop {
        if bytes.len() < 2 {
            return (frames, bytes.len());
        }
        assert_eq!(bytes[0], 0x81, "a final text frame");
        assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            126 | 127 => return (frames, bytes.len()),
            short => (usize::from(short), 2),
        };
        if bytes.len() < head + len {
            return (frames, bytes.len());
        }
        frames.push(serde_json::from_slice(&bytes[head..head + len]).unwrap());
        bytes = &bytes[head + len..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_have_nodelay_and_keep_it_as_websockets() {
    let served = serve().await;

    // A plain HTTP connection, once its request has been answered.
    let mut http = TcpStream::connect(served.addr).await.unwrap();
    http.write_all(format!("GET /v1/time HTTP/1.1\r\nHost: {}\r\n\r\n", served.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0_u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), http.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        rustix::net::sockopt::tcp_nodelay(test_support::socket_with_peer(
            http.local_addr().unwrap()
        ))
        .unwrap()
    );

    // A WebSocket, after its upgrade took the stream from the HTTP dispatcher.
    let ws = open_socket(&served).await;
    assert!(
        rustix::net::sockopt::tcp_nodelay(test_support::socket_with_peer(ws.local_addr().unwrap()))
            .unwrap()
    );
    // The client's own sockets are left as the kernel made them: the check
    // tells the two sides apart.
    assert!(!rustix::net::sockopt::tcp_nodelay(&ws).unwrap());

    served.handle.stop(false).await;
}
