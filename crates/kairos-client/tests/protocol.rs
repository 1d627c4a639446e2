//! The subscription against a scripted server, for what a correct server
//! never does on its own: versions out of order, repeated, or with a gap
//! (the client must ignore the old ones and ask for a resync on a gap), a
//! refused command answered by `ERROR` with its `request_id`, a close after
//! which the client reconnects and resyncs, and 4404 which ends it. It also
//! checks the handshake carries the token as `Authorization: Bearer`, and
//! that the subscription's socket has `TCP_NODELAY`.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use kairos_client::{Backoff, Client, Error, ErrorCode, SubscribeOptions, Subscription, Update};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

const SESSION: &str = "123e4567-e89b-12d3-a456-426614174000";

type Ws = WebSocketStream<TcpStream>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn view(version: u64) -> Value {
    json!({
        "session_id": SESSION, "sync_mode": "per_participant", "status": "running",
        "version": version,
        "participants": [
            {"participant_id": "white", "participant_index": 0, "total_time_ms": 60000,
             "time_used_ms": 0, "time_remaining_ms": 60000, "cycle_count": 1,
             "is_active": true, "has_expired": false},
            {"participant_id": "black", "participant_index": 1, "total_time_ms": 60000,
             "time_used_ms": 0, "time_remaining_ms": 60000, "cycle_count": 0,
             "is_active": false, "has_expired": false}
        ],
        "active_participant_id": "white", "server_time_ms": now_ms(), "elapsed_ms": 0
    })
}

async fn send(ws: &mut Ws, msg: Value) {
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
}

async fn state(ws: &mut Ws, kind: &str, version: u64) {
    send(
        ws,
        json!({"type": kind, "sessionId": SESSION, "timestamp": now_ms(), "state": view(version)}),
    )
    .await;
}

/// The client's next message that is not a `PING`; `PING`s are answered as
/// the server does. A `PING` right behind a command is returned when
/// `keep_pings` (the test answers it itself, to order it after a state).
async fn recv(ws: &mut Ws, keep_pings: bool) -> Value {
    loop {
        let frame = timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a client message in time")
            .expect("the socket is open")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let msg: Value = serde_json::from_str(text.as_str()).unwrap();
        if msg["type"] == "PING" && !keep_pings {
            pong(ws, &msg).await;
            continue;
        }
        return msg;
    }
}

async fn pong(ws: &mut Ws, ping: &Value) {
    send(
        ws,
        json!({"type": "PONG", "timestamp": now_ms(), "client_time_ms": ping["client_time_ms"]}),
    )
    .await;
}

/// Accepts one socket; sends the `Authorization` header it came with.
async fn accept(listener: &TcpListener, auth: &mpsc::UnboundedSender<Option<String>>) -> Ws {
    let (tcp, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("a connection in time")
        .unwrap();
    let auth = auth.clone();
    // The callback's signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, res: Response| {
        let header = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        auth.send(header).unwrap();
        assert!(
            req.uri()
                .query()
                .unwrap()
                .contains(&format!("sessionId={SESSION}"))
        );
        Ok(res)
    })
    .await
    .unwrap()
}

async fn next(sub: &mut Subscription) -> Update {
    timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an update in time")
        .expect("the subscription is live")
}

/// The versions of the `State` updates until one of `last`.
async fn versions_until(sub: &mut Subscription, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        if let Update::State(v) = next(sub).await {
            seen.push(v.version);
        }
    }
    seen
}

#[tokio::test]
async fn versions_in_order_resync_on_a_gap_commands_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = Client::builder(&base)
        .token("secret-token")
        .build()
        .unwrap();
    let options = SubscribeOptions {
        burst_pings: 2,
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(100),
            ..Backoff::default()
        },
        ..SubscribeOptions::default()
    };
    let mut sub = client
        .subscribe_with(Uuid::parse_str(SESSION).unwrap(), options)
        .unwrap();
    let (auth_tx, mut auth) = mpsc::unbounded_channel();

    let mut ws = accept(&listener, &auth_tx).await;
    assert_eq!(
        auth.recv().await.unwrap().as_deref(),
        Some("Bearer secret-token")
    );
    send(
        &mut ws,
        json!({"type": "CONNECTED", "sessionId": SESSION, "timestamp": now_ms()}),
    )
    .await;
    state(&mut ws, "STATE_SYNC", 3).await;
    assert_eq!(next(&mut sub).await, Update::Connected);
    // Older, repeated, then a gap (4 is missing).
    state(&mut ws, "STATE_UPDATE", 2).await;
    state(&mut ws, "STATE_UPDATE", 3).await;
    state(&mut ws, "STATE_UPDATE", 5).await;
    assert_eq!(
        recv(&mut ws, false).await["type"],
        "RECONNECT",
        "a gap asks for a resync"
    );
    // The resync repeats 5: not reported again.
    state(&mut ws, "STATE_SYNC", 5).await;
    state(&mut ws, "STATE_UPDATE", 6).await;
    assert_eq!(versions_until(&mut sub, 6).await, [3, 5, 6]);
    assert_eq!(sub.version(), 6);

    send(
        &mut ws,
        json!({"type": "EVENT", "sessionId": SESSION, "timestamp": now_ms(), "event": {
            "event_id": "2f1c7d52-3a39-4c31-9c4b-4f7b7a1d7a10", "session_id": SESSION,
            "event_type": "presence_joined", "at_ms": now_ms(), "metadata": {"sub": "ann"}}}),
    )
    .await;
    let Update::Event(event) = next(&mut sub).await else {
        panic!("the EVENT")
    };
    assert_eq!(
        (event.event_type.as_str(), event.version),
        ("presence_joined", None)
    );

    // A refused command: ERROR with its request_id.
    let (refused, ()) = tokio::join!(sub.switch(Some("black"), Some(5)), async {
        let cmd = recv(&mut ws, false).await;
        assert_eq!(
            (
                &cmd["type"],
                &cmd["expected_version"],
                &cmd["next_participant_id"]
            ),
            (&json!("SWITCH"), &json!(5), &json!("black"))
        );
        send(
            &mut ws,
            json!({"type": "ERROR", "code": "CONFLICT", "message": "version",
            "details": {"expected_version": 5, "actual_version": 6},
            "request_id": cmd["request_id"]}),
        )
        .await;
    });
    let refused = match refused.unwrap_err() {
        Error::Api(e) => *e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (refused.status, &refused.code),
        (None, &ErrorCode::Conflict)
    );
    assert_eq!(refused.conflict_versions(), Some((5, 6)));

    // A committed command: the new version, then the PONG of its barrier.
    let (done, ()) = tokio::join!(sub.pause(Some(6)), async {
        let cmd = recv(&mut ws, false).await;
        assert_eq!(cmd["type"], "PAUSE");
        let barrier = recv(&mut ws, true).await;
        assert_eq!(barrier["type"], "PING");
        state(&mut ws, "STATE_UPDATE", 7).await;
        pong(&mut ws, &barrier).await;
    });
    assert_eq!(done.unwrap().version, 7);

    // An error that answers no command.
    send(
        &mut ws,
        json!({"type": "ERROR", "code": "RATE_LIMITED", "message": "slow down"}),
    )
    .await;
    loop {
        if let Update::Error(e) = next(&mut sub).await {
            assert_eq!(e.code, ErrorCode::RateLimited);
            break;
        }
    }

    // A close the client comes back from: it reconnects and resyncs.
    ws.close(Some(CloseFrame {
        code: CloseCode::Error,
        reason: "restart".into(),
    }))
    .await
    .unwrap();
    loop {
        if let Update::Disconnected { code, reason, .. } = next(&mut sub).await {
            assert_eq!((code, reason.as_str()), (Some(1011), "restart"));
            break;
        }
    }
    let mut ws = accept(&listener, &auth_tx).await;
    assert_eq!(
        auth.recv().await.unwrap().as_deref(),
        Some("Bearer secret-token")
    );
    send(
        &mut ws,
        json!({"type": "CONNECTED", "sessionId": SESSION, "timestamp": now_ms()}),
    )
    .await;
    state(&mut ws, "STATE_SYNC", 7).await;
    state(&mut ws, "STATE_UPDATE", 8).await;
    assert_eq!(versions_until(&mut sub, 8).await, [8], "7 was had already");

    // 4404: for good.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4404),
        reason: "no such session".into(),
    }))
    .await
    .unwrap();
    let mut rest = Vec::new();
    // Read as a `futures` Stream this time.
    while let Some(update) = timeout(Duration::from_secs(10), StreamExt::next(&mut sub))
        .await
        .unwrap()
    {
        rest.push(update);
    }
    assert_eq!(
        rest.last(),
        Some(&Update::Closed {
            code: Some(4404),
            reason: "no such session".into()
        }),
        "{rest:?}"
    );
    assert!(
        !rest
            .iter()
            .any(|u| matches!(u, Update::Disconnected { .. })),
        "{rest:?}"
    );
}

/// Without `TCP_NODELAY` a command or `PING` written while the previous
/// frame is unacknowledged waits for the server's delayed ACK (40 ms on
/// Linux); tungstenite leaves Nagle's algorithm on unless asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriptions_socket_has_nodelay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = Client::builder(&base).build().unwrap();
    let sub = client.subscribe(Uuid::parse_str(SESSION).unwrap()).unwrap();
    let (auth_tx, _auth) = mpsc::unbounded_channel();
    // After the handshake's request: the option is set before it is sent.
    let ws = accept(&listener, &auth_tx).await;
    let client_side = test_support::socket_bound_to(ws.get_ref().peer_addr().unwrap());
    assert!(rustix::net::sockopt::tcp_nodelay(&client_side).unwrap());
    // The scripted server's socket is as tokio made it: the check tells the
    // two sides apart.
    assert!(!rustix::net::sockopt::tcp_nodelay(ws.get_ref()).unwrap());
    sub.close();
}
