//! The WebSocket contract (section 4) end to end: a real server, real
//! tokio-tungstenite clients, every message type and close code.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::Duration;

use crate::common::{TestApp, chess, eventually, spawn_with, test_settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected message may take.
const WAIT: Duration = Duration::from_secs(5);

/// Rate limits off: these tests open many sockets and send many commands
/// from one address; the limits have their own tests below.
fn ws_settings() -> server::Settings {
    let mut settings = test_settings();
    settings.rate_limits.enabled = false;
    settings
}

async fn spawn_ws() -> TestApp {
    spawn_with(ws_settings()).await
}

async fn connect(app: &TestApp, path: &str) -> Ws {
    let (ws, _) = connect_async(app.ws_url(path))
        .await
        .expect("WebSocket handshake");
    ws
}

/// Connects to a session and consumes `CONNECTED` and `STATE_SYNC`; returns the snapshot.
async fn subscribe(app: &TestApp, id: &str) -> (Ws, Value) {
    let mut ws = connect(app, &format!("/ws?sessionId={id}")).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "CONNECTED");
    let sync = next_json(&mut ws).await;
    assert_eq!(sync["type"], "STATE_SYNC");
    (ws, sync["state"].clone())
}

/// The next text message as JSON; control frames are skipped, and so are
/// the presence events of other users' sockets (contract section 9; the
/// `presence` module tests them), which these tests do not count.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => {
                let value: Value = serde_json::from_str(t.as_str()).expect("JSON text");
                let presence = value["type"] == "EVENT"
                    && value["event"]["event_type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("presence_"));
                if !presence {
                    return value;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code and reason, and the text
/// messages that came before it.
async fn closed(ws: &mut Ws) -> (u16, String, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close in time")
            .expect("a close frame before the end of the stream")
            .expect("a valid frame");
        match msg {
            Message::Close(Some(frame)) => {
                return (
                    u16::from(frame.code),
                    frame.reason.as_str().to_owned(),
                    before,
                );
            }
            Message::Close(None) => panic!("a close frame without a code"),
            Message::Text(t) => before.push(serde_json::from_str(t.as_str()).expect("JSON")),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// The next `STATE_UPDATE`, skipping nothing else: anything else fails.
async fn next_update(ws: &mut Ws) -> Value {
    let msg = next_json(ws).await;
    assert_eq!(msg["type"], "STATE_UPDATE", "{msg}");
    msg
}

async fn new_session(app: &TestApp, bank_ms: i64) -> String {
    let v = app.create(chess(bank_ms, 0)).await;
    v["session_id"].as_str().expect("a session id").to_owned()
}

async fn metric(app: &TestApp, name: &str) -> Option<i64> {
    let text = app
        .http
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn connect_sends_connected_then_state_sync() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let mut ws = connect(&app, &format!("/ws?sessionId={id}")).await;

    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "CONNECTED");
    assert_eq!(connected["sessionId"], id.as_str());
    assert!(connected["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    let sync = next_json(&mut ws).await;
    assert_eq!(sync["type"], "STATE_SYNC");
    assert_eq!(sync["sessionId"], id.as_str());
    assert!(sync["timestamp"].is_i64());
    assert_eq!(sync["state"]["session_id"], id.as_str());
    assert_eq!(sync["state"]["version"], 1);
    assert_eq!(sync["state"]["status"], "pending");
    assert_eq!(
        sync["state"]["participants"][0]["time_remaining_ms"],
        60_000
    );
}

#[tokio::test]
async fn the_path_route_serves_the_same_socket() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let mut ws = connect(&app, &format!("/v1/sessions/{id}/ws")).await;
    assert_eq!(next_json(&mut ws).await["type"], "CONNECTED");
    assert_eq!(next_json(&mut ws).await["state"]["session_id"], id.as_str());
}

#[tokio::test]
async fn a_bad_or_missing_session_id_closes_with_1008() {
    let app = spawn_ws().await;
    for path in [
        "/ws?sessionId=not-a-uuid",
        "/ws",
        "/ws?session=x&token=t",
        "/v1/sessions/nope/ws",
    ] {
        let mut ws = connect(&app, path).await;
        let (code, reason, before) = closed(&mut ws).await;
        assert_eq!(code, 1008, "{path}: {reason}");
        assert!(before.is_empty(), "{path}: nothing before the close");
    }
}

#[tokio::test]
async fn an_unknown_session_closes_with_4404() {
    let app = spawn_ws().await;
    let mut ws = connect(&app, "/ws?sessionId=123e4567-e89b-12d3-a456-426614174000").await;
    let (code, _, before) = closed(&mut ws).await;
    assert_eq!(code, 4404);
    assert!(before.is_empty());
}

#[tokio::test]
async fn ping_gets_pong_with_the_client_time_echoed() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    send(
        &mut ws,
        json!({"type": "PING", "client_time_ms": 1_760_970_615_123_i64}),
    )
    .await;
    let pong = next_json(&mut ws).await;
    assert_eq!(pong["type"], "PONG");
    assert_eq!(pong["client_time_ms"], 1_760_970_615_123_i64);
    assert!(pong["timestamp"].as_i64().unwrap() > 1_600_000_000_000);

    send(&mut ws, json!({"type": "PING"})).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(pong["type"], "PONG");
    assert!(pong.get("client_time_ms").is_none(), "{pong}");
}

#[tokio::test]
async fn reconnect_gets_a_fresh_state_sync() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, first) = subscribe(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    send(&mut ws, json!({"type": "RECONNECT"})).await;
    let sync = next_json(&mut ws).await;
    assert_eq!(sync["type"], "STATE_SYNC");
    assert_eq!(sync["state"]["version"], first["version"]);
    assert!(sync["state"]["server_time_ms"].as_i64() > first["server_time_ms"].as_i64());
}

#[tokio::test]
async fn state_updates_arrive_in_increasing_version_order_from_rest_and_ws() {
    let app = spawn_ws().await;
    let id = new_session(&app, 300_000).await;
    let (mut a, _) = subscribe(&app, &id).await;
    let (mut b, _) = subscribe(&app, &id).await;

    // A REST command, then the socket's own commands: each arrives once, as STATE_UPDATE.
    assert_eq!(app.command(&id, "start", None).await.0, 200);
    send(&mut a, json!({"type": "SWITCH", "request_id": "s1"})).await;
    send(&mut a, json!({"type": "PAUSE"})).await;
    send(&mut a, json!({"type": "RESUME", "expected_version": 4})).await;
    for ws in [&mut a, &mut b] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let update = next_update(ws).await;
            assert_eq!(update["sessionId"], id.as_str());
            assert!(update["timestamp"].is_i64());
            seen.push((
                update["state"]["version"].as_u64().unwrap(),
                update["state"]["status"].as_str().unwrap().to_owned(),
                update["state"]["active_participant_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ));
        }
        assert_eq!(
            seen,
            [
                (2, "running".to_owned(), "white".to_owned()),
                (3, "running".to_owned(), "black".to_owned()),
                (4, "paused".to_owned(), "black".to_owned()),
                (5, "running".to_owned(), "black".to_owned()),
            ]
        );
    }

    // Concurrent switches from REST: versions only ever increase.
    let calls = (0..8).map(|_| app.command(&id, "switch", None));
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
    }
    for ws in [&mut a, &mut b] {
        let mut last = 5;
        while last < 13 {
            let version = next_update(ws).await["state"]["version"].as_u64().unwrap();
            assert!(version > last, "version {version} after {last}");
            last = version;
        }
    }
}

#[tokio::test]
async fn rejected_commands_answer_error_with_the_wire_code() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    // Pending: a switch is not allowed yet.
    send(&mut ws, json!({"type": "SWITCH", "request_id": "r1"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["code"], "INVALID_STATE_TRANSITION");
    assert_eq!(e["request_id"], "r1");
    assert!(e["message"].as_str().unwrap().contains("pending"), "{e}");

    assert_eq!(app.command(&id, "start", None).await.0, 200);
    assert_eq!(next_update(&mut ws).await["state"]["version"], 2);

    send(
        &mut ws,
        json!({"type": "SWITCH", "expected_version": 99, "request_id": 7}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "CONFLICT");
    assert_eq!(e["request_id"], 7);
    assert_eq!(
        e["details"],
        json!({"expected_version": 99, "actual_version": 2})
    );

    send(
        &mut ws,
        json!({"type": "SWITCH", "next_participant_id": "nobody"}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "VALIDATION_ERROR");
    assert!(e.get("request_id").is_none());

    send(
        &mut ws,
        json!({"type": "PAUSE", "next_participant_id": "black", "request_id": "r3"}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("VALIDATION_ERROR"), Some("r3"))
    );

    // Resume while running.
    send(&mut ws, json!({"type": "RESUME"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "INVALID_STATE_TRANSITION");

    // Nothing above changed the session.
    assert_eq!(app.get(&id).await["version"], 2);
}

#[tokio::test]
async fn bad_json_unknown_types_and_binary_frames_get_error_and_the_socket_stays_open() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    ws.send(Message::text("{not json")).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("ERROR"), Some("VALIDATION_ERROR"))
    );

    send(&mut ws, json!({"type": "START", "request_id": "x"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("VALIDATION_ERROR"), Some("x"))
    );

    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "VALIDATION_ERROR");

    send(&mut ws, json!({"type": "PING"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "PONG");
}

#[tokio::test]
async fn frames_over_10_kib_close_with_1009() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    // Exactly 10 KiB is still accepted (and is bad JSON: an ERROR).
    let padding = " ".repeat(10 * 1024 - r#"{"type":"PING"}"#.len());
    ws.send(Message::text(format!(r#"{{"type":"PING"}}{padding}"#)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "PONG");

    ws.send(Message::text("x".repeat(11 * 1024))).await.unwrap();
    let (code, _, _) = closed(&mut ws).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn more_than_100_messages_a_minute_close_with_1008() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    for i in 0..101 {
        send(&mut ws, json!({"type": "PING", "client_time_ms": i})).await;
    }
    let (code, reason, before) = closed(&mut ws).await;
    assert_eq!(code, 1008, "{reason}");
    assert_eq!(before.len(), 100, "the first 100 were answered");
    assert!(before.iter().all(|m| m["type"] == "PONG"));
}

#[tokio::test]
async fn deleting_the_session_sends_session_deleted_then_closes_with_1000() {
    let app = spawn_ws().await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;

    let (status, _) = app
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    // The cancel that deletion implies, then the deletion itself.
    let cancelled = next_update(&mut ws).await;
    assert_eq!(cancelled["state"]["status"], "cancelled");
    let deleted = next_json(&mut ws).await;
    assert_eq!(deleted["type"], "SESSION_DELETED");
    assert_eq!(deleted["sessionId"], id.as_str());
    assert!(deleted["timestamp"].is_i64());
    let (code, _, before) = closed(&mut ws).await;
    assert_eq!(code, 1000);
    assert!(before.is_empty());
}

#[tokio::test]
async fn timeouts_reach_clients_as_state_update_then_event() {
    let app = spawn_ws().await;
    let id = new_session(&app, 1_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;
    assert_eq!(app.command(&id, "start", None).await.0, 200);
    let started = next_update(&mut ws).await;
    let started_at = started["state"]["cycle_started_at_ms"].as_i64().unwrap();

    // Nobody presses the clock: the timeout worker applies the deadline.
    let update = next_update(&mut ws).await;
    assert_eq!(update["state"]["status"], "expired");
    assert_eq!(
        update["state"]["session_completed_at_ms"],
        started_at + 1_000
    );
    let event = next_json(&mut ws).await;
    assert_eq!(event["type"], "EVENT");
    assert_eq!(event["sessionId"], id.as_str());
    assert_eq!(event["event"]["at_ms"], started_at + 1_000);
    let kind = event["event"]["event_type"].as_str().unwrap();
    assert!(
        ["participant_expired", "session_expired"].contains(&kind),
        "{kind}"
    );
}

#[tokio::test]
async fn silent_clients_are_dropped_and_listening_ones_are_not() {
    let app = spawn_with(server::Settings {
        ws_heartbeat_interval: Duration::from_millis(100),
        ws_connection_timeout: Duration::from_millis(400),
        ..ws_settings()
    })
    .await;
    let id = new_session(&app, 60_000).await;
    let (mut silent, _) = subscribe(&app, &id).await;
    let (mut listening, _) = subscribe(&app, &id).await;

    // The listening client reads (and so answers pings) for a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut pings = 0;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, listening.next()).await {
        match msg.unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 5, "the server pings every 100 ms: {pings}");

    // The silent one read nothing meanwhile, so answered no ping: the
    // server dropped it (its gauge counts only the listening one)...
    assert_eq!(metric(&app, "kairos_ws_connections").await, Some(1));
    // ...with 1011, unless the client's queued pongs hit the closed socket
    // before it could read the close frame.
    loop {
        match tokio::time::timeout(WAIT, silent.next())
            .await
            .expect("an end in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1011, "{}", frame.reason);
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => break,
        }
    }

    send(&mut listening, json!({"type": "PING"})).await;
    assert_eq!(next_json(&mut listening).await["type"], "PONG");
}

#[tokio::test]
async fn the_connection_cap_refuses_with_503_and_slots_are_released() {
    let app = spawn_with(server::Settings {
        ws_max_connections: 2,
        ..ws_settings()
    })
    .await;
    let id = new_session(&app, 60_000).await;
    let (mut a, _) = subscribe(&app, &id).await;
    let (_b, _) = subscribe(&app, &id).await;
    assert_eq!(metric(&app, "kairos_ws_connections").await, Some(2));

    match connect_async(app.ws_url(&format!("/ws?sessionId={id}"))).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503);
            assert!(res.headers().contains_key("retry-after"));
        }
        Ok(_) => panic!("a third socket was accepted"),
        Err(e) => panic!("unexpected error {e}"),
    }

    a.close(None).await.unwrap();
    let freed = eventually(WAIT, || async {
        (metric(&app, "kairos_ws_connections").await == Some(1)).then_some(())
    })
    .await;
    assert!(freed.is_some(), "the closed socket's slot was released");

    // Early refusals hold a slot only while they close: each is released
    // after its close handshake, which the server may finish after the
    // client has read the close frame, so the next one waits for it (with
    // one slot left, a refusal still holding its own would make the next
    // connection a 503).
    for _ in 0..3 {
        let mut bad = connect(&app, "/ws?sessionId=nope").await;
        assert_eq!(closed(&mut bad).await.0, 1008);
        let settled = eventually(WAIT, || async {
            (metric(&app, "kairos_ws_connections").await == Some(1)).then_some(())
        })
        .await;
        assert!(settled.is_some(), "a refused socket released its slot");
    }
    let (_c, _) = subscribe(&app, &id).await;
}

#[tokio::test]
async fn shutdown_refuses_new_sockets_then_closes_open_ones_with_1001() {
    let app = spawn_with(server::Settings {
        shutdown_drain: Duration::from_millis(500),
        ..ws_settings()
    })
    .await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;
    let url = app.ws_url(&format!("/ws?sessionId={id}"));

    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: new sockets are sent elsewhere.
    match connect_async(url).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status().as_u16(), 503),
        Ok(_) => panic!("a socket was accepted while draining"),
        Err(e) => panic!("unexpected error {e}"),
    }
    let (code, _, _) = closed(&mut ws).await;
    assert_eq!(code, 1001);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn over_the_connect_limit_sockets_close_with_1008() {
    let mut settings = test_settings();
    settings.rate_limits.enabled = true;
    settings.rate_limits.ws_connect = kairos_domain::Limit::per_minute(2);
    let app = spawn_with(settings).await;
    let id = new_session(&app, 60_000).await;
    let (_a, _) = subscribe(&app, &id).await;
    let (_b, _) = subscribe(&app, &id).await;

    let mut third = connect(&app, &format!("/ws?sessionId={id}")).await;
    let (code, reason, before) = closed(&mut third).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("limit"), "{reason}");
    assert!(before.is_empty());
}

#[tokio::test]
async fn ws_switches_share_the_per_session_switch_limit() {
    let mut settings = test_settings();
    settings.rate_limits.enabled = true;
    settings.rate_limits.switch = kairos_domain::Limit::per_second(2);
    let app = spawn_with(settings).await;
    let id = new_session(&app, 60_000).await;
    let (mut ws, _) = subscribe(&app, &id).await;
    assert_eq!(app.command(&id, "start", None).await.0, 200);
    assert_eq!(next_update(&mut ws).await["state"]["version"], 2);

    // One REST switch and one WebSocket switch use up the second's budget.
    assert_eq!(app.command(&id, "switch", None).await.0, 200);
    assert_eq!(next_update(&mut ws).await["state"]["version"], 3);
    send(&mut ws, json!({"type": "SWITCH"})).await;
    assert_eq!(next_update(&mut ws).await["state"]["version"], 4);
    send(&mut ws, json!({"type": "SWITCH", "request_id": "third"})).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["code"], "RATE_LIMITED");
    assert_eq!(e["request_id"], "third");
}

// --- Time controls of real events (contract section 8) ---

/// A time warning reaches subscribers with nobody pressing: its own
/// version's `STATE_UPDATE`, then an `EVENT` `time_warning`; then the
/// expiry. Values and order only, no timings.
#[tokio::test]
async fn a_time_warning_arrives_as_an_event_with_nobody_pressing() {
    let app = spawn_ws().await;
    let mut cfg = chess(2_500, 0);
    cfg["warnings_ms"] = json!([2000]);
    let id = app.create(cfg).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, snapshot) = subscribe(&app, &id).await;
    assert_eq!(snapshot["warnings_ms"], json!([2000]));
    assert_eq!(app.command(&id, "start", None).await.0, 200);
    let started = next_update(&mut ws).await;
    assert_eq!(started["state"]["version"], 2);
    let started_at = started["state"]["cycle_started_at_ms"].as_i64().unwrap();

    // The warning takes its own version.
    let update = next_update(&mut ws).await;
    assert_eq!(update["state"]["version"], 3, "{update}");
    assert_eq!(update["state"]["status"], "running");
    let event = next_json(&mut ws).await;
    assert_eq!(event["type"], "EVENT", "{event}");
    assert_eq!(event["sessionId"], id.as_str());
    let e = &event["event"];
    assert_eq!(e["event_type"], "time_warning", "{event}");
    assert_eq!(e["version"], 3);
    assert_eq!(e["participant_id"], "white");
    assert_eq!(e["time_remaining_ms"], 2000);
    assert_eq!(e["at_ms"], started_at + 500);
    assert_eq!(e["metadata"]["threshold_ms"], 2000);

    // Then the clock runs out: STATE_UPDATE, then its EVENT.
    let update = next_update(&mut ws).await;
    assert_eq!(update["state"]["status"], "expired", "{update}");
    let event = next_json(&mut ws).await;
    assert_eq!(event["type"], "EVENT");
    assert_eq!(event["event"]["at_ms"], started_at + 2_500);

    // The warning is in the history (the audit trail) too.
    let history = eventually(WAIT, || async {
        let (status, body) = app
            .call("GET", &format!("/v1/sessions/{id}/events"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let list = body["data"].as_array().unwrap().clone();
        list.iter()
            .any(|e| {
                e["event_type"] == "participant_expired" || e["event_type"] == "session_expired"
            })
            .then_some(list)
    })
    .await
    .expect("the expiry in the history");
    let warnings: Vec<&Value> = history
        .iter()
        .filter(|e| e["event_type"] == "time_warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{history:?}");
    assert_eq!(warnings[0]["at_ms"], started_at + 500);
}

/// `ADD_TIME` over the WebSocket has the rights of REST's `add_time`: a
/// player's is refused with FORBIDDEN, the owner's commits a version that
/// every subscriber gets as `STATE_UPDATE` then `EVENT` `time_added`. A
/// `SWITCH` with a bad `lag_ms` is an `ERROR` naming it.
#[tokio::test]
async fn add_time_and_lag_ms_over_the_websocket() {
    let app = spawn_with(crate::common::secured_settings()).await;
    let host = crate::common::token("host", "arbiter", None, None);
    let (status, body) = app
        .call_as(Some(&host), "POST", "/v1/sessions", Some(chess(60_000, 0)))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["session_id"].as_str().unwrap().to_owned();
    let player = crate::common::token("player", "p1", Some(&id), Some("white"));
    let socket = |token: String| {
        let path = format!("/ws?sessionId={id}&token={token}");
        let app = &app;
        async move {
            let mut ws = connect(app, &path).await;
            assert_eq!(next_json(&mut ws).await["type"], "CONNECTED");
            assert_eq!(next_json(&mut ws).await["type"], "STATE_SYNC");
            ws
        }
    };
    let mut owner = socket(host.clone()).await;
    let mut white = socket(player).await;

    send(
        &mut white,
        json!({"type": "ADD_TIME", "participant_id": "white", "ms": 60000, "request_id": "a1"}),
    )
    .await;
    let e = next_json(&mut white).await;
    assert_eq!(e["type"], "ERROR", "{e}");
    assert_eq!(e["code"], "FORBIDDEN");
    assert_eq!(e["request_id"], "a1");

    send(
        &mut owner,
        json!({"type": "ADD_TIME", "participant_id": "black", "ms": 0, "request_id": "a2"}),
    )
    .await;
    let e = next_json(&mut owner).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("VALIDATION_ERROR"), Some("a2"))
    );
    assert_eq!(e["details"][0]["field"], "ms", "{e}");

    send(
        &mut owner,
        json!({"type": "ADD_TIME", "participant_id": "black", "ms": 30000, "reason": "noise"}),
    )
    .await;
    for ws in [&mut owner, &mut white] {
        let update = next_update(ws).await;
        assert_eq!(update["state"]["version"], 2);
        assert_eq!(update["state"]["participants"][1]["total_time_ms"], 90_000);
        let event = next_json(ws).await;
        assert_eq!(event["type"], "EVENT", "{event}");
        assert_eq!(event["event"]["event_type"], "time_added");
        assert_eq!(event["event"]["participant_id"], "black");
        assert_eq!(
            event["event"]["metadata"],
            json!({"ms": 30000, "reason": "noise"})
        );
    }

    let (status, _) = app
        .call_as(
            Some(&host),
            "POST",
            &format!("/v1/sessions/{id}/start"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_update(&mut white).await["state"]["version"], 3);
    send(
        &mut white,
        json!({"type": "SWITCH", "lag_ms": 10001, "request_id": "s1"}),
    )
    .await;
    let e = next_json(&mut white).await;
    assert_eq!(e["code"], "VALIDATION_ERROR", "{e}");
    assert_eq!(e["details"][0]["field"], "lag_ms");
    send(&mut white, json!({"type": "SWITCH", "lag_ms": 50})).await;
    let update = next_update(&mut white).await;
    assert_eq!(update["state"]["version"], 4);
    assert_eq!(update["state"]["active_participant_id"], "black");
}
