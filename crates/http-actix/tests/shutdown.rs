//! Shutdown waits for the WebSockets: once
//! `Lifecycle::close_sockets_and_wait` returns, every socket's task has sent
//! its close frame (1001, going away) and ended, its slot is given back, and
//! no task the transport spawned (hub pumps included) is left; the server
//! then stops and the client reads the close frame.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use http_actix::Lifecycle;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_each_socket_to_send_its_close_frame() {
    let state = common::state();
    let id = common::chess_session(&state).await;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = http_actix::serve(listener, state.clone(), Some(1), || {}).unwrap();
    let handle = server.handle();
    let running = tokio::spawn(server);

    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?sessionId={id}"))
                .await
                .unwrap();
        for expected in ["CONNECTED", "STATE_SYNC"] {
            let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let message: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
            assert_eq!(message["type"], expected);
        }
        sockets.push(ws);
    }
    // Three socket tasks and the session's hub pump.
    assert_eq!(state.lifecycle.tasks().len(), 4);
    assert_eq!(state.ws_connections.load(Ordering::SeqCst), 3);

    assert!(
        state
            .lifecycle
            .close_sockets_and_wait(Duration::from_secs(5))
            .await,
        "every task ended before the deadline"
    );
    assert!(state.lifecycle.tasks().is_empty());
    assert_eq!(state.ws_connections.load(Ordering::SeqCst), 0);
    assert_eq!(state.hub.watched_sessions(), 0);

    // As `run_until_stopped` does next: stop the server, which flushes
    // what the sockets queued.
    handle.stop(true).await;
    for mut ws in sockets {
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(u16::from(close.code), 1001, "{}", close.reason);
    }
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_wait_gives_up_at_its_deadline() {
    let lifecycle = Lifecycle::new();
    let _stuck = lifecycle.tasks().spawn(std::future::pending::<()>());
    assert!(
        !lifecycle
            .close_sockets_and_wait(Duration::from_millis(50))
            .await
    );
    assert_eq!(lifecycle.tasks().len(), 1);
}
