//! WebSocket hardening with authentication on: tokens (and their expiry on
//! an open socket), origins, the per-user cap, the authorization matrix on
//! WebSocket commands, and CORS.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::Duration;

use crate::common::{self, TestApp, chess, secured_settings, spawn_with, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const GOOD: &str = "https://good.example";

fn settings() -> server::Settings {
    let mut s = secured_settings();
    s.allowed_origins = Some(vec![GOOD.to_owned()]);
    s.ws_max_connections_per_user = 2;
    s
}

async fn open(app: &TestApp, id: &str, token: Option<&str>, origin: Option<&str>) -> Ws {
    let mut url = format!("/ws?sessionId={id}");
    if let Some(t) = token {
        url.push_str(&format!("&token={t}"));
    }
    let mut req = app.ws_url(&url).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake")
        .0
}

async fn next(ws: &mut Ws) -> Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("frame");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn expect_close(ws: &mut Ws, code: CloseCode) {
    match next(ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, code, "{}", frame.reason),
        other => panic!("expected close {code:?}, got {other:?}"),
    }
}

async fn connected(ws: &mut Ws) {
    assert_eq!(next_json(ws).await["type"], "CONNECTED");
    assert_eq!(next_json(ws).await["type"], "STATE_SYNC");
}

async fn session(app: &TestApp, owner: &str) -> String {
    let (status, body) = app
        .call_as(Some(owner), "POST", "/v1/sessions", Some(chess(60_000, 0)))
        .await;
    assert_eq!(status, 201);
    body["data"]["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_and_origins_are_checked_before_anything_is_sent() {
    let app = spawn_with(settings()).await;
    let owner = token("host", "alice", None, None);
    let id = session(&app, &owner).await;
    let viewer = token("viewer", "v1", None, None);

    let mut ws = open(&app, &id, None, Some(GOOD)).await;
    expect_close(&mut ws, CloseCode::Policy).await;
    let mut ws = open(&app, &id, Some("forged.token.x"), Some(GOOD)).await;
    expect_close(&mut ws, CloseCode::Policy).await;
    let mut ws = open(&app, &id, Some(&viewer), Some("https://evil.example")).await;
    expect_close(&mut ws, CloseCode::Policy).await;
    // A token for another session cannot subscribe here.
    let other = session(&app, &owner).await;
    let elsewhere = token("viewer", "v2", Some(&other), None);
    let mut ws = open(&app, &id, Some(&elsewhere), Some(GOOD)).await;
    expect_close(&mut ws, CloseCode::Policy).await;
    // The right origin, or no Origin at all (not a browser), with a valid token.
    let mut ws = open(&app, &id, Some(&viewer), Some(GOOD)).await;
    connected(&mut ws).await;
    let mut ws2 = open(&app, &id, Some(&token("viewer", "v3", None, None)), None).await;
    connected(&mut ws2).await;
}

#[tokio::test]
async fn one_user_holds_at_most_the_cap_and_gets_a_place_back_on_close() {
    let app = spawn_with(settings()).await;
    let owner = token("host", "alice", None, None);
    let id = session(&app, &owner).await;
    let v = token("viewer", "same-user", None, None);
    let mut a = open(&app, &id, Some(&v), None).await;
    connected(&mut a).await;
    let mut b = open(&app, &id, Some(&v), None).await;
    connected(&mut b).await;
    let mut c = open(&app, &id, Some(&v), None).await;
    expect_close(&mut c, CloseCode::Policy).await;
    // Another user is not affected.
    let mut d = open(
        &app,
        &id,
        Some(&token("viewer", "someone-else", None, None)),
        None,
    )
    .await;
    connected(&mut d).await;
    a.close(None).await.unwrap();
    drop(a);
    // The place comes back once the server saw the close.
    let mut reopened = false;
    for _ in 0..50 {
        let mut e = open(&app, &id, Some(&v), None).await;
        if let Message::Text(t) = next(&mut e).await {
            assert!(t.as_str().contains("CONNECTED"));
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the closed socket's place never came back");
}

async fn command(ws: &mut Ws, kind: &str, rid: &str) {
    ws.send(Message::text(
        json!({"type": kind, "request_id": rid}).to_string(),
    ))
    .await
    .unwrap();
}

/// The next message that answers `rid` (an ERROR) or is a STATE_UPDATE.
async fn outcome(ws: &mut Ws) -> Value {
    loop {
        let m = next_json(ws).await;
        if m["type"] == "ERROR" || m["type"] == "STATE_UPDATE" {
            return m;
        }
    }
}

#[tokio::test]
async fn websocket_commands_follow_the_authorization_matrix() {
    let app = spawn_with(settings()).await;
    let owner = token("host", "alice", None, None);
    let id = session(&app, &owner).await;
    let (status, _) = app
        .call_as(
            Some(&owner),
            "POST",
            &format!("/v1/sessions/{id}/start"),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let mut viewer = open(&app, &id, Some(&token("viewer", "v", None, None)), None).await;
    connected(&mut viewer).await;
    let mut black = open(
        &app,
        &id,
        Some(&token("player", "p2", None, Some("black"))),
        None,
    )
    .await;
    connected(&mut black).await;
    let mut white = open(
        &app,
        &id,
        Some(&token("player", "p1", None, Some("white"))),
        None,
    )
    .await;
    connected(&mut white).await;
    let mut host = open(&app, &id, Some(&owner), None).await;
    connected(&mut host).await;

    for (ws, kind) in [
        (&mut viewer, "SWITCH"),
        (&mut black, "SWITCH"),
        (&mut white, "PAUSE"),
    ] {
        command(ws, kind, "r1").await;
        let m = outcome(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["code"].as_str()),
            (Some("ERROR"), Some("FORBIDDEN")),
            "{kind}"
        );
        assert_eq!(m["request_id"], "r1");
    }
    command(&mut viewer, "PAUSE", "r1b").await;
    assert_eq!(outcome(&mut viewer).await["code"], "FORBIDDEN");
    // White is active and may press; everybody hears it.
    command(&mut white, "SWITCH", "r2").await;
    let m = outcome(&mut white).await;
    assert_eq!(m["type"], "STATE_UPDATE");
    assert_eq!(m["state"]["active_participant_id"], "black");
    assert_eq!(outcome(&mut viewer).await["state"]["version"], 3);
    // The owner may pause and resume.
    assert_eq!(outcome(&mut host).await["state"]["version"], 3);
    command(&mut host, "PAUSE", "r3").await;
    let m = outcome(&mut host).await;
    assert_eq!(m["type"], "STATE_UPDATE");
    assert_eq!(
        (
            m["state"]["version"].as_u64(),
            m["state"]["status"].as_str()
        ),
        (Some(4), Some("paused"))
    );
    command(&mut host, "RESUME", "r4").await;
    assert_eq!(outcome(&mut host).await["state"]["status"], "running");
}

#[tokio::test]
async fn cors_answers_only_allowed_origins() {
    let app = spawn_with(settings()).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight(GOOD).await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], GOOD);
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let res = app
        .http
        .get(app.url("/v1/time"))
        .header("origin", GOOD)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], GOOD);
}

fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// A viewer token signed with the test secret, expiring at `exp` (s).
fn expiring(sub: &str, exp: i64) -> String {
    let secret = http_actix::auth::Secret::new(common::TEST_SECRET.into()).unwrap();
    let claims = http_actix::auth::Claims {
        sub: sub.into(),
        exp,
        role: "viewer".into(),
        sid: None,
        pid: None,
    };
    http_actix::auth::mint(&secret, &claims).unwrap()
}

async fn expect_expired_close(ws: &mut Ws) {
    match next(ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Policy, "{}", frame.reason);
            assert_eq!(frame.reason.as_str(), "token expired");
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_socket_is_closed_with_1008_when_its_token_expires_not_before() {
    let mut s = settings();
    s.ws_heartbeat_interval = Duration::from_millis(100);
    let app = spawn_with(s).await;
    let id = session(&app, &token("host", "alice", None, None)).await;
    // Leeway is 0 in these settings: the token is held until `exp` exactly.
    let exp = unix_ms() / 1_000 + 2;
    let mut ws = open(&app, &id, Some(&expiring("short-lived", exp)), None).await;
    connected(&mut ws).await;
    expect_expired_close(&mut ws).await;
    let closed_at = unix_ms();
    assert!(
        closed_at >= exp * 1_000,
        "closed at {closed_at} ms, before the token expired at {exp} s"
    );
}

#[tokio::test]
async fn a_message_under_an_expired_token_closes_the_socket_instead_of_an_answer() {
    // No tick for a minute: only the message itself can notice the expiry.
    let mut s = settings();
    s.ws_heartbeat_interval = Duration::from_secs(60);
    s.ws_connection_timeout = Duration::from_secs(60);
    let app = spawn_with(s).await;
    let id = session(&app, &token("host", "alice", None, None)).await;
    let exp = unix_ms() / 1_000 + 3;
    let mut ws = open(&app, &id, Some(&expiring("short-lived", exp)), None).await;
    connected(&mut ws).await;
    let ping = Message::text(r#"{"type":"PING"}"#);
    ws.send(ping.clone()).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "PONG");
    let wait = exp * 1_000 + 100 - unix_ms();
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    ws.send(ping).await.unwrap();
    expect_expired_close(&mut ws).await;
}
