//! The authorization matrix of contract section 6 over real HTTP, forged
//! tokens, and a check that tokens never reach the logs.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use crate::common::{self, TestApp, chess, create_session, secured_settings, spawn_with, token};
use serde_json::{Value, json};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

struct Cast {
    admin: String,
    owner: String,
    other_host: String,
    white: String,
    black: String,
    viewer: String,
}

fn cast() -> Cast {
    Cast {
        admin: token("admin", "root", None, None),
        owner: token("host", "alice", None, None),
        other_host: token("host", "bob", None, None),
        white: token("player", "p1", None, Some("white")),
        black: token("player", "p2", None, Some("black")),
        viewer: token("viewer", "v", None, None),
    }
}

async fn new_session(app: &TestApp, owner: &str) -> String {
    create_session(
        &app.http,
        app.url("/v1/sessions"),
        Some(owner),
        chess(60_000, 0),
    )
    .await
}

#[tokio::test]
async fn without_a_valid_token_everything_but_the_open_endpoints_is_401() {
    let app = spawn_with(secured_settings()).await;
    for (method, path) in [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/123e4567-e89b-12d3-a456-426614174000"),
        (
            "POST",
            "/v1/sessions/123e4567-e89b-12d3-a456-426614174000/switch",
        ),
        (
            "DELETE",
            "/v1/sessions/123e4567-e89b-12d3-a456-426614174000",
        ),
        (
            "GET",
            "/v1/sessions/123e4567-e89b-12d3-a456-426614174000/events",
        ),
    ] {
        let res = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(code(&body), "UNAUTHORIZED");
    }
    for path in ["/health", "/ready", "/v1/time", "/openapi.json"] {
        let (status, _) = app.call("GET", path, None).await;
        assert_eq!(status, 200, "{path} must stay open");
    }
}

#[tokio::test]
async fn forged_tokens_are_401() {
    let app = spawn_with(secured_settings()).await;
    let now = 4_000_000_000_i64;
    let claims = json!({"sub": "mallory", "exp": now, "role": "admin"});
    let wrong_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-not-the-secret-000"),
    )
    .unwrap();
    let good = token("viewer", "v", None, None);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    // Tampered payload: claims say admin, signature is the viewer's.
    parts[1] = wrong_secret.split('.').nth(1).unwrap().to_owned();
    let tampered = parts.join(".");
    // alg: none with admin claims.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    // RS256-looking header with an HS signature.
    let rs_header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
    let rs256 = format!(
        "{rs_header}.{}.{}",
        parts[1],
        good.split('.').nth(2).unwrap()
    );
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a", "exp": 1_000, "role": "admin"}),
        &jsonwebtoken::EncodingKey::from_secret(common::TEST_SECRET.as_bytes()),
    )
    .unwrap();
    for (name, t) in [
        ("wrong secret", wrong_secret.as_str()),
        ("tampered", tampered.as_str()),
        ("alg none", alg_none.as_str()),
        ("rs256", rs256.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "abc"),
    ] {
        let (status, body) = app
            .call_as(Some(t), "POST", "/v1/sessions", Some(chess(60_000, 0)))
            .await;
        assert_eq!((status, code(&body)), (401, "UNAUTHORIZED"), "{name}");
        assert!(
            !body.to_string().contains(t),
            "{name}: the token was echoed"
        );
    }
}

#[tokio::test]
async fn create_is_for_admins_and_hosts() {
    let app = spawn_with(secured_settings()).await;
    let c = cast();
    for (who, t, want) in [
        ("admin", &c.admin, 201),
        ("host", &c.owner, 201),
        ("player", &c.white, 403),
        ("viewer", &c.viewer, 403),
    ] {
        let (status, body) = app
            .call_as(Some(t), "POST", "/v1/sessions", Some(chess(60_000, 0)))
            .await;
        assert_eq!(status, want, "{who}: {body}");
        if want == 403 {
            assert_eq!(code(&body), "FORBIDDEN");
        }
    }
}

#[tokio::test]
async fn control_commands_are_for_admins_and_the_owner() {
    let app = spawn_with(secured_settings()).await;
    let c = cast();
    let id = new_session(&app, &c.owner).await;
    // Refused whatever the state: the right is checked first.
    for cmd in ["start", "pause", "resume", "complete", "cancel"] {
        for (who, t) in [
            ("other host", &c.other_host),
            ("player", &c.white),
            ("viewer", &c.viewer),
        ] {
            let (status, body) = app
                .call_as(Some(t), "POST", &format!("/v1/sessions/{id}/{cmd}"), None)
                .await;
            assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{who} {cmd}");
        }
    }
    for (who, t) in [
        ("other host", &c.other_host),
        ("player", &c.white),
        ("viewer", &c.viewer),
    ] {
        let (status, _) = app
            .call_as(Some(t), "DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(status, 403, "{who} delete");
        let (status, _) = app
            .call_as(Some(t), "GET", &format!("/v1/sessions/{id}/events"), None)
            .await;
        assert_eq!(status, 403, "{who} events");
    }
    // The owner drives the whole lifecycle; the admin may too.
    for (cmd, t) in [
        ("start", &c.owner),
        ("pause", &c.owner),
        ("resume", &c.admin),
        ("complete", &c.owner),
    ] {
        let (status, body) = app
            .call_as(Some(t), "POST", &format!("/v1/sessions/{id}/{cmd}"), None)
            .await;
        assert_eq!(status, 200, "{cmd}: {body}");
    }
    let (status, _) = app
        .call_as(
            Some(&c.owner),
            "GET",
            &format!("/v1/sessions/{id}/events"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call_as(
            Some(&c.admin),
            "GET",
            &format!("/v1/sessions/{id}/events"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let id2 = new_session(&app, &c.owner).await;
    let (status, _) = app
        .call_as(
            Some(&c.owner),
            "POST",
            &format!("/v1/sessions/{id2}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call_as(
            Some(&c.owner),
            "DELETE",
            &format!("/v1/sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call_as(
            Some(&c.admin),
            "DELETE",
            &format!("/v1/sessions/{id2}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // A retried delete is 204 for those who may delete sessions, and still
    // 403 for those who may not.
    let (status, _) = app
        .call_as(
            Some(&c.owner),
            "DELETE",
            &format!("/v1/sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    for (who, t) in [("player", &c.white), ("viewer", &c.viewer)] {
        let (status, body) = app
            .call_as(Some(t), "DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(
            (status, code(&body)),
            (403, "FORBIDDEN"),
            "{who} delete of a deleted session"
        );
    }
}

#[tokio::test]
async fn switch_is_for_the_active_player_the_owner_and_admins() {
    let app = spawn_with(secured_settings()).await;
    let c = cast();
    let id = new_session(&app, &c.owner).await;
    let path = format!("/v1/sessions/{id}/switch");
    app.call_as(
        Some(&c.owner),
        "POST",
        &format!("/v1/sessions/{id}/start"),
        None,
    )
    .await;
    // White is active: black, the viewer and another host may not press.
    for (who, t) in [
        ("black", &c.black),
        ("viewer", &c.viewer),
        ("other host", &c.other_host),
    ] {
        let (status, body) = app.call_as(Some(t), "POST", &path, None).await;
        assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{who}");
    }
    let (status, body) = app.call_as(Some(&c.white), "POST", &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["active_participant_id"], "black");
    // Now white may not, black may.
    let (status, _) = app.call_as(Some(&c.white), "POST", &path, None).await;
    assert_eq!(status, 403);
    let (status, _) = app.call_as(Some(&c.black), "POST", &path, None).await;
    assert_eq!(status, 200);
    let (status, _) = app.call_as(Some(&c.owner), "POST", &path, None).await;
    assert_eq!(status, 200);
    let (status, _) = app.call_as(Some(&c.admin), "POST", &path, None).await;
    assert_eq!(status, 200);
    // A player token without pid may not press anybody's clock.
    let nobody = token("player", "p3", None, None);
    let (status, _) = app.call_as(Some(&nobody), "POST", &path, None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn sid_restricts_a_token_to_one_session() {
    let app = spawn_with(secured_settings()).await;
    let c = cast();
    let id = new_session(&app, &c.owner).await;
    let other = new_session(&app, &c.owner).await;
    let right = token("viewer", "v", Some(&id), None);
    let wrong = token("viewer", "v", Some(&other), None);
    let (status, _) = app
        .call_as(Some(&right), "GET", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .call_as(Some(&wrong), "GET", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!((status, code(&body)), (403, "FORBIDDEN"));
    // A player of another session cannot press here even as "white".
    app.call_as(
        Some(&c.owner),
        "POST",
        &format!("/v1/sessions/{id}/start"),
        None,
    )
    .await;
    let white_elsewhere = token("player", "p1", Some(&other), Some("white"));
    let (status, _) = app
        .call_as(
            Some(&white_elsewhere),
            "POST",
            &format!("/v1/sessions/{id}/switch"),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let white_here = token("player", "p1", Some(&id), Some("white"));
    let (status, _) = app
        .call_as(
            Some(&white_here),
            "POST",
            &format!("/v1/sessions/{id}/switch"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // Even an admin token bound to another session is refused here.
    let admin_elsewhere = token("admin", "root", Some(&other), None);
    let (status, _) = app
        .call_as(
            Some(&admin_elsewhere),
            "GET",
            &format!("/v1/sessions/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    // Run the real binary with the most verbose logging and look at its output.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kairos-server"))
        .env("PORT", port.to_string())
        .env("METRICS_PORT", metrics_port.to_string())
        .env("JWT_SECRET", common::TEST_SECRET)
        .env("RUST_LOG", "trace")
        .env("SHUTDOWN_DRAIN_SECONDS", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if http
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(up, "server did not start");
    let t = token("host", "alice", None, None);
    let id = create_session(
        &http,
        format!("{base}/v1/sessions"),
        Some(&t),
        chess(60_000, 0),
    )
    .await;
    // A token in the WebSocket query string, and a bad one in a header.
    let _ = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/ws?sessionId={id}&token={t}"
    ))
    .await;
    let _ = http
        .get(format!("{base}/v1/sessions/{id}"))
        .bearer_auth("bogus.token.value")
        .send()
        .await;
    let _ = http
        .get(format!("{base}/v1/sessions/{id}?token={t}"))
        .send()
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // SIGTERM, then read everything it printed.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("request"),
        "expected request logs at trace level"
    );
    assert!(!logs.contains(&t), "a token reached the logs");
    assert!(
        !logs.contains("bogus.token.value"),
        "a bad token reached the logs"
    );
    assert!(
        !logs.contains(common::TEST_SECRET),
        "the secret reached the logs"
    );
    assert!(out.status.success(), "exit status {:?}", out.status);
}
