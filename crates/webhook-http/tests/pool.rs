//! The sender's connection reuse against a real receiver: a small HTTP/1.1
//! server on 127.0.0.1 inside the test that counts the connections it
//! accepts and the requests it reads. Deliveries to one endpoint share one
//! kept-alive connection; a receiver that closes its connections after each
//! answer still gets every delivery, each once; one that closes a kept-alive
//! connection under a request gets it again on a new connection within the
//! same attempt; a hung receiver still ends
//! the attempt at the sender's timeout; the guard still refuses private
//! addresses when they are not allowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kairos_domain::webhook::AttemptOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use webhook_http::{Message, Sender, UrlPolicy};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const LOCAL: UrlPolicy = UrlPolicy {
    allow_http: true,
    allow_private: true,
};

/// How the receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `200` with a short body, connection kept open.
    KeepAlive,
    /// `204`, then the connection is closed without saying so.
    CloseSilently,
    /// `204` with `connection: close`, then closed.
    CloseHeader,
    /// Reads the request and never answers.
    Hang,
    /// Sends a head announcing a body that never comes.
    HangInBody,
    /// Answers the first request of each connection, then reads the second
    /// and closes without answering (its keep-alive ran out just then).
    DropSecond,
}

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// The `webhook-id` of every request answered, in order.
    ids: Mutex<Vec<String>>,
    /// The `webhook-id` of every request read and left unanswered.
    dropped: Mutex<Vec<String>>,
}

async fn receiver(mode: Mode) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, mode, Arc::clone(&counts)));
        }
    });
    (port, seen)
}

/// Reads requests off one connection and answers them as `mode` says.
async fn serve(mut socket: TcpStream, mode: Mode, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let Some((head, body_len)) = read_head(&mut socket, &mut buf).await else {
            return;
        };
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..body_len);
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("webhook-id: "))
            .unwrap_or("")
            .to_owned();
        served += 1;
        if mode == Mode::DropSecond && served == 2 {
            seen.dropped.lock().await.push(id);
            return;
        }
        if mode != Mode::Hang {
            seen.ids.lock().await.push(id);
        } else {
            seen.dropped.lock().await.push(id);
        }
        let answer: &[u8] = match mode {
            Mode::KeepAlive | Mode::DropSecond => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Mode::CloseSilently => b"HTTP/1.1 204 No Content\r\n\r\n",
            Mode::CloseHeader => b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
            Mode::Hang => {
                std::future::pending::<()>().await;
                return;
            }
            Mode::HangInBody => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npart",
        };
        if socket.write_all(answer).await.is_err() {
            return;
        }
        match mode {
            Mode::CloseSilently | Mode::CloseHeader => return,
            Mode::HangInBody => {
                std::future::pending::<()>().await;
            }
            _ => {}
        }
    }
}

/// One request head (lower-cased) and its `content-length`; `None` at the
/// end of the connection.
async fn read_head(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            return Some((head, len));
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn message<'a>(url: &'a str, id: &'a str) -> Message<'a> {
    Message {
        url,
        secret: SECRET,
        webhook_id: id,
        body: r#"{"type":"cycle_switched"}"#,
        now_ms: 1_649_367_553_000,
    }
}

async fn send_many(sender: &Sender, url: &str, n: usize) -> Vec<AttemptOutcome> {
    let mut outcomes = Vec::new();
    for i in 0..n {
        let id = format!("evt_{i}");
        outcomes.push(sender.send(message(url, &id)).await);
    }
    outcomes
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("evt_{i}")).collect()
}

#[tokio::test]
async fn sequential_deliveries_to_one_endpoint_share_one_connection() {
    let sender = Sender::new(LOCAL).unwrap();
    let (port, seen) = receiver(Mode::KeepAlive).await;
    // By name and by address: the same origin each time.
    let url = format!("http://localhost:{port}/hooks");
    let outcomes = send_many(&sender, &url, 20).await;
    assert_eq!(
        outcomes,
        vec![AttemptOutcome::Delivered { status: 200 }; 20]
    );
    assert_eq!(*seen.ids.lock().await, ids(20));
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);

    // A clone shares the pool; another origin gets its own connection.
    let (other_port, other) = receiver(Mode::KeepAlive).await;
    let clone = sender.clone();
    let other_url = format!("http://127.0.0.1:{other_port}/");
    for _ in 0..3 {
        assert_eq!(
            clone.send(message(&url, "evt_again")).await,
            AttemptOutcome::Delivered { status: 200 }
        );
        assert_eq!(
            clone.send(message(&other_url, "evt_other")).await,
            AttemptOutcome::Delivered { status: 200 }
        );
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.ids.lock().await.len(), 23);
    assert_eq!(other.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(other.ids.lock().await.len(), 3);
}

#[tokio::test]
async fn a_receiver_closing_after_each_answer_gets_every_delivery_once() {
    let sender = Sender::new(LOCAL).unwrap();
    for mode in [Mode::CloseSilently, Mode::CloseHeader] {
        let (port, seen) = receiver(mode).await;
        let url = format!("http://127.0.0.1:{port}/hooks");
        // Whether the client sees the close before reusing the connection
        // or only when the request on it fails, no attempt fails.
        let outcomes = send_many(&sender, &url, 10).await;
        assert_eq!(
            outcomes,
            vec![AttemptOutcome::Delivered { status: 204 }; 10]
        );
        assert_eq!(*seen.ids.lock().await, ids(10));
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 10);
    }
}

#[tokio::test]
async fn a_kept_alive_connection_closed_under_a_request_is_retried_once_on_a_new_one() {
    let sender = Sender::new(LOCAL).unwrap();
    let (port, seen) = receiver(Mode::DropSecond).await;
    let url = format!("http://127.0.0.1:{port}/hooks");
    // evt_1 and evt_3 go over a reused connection that the receiver closes
    // after reading them: each is sent again on a new connection, within
    // the same attempt, and the attempt succeeds.
    let outcomes = send_many(&sender, &url, 5).await;
    assert_eq!(outcomes, vec![AttemptOutcome::Delivered { status: 200 }; 5]);
    assert_eq!(*seen.ids.lock().await, ids(5));
    assert_eq!(*seen.dropped.lock().await, vec!["evt_1", "evt_3"]);
    // Pooled: evt_0, evt_2, evt_4; fresh for the second tries: evt_1, evt_3.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_hung_receiver_still_times_out() {
    let sender = Sender::new(LOCAL)
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let (port, seen) = receiver(Mode::Hang).await;
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        sender.send(message(&url, "evt_hung")).await,
        AttemptOutcome::Failed {
            status: None,
            error: "timed out after 300 ms".to_owned(),
            retry_after_ms: None,
        }
    );
    // The hung connection is not reused: the next attempt opens another.
    assert!(matches!(
        sender.send(message(&url, "evt_hung_2")).await,
        AttemptOutcome::Failed { status: None, .. }
    ));
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(*seen.dropped.lock().await, vec!["evt_hung", "evt_hung_2"]);

    // An answer whose body never ends: the status counts, the connection
    // is given up at the deadline and not reused.
    let (port, seen) = receiver(Mode::HangInBody).await;
    let url = format!("http://127.0.0.1:{port}/");
    for id in ["evt_a", "evt_b"] {
        assert_eq!(
            sender.send(message(&url, id)).await,
            AttemptOutcome::Delivered { status: 200 }
        );
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_guard_still_refuses_private_addresses() {
    let sender = Sender::new(UrlPolicy {
        allow_http: true,
        allow_private: false,
    })
    .unwrap();
    let (port, seen) = receiver(Mode::KeepAlive).await;
    for url in [
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        for _ in 0..2 {
            let AttemptOutcome::Failed { status, error, .. } =
                sender.send(message(&url, "evt_private")).await
            else {
                panic!("{url} was delivered")
            };
            assert_eq!(status, None, "{url}");
            assert!(error.contains("loopback"), "{url}: {error}");
        }
    }
    // The same receiver, allowed: reached, over one connection.
    let allowed = Sender::new(LOCAL).unwrap();
    let url = format!("http://localhost:{port}/");
    assert_eq!(
        send_many(&allowed, &url, 2).await,
        vec![AttemptOutcome::Delivered { status: 200 }; 2]
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.ids.lock().await, ids(2));
}
