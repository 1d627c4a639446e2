//! The REST contract end to end: a real server on a free port, a real HTTP
//! client, every endpoint and error code, timeouts firing with no request in
//! flight, and graceful shutdown.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::Duration;

use crate::common::{self, chess, eventually, spawn_app, spawn_with, test_settings};
use serde_json::{Value, json};

const VIEW_FIELDS: &[&str] = &[
    "session_id",
    "sync_mode",
    "status",
    "version",
    "participants",
    "active_participant_id",
    "total_time_ms",
    "time_per_cycle_ms",
    "increment_ms",
    "cycle_started_at",
    "session_started_at",
    "session_completed_at",
    "created_at",
    "updated_at",
    "metadata",
    "server_time_ms",
    "cycle_started_at_ms",
    "active_group_id",
    "groups",
    "time_remaining_ms",
    "elapsed_ms",
    "action_on_timeout",
    "auto_advance",
];

const PARTICIPANT_FIELDS: &[&str] = &[
    "participant_id",
    "participant_index",
    "total_time_ms",
    "time_used_ms",
    "time_remaining_ms",
    "cycle_count",
    "is_active",
    "has_expired",
];

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn create_returns_201_with_location_and_the_full_view() {
    let app = spawn_app().await;
    let id = "123e4567-e89b-12d3-a456-426614174000";
    let mut cfg = chess(300_000, 2000);
    cfg["session_id"] = json!(id);
    cfg["metadata"] = json!({"table": 7});
    let res = app
        .http
        .post(app.url("/v1/sessions"))
        .json(&cfg)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers()["location"],
        format!("/v1/sessions/{id}").as_str()
    );
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    let v = &body["data"];
    for f in VIEW_FIELDS {
        assert!(v.get(*f).is_some(), "view lacks {f}: {v}");
    }
    for f in PARTICIPANT_FIELDS {
        assert!(
            v["participants"][0].get(*f).is_some(),
            "participant lacks {f}"
        );
    }
    assert_eq!(v["session_id"], id);
    assert_eq!(v["status"], "pending");
    assert_eq!(v["version"], 1);
    assert_eq!(v["increment_ms"], 2000);
    // Omitted, not null, when empty (v2 clients validate them as optional).
    assert!(v.get("max_time_ms").is_none(), "{v}");
    assert!(v["participants"][0].get("group_id").is_none());
    assert_eq!(v["metadata"], json!({"table": 7}));
    assert_eq!(v["participants"][0]["time_remaining_ms"], 300_000);
    assert_eq!(v["active_participant_id"], "white");
    assert_eq!(v["action_on_timeout"], json!({"type": "end_session"}));
    // RFC 3339 with milliseconds and Z.
    let created = v["created_at"].as_str().unwrap();
    assert_eq!(created.len(), 24, "{created}");
    assert!(created.ends_with('Z'));

    // Same id again: 409 SESSION_EXISTS.
    let (status, body) = app.call("POST", "/v1/sessions", Some(cfg)).await;
    assert_eq!(status, 409);
    assert_eq!(error_code(&body), "SESSION_EXISTS");
}

#[tokio::test]
async fn a_generated_id_is_a_uuid() {
    let app = spawn_app().await;
    let v = app.create(json!({"sync_mode": "count_up"})).await;
    let id = v["session_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(app.get(id).await["session_id"], id);
}

#[tokio::test]
async fn validation_errors_list_every_bad_field() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({
                "sync_mode": "per_participant",
                "participants": [{"participant_id": "a", "total_time_ms": 10}],
                "increment_ms": -5
            })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "VALIDATION_ERROR");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["increment_ms", "participants[0].total_time_ms"]);
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_validation_errors() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(app.url("/v1/sessions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(error_code(&body), "VALIDATION_ERROR");
    assert_eq!(body["error"]["details"][0]["field"], "body");

    let (status, body) = app.call("POST", "/v1/sessions", Some(json!([1]))).await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = spawn_app().await;
    let big = json!({"sync_mode": "count_up", "metadata": {"x": "y".repeat(70 * 1024)}});
    let (status, body) = app.call("POST", "/v1/sessions", Some(big)).await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            "GET",
            "/v1/sessions/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "SESSION_NOT_FOUND"));
    let (status, body) = app.call("GET", "/v1/sessions/not-a-uuid", None).await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));
    let (status, body) = app
        .command("00000000-0000-0000-0000-000000000000", "start", None)
        .await;
    assert_eq!((status, error_code(&body)), (404, "SESSION_NOT_FOUND"));
    let (status, body) = app.call("GET", "/nope", None).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let (status, body) = app.call("PUT", "/v1/sessions", None).await;
    assert_eq!((status, error_code(&body)), (405, "METHOD_NOT_ALLOWED"));
    // Every route answers a wrong method in the error format, not with
    // an empty 405.
    for (method, path) in [
        ("POST", "/health"),
        ("POST", "/ready"),
        ("DELETE", "/metrics"),
        ("POST", "/ws"),
        (
            "POST",
            "/v1/sessions/00000000-0000-0000-0000-000000000000/ws",
        ),
        ("PUT", "/openapi.json"),
        ("POST", "/docs"),
        ("POST", "/"),
        ("DELETE", "/admin"),
    ] {
        let (status, body) = app.call(method, path, None).await;
        assert_eq!(
            (status, error_code(&body)),
            (405, "METHOD_NOT_ALLOWED"),
            "{method} {path}"
        );
    }
    // A name that is no command is no resource, whatever the method.
    for method in ["GET", "POST", "DELETE"] {
        let (status, body) = app
            .call(
                method,
                "/v1/sessions/00000000-0000-0000-0000-000000000000/nope",
                None,
            )
            .await;
        assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"), "{method}");
    }
}

#[tokio::test]
async fn a_chess_game_with_increments_over_real_time() {
    let app = spawn_app().await;
    let v = app.create(chess(10_000, 2_000)).await;
    let id = v["session_id"].as_str().unwrap().to_owned();

    let (status, started) = app.command(&id, "start", None).await;
    assert_eq!(status, 200);
    assert_eq!(started["data"]["status"], "running");
    assert_eq!(started["data"]["version"], 2);
    assert_eq!(started["data"]["participants"][0]["cycle_count"], 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app.command(&id, "switch", None).await;
    assert_eq!(status, 200, "{body}");
    let v = &body["data"];
    let white = &v["participants"][0];
    assert_eq!(v["version"], 3);
    assert_eq!(v["active_participant_id"], "black");
    assert_eq!(white["total_time_ms"], 12_000);
    let used = white["time_used_ms"].as_i64().unwrap();
    assert!((300..2_000).contains(&used), "white used {used} ms");
    assert_eq!(white["time_remaining_ms"].as_i64().unwrap(), 12_000 - used);
    assert_eq!(white["is_active"], false);
    assert_eq!(v["participants"][1]["is_active"], true);
    assert_eq!(v["participants"][1]["cycle_count"], 1);
    assert!(v.get("expired_participant_id").is_none());

    // Black moves, naming white explicitly, with the right version.
    let (status, body) = app
        .command(
            &id,
            "switch",
            Some(json!({"next_participant_id": "white", "expected_version": 3})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["participants"][1]["total_time_ms"], 12_000);
    assert_eq!(body["data"]["active_participant_id"], "white");

    // A stale version is a conflict and changes nothing.
    let (status, body) = app
        .command(&id, "switch", Some(json!({"expected_version": 3})))
        .await;
    assert_eq!(status, 409);
    assert_eq!(error_code(&body), "CONFLICT");
    assert_eq!(
        body["error"]["details"],
        json!({"expected_version": 3, "actual_version": 4})
    );

    // An unknown next participant is a validation error.
    let (status, body) = app
        .command(
            &id,
            "switch",
            Some(json!({"next_participant_id": "bishop"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));
    assert_eq!(body["error"]["details"][0]["field"], "next_participant_id");

    // Pause freezes both clocks; resume continues.
    let (status, paused) = app.command(&id, "pause", None).await;
    assert_eq!(status, 200);
    assert_eq!(paused["data"]["status"], "paused");
    let frozen = paused["data"]["participants"][0]["time_remaining_ms"].clone();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = app.get(&id).await;
    assert_eq!(later["participants"][0]["time_remaining_ms"], frozen);
    let (status, body) = app.command(&id, "pause", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_STATE_TRANSITION")
    );
    let (status, resumed) = app.command(&id, "resume", None).await;
    assert_eq!(
        (status, resumed["data"]["status"].as_str()),
        (200, Some("running"))
    );

    let (status, done) = app.command(&id, "complete", None).await;
    assert_eq!(status, 200);
    assert_eq!(done["data"]["status"], "completed");
    assert_eq!(done["data"]["version"], 7);
    let (status, body) = app.command(&id, "switch", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_STATE_TRANSITION")
    );
}

#[tokio::test]
async fn commands_in_the_wrong_status_are_refused() {
    let app = spawn_app().await;
    let id = app.create(chess(10_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for cmd in ["switch", "pause", "resume"] {
        let (status, body) = app.command(&id, cmd, None).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "INVALID_STATE_TRANSITION"),
            "{cmd}"
        );
    }
    let (status, body) = app.command(&id, "explode", None).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let (status, body) = app
        .command(&id, "cancel", Some(json!({"expected_version": 1})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["status"], "cancelled");
    let (status, body) = app.command(&id, "start", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_STATE_TRANSITION")
    );
    let (status, body) = app
        .command(&id, "pause", Some(json!({"next_participant_id": "white"})))
        .await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));
}

#[tokio::test]
async fn delete_cancels_removes_and_a_retried_delete_is_204() {
    let app = spawn_app().await;
    let id = app.create(chess(10_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.command(&id, "start", None).await;
    let (status, body) = app
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = app.call("GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!((status, error_code(&body)), (404, "SESSION_NOT_FOUND"));
    // Idempotent, as in v2: a retried delete, or one of an id never
    // created, is 204 too.
    let (status, body) = app
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = app
        .call(
            "DELETE",
            "/v1/sessions/123e4567-e89b-12d3-a456-426614174999",
            None,
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
}

async fn events(app: &common::TestApp, id: &str, query: &str) -> Vec<Value> {
    let (status, body) = app
        .call("GET", &format!("/v1/sessions/{id}/events{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn events_of_types(app: &common::TestApp, id: &str, wanted: &[&str]) -> Vec<Value> {
    let wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
    eventually(Duration::from_secs(5), || async {
        let list = events(app, id, "").await;
        let types: Vec<String> = list
            .iter()
            .rev()
            .map(|e| e["event_type"].as_str().unwrap_or_default().to_owned())
            .collect();
        (types == wanted).then_some(list)
    })
    .await
    .unwrap_or_else(|| panic!("events never became {wanted:?}"))
}

#[tokio::test]
async fn the_event_history_pages_newest_first() {
    let app = spawn_app().await;
    let id = app.create(chess(10_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.command(&id, "start", None).await;
    app.command(&id, "switch", None).await;
    app.command(&id, "pause", None).await;
    let list = events_of_types(
        &app,
        &id,
        &[
            "session_created",
            "session_started",
            "cycle_switched",
            "session_paused",
        ],
    )
    .await;
    let versions: Vec<i64> = list
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3, 2, 1]);
    assert_eq!(list[1]["participant_id"], "white");
    for e in &list {
        assert_eq!(e["session_id"], id.as_str());
        assert_eq!(e["event_id"].as_str().unwrap().len(), 36);
    }
    assert_eq!(events(&app, &id, "?limit=2").await.len(), 2);
    let before = list[1]["at_ms"].as_i64().unwrap();
    let older = events(&app, &id, &format!("?before_ms={before}")).await;
    assert!(older.iter().all(|e| e["at_ms"].as_i64().unwrap() < before));
    let (status, body) = app
        .call("GET", &format!("/v1/sessions/{id}/events?limit=501"), None)
        .await;
    assert_eq!((status, error_code(&body)), (400, "VALIDATION_ERROR"));
    let (status, body) = app
        .call(
            "GET",
            "/v1/sessions/00000000-0000-0000-0000-000000000000/events",
            None,
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "SESSION_NOT_FOUND"));
}

#[tokio::test]
async fn end_session_timeout_fires_with_no_request_in_flight() {
    let app = spawn_app().await;
    let id = app.create(chess(1_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, started) = app.command(&id, "start", None).await;
    let t0 = started["data"]["session_started_at_ms"].as_i64().unwrap();
    // Nobody calls: the worker must commit the expiry by itself.
    let list = events_of_types(
        &app,
        &id,
        &[
            "session_created",
            "session_started",
            "participant_expired",
            "session_expired",
        ],
    )
    .await;
    assert_eq!(list[0]["at_ms"].as_i64().unwrap(), t0 + 1_000);
    assert_eq!(list[1]["at_ms"].as_i64().unwrap(), t0 + 1_000);
    assert_eq!(list[1]["participant_id"], "white");
    assert_eq!(list[0]["version"], 3);
    let v = app.get(&id).await;
    assert_eq!(v["status"], "expired");
    assert_eq!(v["version"], 3);
    assert_eq!(v["session_completed_at_ms"].as_i64().unwrap(), t0 + 1_000);
    assert_eq!(v["participants"][0]["time_used_ms"], 1_000);
    assert_eq!(v["participants"][0]["time_remaining_ms"], 0);
    assert_eq!(v["participants"][0]["has_expired"], true);
}

#[tokio::test]
async fn skip_cycle_with_auto_advance_starts_the_next_cycle_at_the_deadline() {
    let app = spawn_app().await;
    let mut cfg = chess(1_000, 0);
    cfg["action_on_timeout"] = json!({"type": "skip_cycle", "penalty": 10});
    cfg["auto_advance"] = json!(true);
    let id = app.create(cfg).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, started) = app.command(&id, "start", None).await;
    let t0 = started["data"]["session_started_at_ms"].as_i64().unwrap();
    let list = events_of_types(
        &app,
        &id,
        &["session_created", "session_started", "participant_expired"],
    )
    .await;
    assert_eq!(list[0]["metadata"]["action_on_timeout"]["penalty"], 10);
    let v = app.get(&id).await;
    assert_eq!(v["status"], "running");
    assert_eq!(v["active_participant_id"], "black");
    assert_eq!(v["cycle_started_at_ms"].as_i64().unwrap(), t0 + 1_000);
    assert_eq!(v["participants"][0]["has_expired"], true);
    // Black alone remains; when black runs out too, the session expires at t0 + 2000.
    let list = events_of_types(
        &app,
        &id,
        &[
            "session_created",
            "session_started",
            "participant_expired",
            "participant_expired",
            "session_expired",
        ],
    )
    .await;
    assert_eq!(list[0]["at_ms"].as_i64().unwrap(), t0 + 2_000);
    assert_eq!(app.get(&id).await["status"], "expired");
}

#[tokio::test]
async fn skip_cycle_without_auto_advance_pauses_and_auto_action_carries_its_action() {
    let app = spawn_app().await;
    let mut cfg = json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 1000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
        "action_on_timeout": {"type": "auto_action", "action": "fold"},
        "auto_advance": false
    });
    let id = app.create(cfg.clone()).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, started) = app.command(&id, "start", None).await;
    let t0 = started["data"]["session_started_at_ms"].as_i64().unwrap();
    let list = events_of_types(
        &app,
        &id,
        &[
            "session_created",
            "session_started",
            "cycle_timeout",
            "session_paused",
        ],
    )
    .await;
    assert_eq!(list[1]["action"], "fold");
    assert_eq!(list[1]["participant_id"], "a");
    assert_eq!(list[1]["at_ms"].as_i64().unwrap(), t0 + 1_000);
    let v = app.get(&id).await;
    assert_eq!(v["status"], "paused");
    assert_eq!(v["active_participant_id"], "b");
    assert_eq!(v["participants"][0]["time_used_ms"], 1_000);

    cfg["action_on_timeout"] = json!({"type": "skip_cycle"});
    let id = app.create(cfg).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.command(&id, "start", None).await;
    events_of_types(
        &app,
        &id,
        &[
            "session_created",
            "session_started",
            "cycle_timeout",
            "session_paused",
        ],
    )
    .await;
}

#[tokio::test]
async fn time_health_ready_and_metrics() {
    let app = spawn_app().await;
    let (status, t) = app.call("GET", "/v1/time", None).await;
    assert_eq!(status, 200);
    assert!(t["timestamp_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(t["drift_tolerance_ms"], 50);
    assert_eq!(t["server_version"], env!("CARGO_PKG_VERSION"));

    let (status, h) = app.call("GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["store"], "ok");
    assert_eq!(h["audit"], "ok");
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));

    let (status, r) = app.call("GET", "/ready", None).await;
    assert_eq!((status, r), (200, json!({"status": "ready"})));

    // Metrics live on METRICS_PORT, not on the main port.
    let (status, body) = app.call("GET", "/metrics", None).await;
    assert_eq!((status, error_code(&body)), (404, "NOT_FOUND"));
    let text = app
        .http
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "kairos_http_requests_total{method=\"GET\",route=\"/v1/time\",status=\"200\"} 1"
        ),
        "{text}"
    );
    for name in [
        "kairos_http_request_duration_seconds",
        "kairos_switch_duration_seconds",
        "kairos_ws_connections",
        "kairos_ws_messages_sent_total",
        "kairos_timeouts_fired_total",
        "kairos_timeout_lateness_seconds",
        "kairos_store_errors_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
}

#[tokio::test]
async fn metrics_share_the_main_port_when_the_ports_are_equal() {
    // Bind a free port first, then ask for it on both.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_with(server::Settings {
        port,
        metrics_port: port,
        ..test_settings()
    })
    .await;
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("kairos_timeouts_fired_total")
    );
}

#[tokio::test]
async fn openapi_document_is_openapi_3_and_lists_every_endpoint() {
    let app = spawn_app().await;
    let (status, doc) = app.call("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let text = serde_json::to_string(&doc).unwrap();
    let parsed: Result<oas3::OpenApiV3Spec, _> = oas3::from_json(&text);
    assert!(
        parsed.is_ok(),
        "not a valid OpenAPI 3 document: {:?}",
        parsed.err()
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/sessions", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/start", "post"),
        ("/v1/sessions/{id}/switch", "post"),
        ("/v1/sessions/{id}/pause", "post"),
        ("/v1/sessions/{id}/resume", "post"),
        ("/v1/sessions/{id}/complete", "post"),
        ("/v1/sessions/{id}/cancel", "post"),
        ("/v1/sessions/{id}/events", "get"),
        ("/v1/time", "get"),
        ("/health", "get"),
        ("/ready", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn shutdown_turns_ready_off_then_exits_cleanly() {
    let app = spawn_with(server::Settings {
        shutdown_drain: Duration::from_millis(800),
        ..test_settings()
    })
    .await;
    let http = app.http.clone();
    let ready_url = app.url("/ready");
    let stopping = tokio::spawn(app.stop());
    let saw = eventually(Duration::from_millis(700), || {
        let http = http.clone();
        let url = ready_url.clone();
        async move {
            let res = http.get(&url).send().await.ok()?;
            (res.status() == 503).then_some(res.json::<Value>().await.ok()?)
        }
    })
    .await
    .expect("ready never turned 503 during the drain");
    assert_eq!(saw, json!({"status": "not_ready", "reason": "draining"}));
    stopping.await.unwrap().expect("clean exit");
}

// --- Time controls of real events (contract section 8) ---

fn field_names(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("field details: {body}"))
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect()
}

async fn server_now(app: &common::TestApp) -> i64 {
    let (status, body) = app.call("GET", "/v1/time", None).await;
    assert_eq!(status, 200);
    body["timestamp_ms"].as_i64().unwrap()
}

/// FIDE classical: 90 minutes for 40 moves, then 30 more, 30 s increment
/// from move 1. White's 40th move earns its increment, then the bank gains
/// the second stage's 30 minutes.
#[tokio::test]
async fn a_fide_staged_game_enters_the_second_stage_after_the_40th_move() {
    let app = spawn_app().await;
    let v = app
        .create(json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "white", "total_time_ms": 5400000},
                {"participant_id": "black", "total_time_ms": 5400000}
            ],
            "stages": [
                {"moves": 40, "increment_ms": 30000},
                {"add_ms": 1800000, "increment_ms": 30000}
            ]
        }))
        .await;
    let id = v["session_id"].as_str().unwrap();
    assert_eq!(v["stages"][0]["moves"], 40);
    assert_eq!(v["stages"][1]["add_ms"], 1_800_000);
    assert!(v["stages"][1]["moves"].is_null());
    assert_eq!(v["increment_ms"], 0);
    assert_eq!(v["participants"][0]["stage_index"], 0);
    assert_eq!(v["participants"][0]["moves_to_next_stage"], 40);
    assert_eq!(app.command(id, "start", None).await.0, 200);

    let mut last = Value::Null;
    for n in 1_u64..=79 {
        let (status, body) = app.command(id, "switch", None).await;
        assert_eq!(status, 200, "{body}");
        last = body["data"].clone();
        let white = &last["participants"][0];
        let moves = n.div_ceil(2);
        if n < 79 {
            assert_eq!(white["stage_index"], 0, "after move {n}");
            assert_eq!(white["moves_to_next_stage"], 40 - moves, "after move {n}");
        }
        assert_eq!(
            white["total_time_ms"],
            5_400_000
                + 30_000 * i64::try_from(moves).unwrap()
                + if n == 79 { 1_800_000 } else { 0 },
            "after move {n}"
        );
    }
    // White's 40th move (the 79th switch): stage 2, the last.
    let white = &last["participants"][0];
    assert_eq!(white["stage_index"], 1, "{last}");
    assert!(white["moves_to_next_stage"].is_null(), "{last}");
    assert_eq!(white["total_time_ms"], 5_400_000 + 40 * 30_000 + 1_800_000);
    let used = white["time_used_ms"].as_i64().unwrap();
    assert_eq!(
        white["time_remaining_ms"].as_i64().unwrap(),
        5_400_000 + 40 * 30_000 + 1_800_000 - used
    );
    // Black has made 39 moves: still in the first stage.
    let black = &last["participants"][1];
    assert_eq!(black["stage_index"], 0);
    assert_eq!(black["moves_to_next_stage"], 1);
    assert_eq!(black["total_time_ms"], 5_400_000 + 39 * 30_000);
}

/// US delay 5 s: the clock does not run for the first 5 s of a turn; the
/// view shows the delay left and holds `time_remaining_ms` at R, both
/// computed at `server_time_ms`.
#[tokio::test]
async fn a_simple_delay_game_holds_the_clock_while_the_delay_runs() {
    let app = spawn_app().await;
    let mut cfg = chess(60_000, 0);
    cfg["delay_ms"] = json!(5000);
    cfg["delay_mode"] = json!("simple");
    let id = app.create(cfg).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = app.command(&id, "start", None).await;
    let v = &body["data"];
    assert_eq!(v["delay_ms"], 5000);
    assert_eq!(v["delay_mode"], "simple");
    let check = |v: &Value| {
        let e = v["server_time_ms"].as_i64().unwrap() - v["cycle_started_at_ms"].as_i64().unwrap();
        let active = usize::from(v["active_participant_id"] == "black");
        let p = &v["participants"][active];
        let other = &v["participants"][1 - active];
        assert!(other["delay_remaining_ms"].is_null(), "{v}");
        let bank = p["total_time_ms"].as_i64().unwrap() - p["time_used_ms"].as_i64().unwrap();
        if e < 5000 {
            assert_eq!(p["delay_remaining_ms"], 5000 - e, "{v}");
            assert_eq!(p["time_remaining_ms"], 60_000, "{v}");
            assert_eq!(bank, 60_000, "nothing charged while the delay runs: {v}");
        } else {
            assert_eq!(p["delay_remaining_ms"], 0, "{v}");
        }
    };
    check(v);
    check(&app.get(&id).await);
    // White's move after e ms is charged max(0, e - 5000).
    let started_at = v["cycle_started_at_ms"].as_i64().unwrap();
    let (_, body) = app.command(&id, "switch", None).await;
    let v = &body["data"];
    check(v);
    let e = v["cycle_started_at_ms"].as_i64().unwrap() - started_at;
    assert_eq!(
        v["participants"][0]["time_used_ms"].as_i64().unwrap(),
        (e - 5000).max(0),
        "{v}"
    );
    assert_eq!(v["active_participant_id"], "black");
}

/// Lag compensation: 1+0 gives a gain of min(1000, 4 x 60 + 150) = 390 ms,
/// a starting quota of 3 gains; a move with `lag_ms` 100 is compensated 100
/// and the quota becomes 1170 + 390 - 100.
#[tokio::test]
async fn lag_ms_on_a_switch_draws_on_the_quota() {
    let app = spawn_app().await;
    let mut cfg = chess(60_000, 0);
    cfg["lag_compensation"] = json!({"enabled": true});
    let v = app.create(cfg).await;
    let id = v["session_id"].as_str().unwrap().to_owned();
    assert_eq!(v["lag_compensation"]["enabled"], true);
    assert_eq!(v["participants"][0]["lag_quota_ms"], 1170);
    app.command(&id, "start", None).await;
    for bad in [json!(-1), json!(10_001), json!(2.5), json!("100")] {
        let (status, body) = app
            .command(&id, "switch", Some(json!({ "lag_ms": bad })))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(error_code(&body), "VALIDATION_ERROR");
        assert_eq!(field_names(&body), ["lag_ms"], "{bad}");
    }
    let (status, body) = app
        .command(&id, "switch", Some(json!({"lag_ms": 100})))
        .await;
    assert_eq!(status, 200, "{body}");
    let v = &body["data"];
    assert_eq!(
        v["participants"][0]["lag_quota_ms"],
        1170 + 390 - 100,
        "{v}"
    );
    assert_eq!(v["participants"][1]["lag_quota_ms"], 1170, "{v}");
    let switched = events_of_types(
        &app,
        &id,
        &["session_created", "session_started", "cycle_switched"],
    )
    .await;
    assert_eq!(
        switched[0]["metadata"]["lag_compensated_ms"], 100,
        "{switched:?}"
    );
}

/// `add_time`: owner or admin; a player is 403; an ended session is 400;
/// the `time_added` event carries `ms` and `reason`; bad bodies name every
/// bad field; an unknown participant is named as `participant_id`.
#[tokio::test]
async fn add_time_is_for_the_owner_and_recorded_in_the_history() {
    let app = spawn_with(common::secured_settings()).await;
    let host = common::token("host", "arbiter", None, None);
    let (status, body) = app
        .call_as(Some(&host), "POST", "/v1/sessions", Some(chess(300_000, 0)))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["session_id"].as_str().unwrap().to_owned();
    let player = common::token("player", "p1", Some(&id), Some("white"));
    let path = format!("/v1/sessions/{id}/add_time");

    let (status, body) = app
        .call_as(
            Some(&player),
            "POST",
            &path,
            Some(json!({"participant_id": "white", "ms": 120000})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "FORBIDDEN");

    let (status, body) = app
        .call_as(
            Some(&host),
            "POST",
            &path,
            Some(json!({"participant_id": "white", "group_id": "g", "ms": 0, "reason": 7})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(field_names(&body), ["participant_id", "ms", "reason"]);
    let (status, body) = app
        .call_as(
            Some(&host),
            "POST",
            &path,
            Some(json!({"participant_id": "nobody", "ms": 1000})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(field_names(&body), ["participant_id"]);

    // Pending is fine ("any status but ended").
    let (status, body) = app
        .call_as(
            Some(&host),
            "POST",
            &path,
            Some(json!({"participant_id": "white", "ms": 120000, "reason": "clock fault", "expected_version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v = &body["data"];
    assert_eq!(v["version"], 2);
    assert_eq!(v["participants"][0]["total_time_ms"], 420_000);
    assert_eq!(v["participants"][1]["total_time_ms"], 300_000);

    let (status, _) = app
        .call_as(
            Some(&host),
            "POST",
            &format!("/v1/sessions/{id}/complete"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .call_as(
            Some(&host),
            "POST",
            &path,
            Some(json!({"participant_id": "black", "ms": 1000})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "INVALID_STATE_TRANSITION");

    let history = eventually(Duration::from_secs(5), || async {
        let (status, body) = app
            .call_as(
                Some(&host),
                "GET",
                &format!("/v1/sessions/{id}/events"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let list = body["data"].as_array().unwrap().clone();
        (list.len() == 3).then_some(list)
    })
    .await
    .expect("created, time_added, completed in the history");
    let added = &history[1];
    assert_eq!(added["event_type"], "time_added", "{history:?}");
    assert_eq!(added["participant_id"], "white");
    assert_eq!(added["version"], 2);
    assert_eq!(added["metadata"]["ms"], 120_000);
    assert_eq!(added["metadata"]["reason"], "clock fault");
}

/// `start_at_ms`: the session stays pending, then starts by itself at that
/// instant with nobody asking (the history shows the committed start).
#[tokio::test]
async fn a_scheduled_session_starts_by_itself_at_start_at_ms() {
    let app = spawn_app().await;
    let start_at = server_now(&app).await + 1_500;
    let mut cfg = chess(60_000, 0);
    cfg["start_at_ms"] = json!(start_at);
    let v = app.create(cfg).await;
    let id = v["session_id"].as_str().unwrap().to_owned();
    assert_eq!(v["start_at_ms"], start_at);
    if v["server_time_ms"].as_i64().unwrap() < start_at {
        assert_eq!(v["status"], "pending");
    }
    let started = events_of_types(&app, &id, &["session_created", "session_started"]).await;
    assert_eq!(started[0]["at_ms"], start_at);
    assert_eq!(started[0]["metadata"]["scheduled"], true);
    let v = app.get(&id).await;
    assert_eq!(v["status"], "running");
    assert_eq!(v["session_started_at_ms"], start_at);
    assert_eq!(v["cycle_started_at_ms"], start_at);
    assert_eq!(v["active_participant_id"], "white");
}

/// Every bad field of section 8 in one answer, `start_at_ms`'s window included.
#[tokio::test]
async fn section_8_validation_names_every_bad_field() {
    let app = spawn_app().await;
    let now = server_now(&app).await;
    let mut cfg = chess(60_000, 2000);
    cfg["stages"] = json!([{"moves": 0, "increment_ms": 1000}, {"add_ms": -1, "delay_ms": 1000}]);
    cfg["warnings_ms"] = json!([500]);
    cfg["lag_compensation"] = json!({"enabled": "yes"});
    cfg["start_at_ms"] = json!(now - 60_000);
    let (status, body) = app.call("POST", "/v1/sessions", Some(cfg)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "VALIDATION_ERROR");
    let fields = field_names(&body);
    for field in [
        "increment_ms",
        "stages[0].moves",
        "stages[1].add_ms",
        "stages[1].delay_mode",
        "warnings_ms[0]",
        "lag_compensation.enabled",
        "start_at_ms",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not named: {fields:?}"
        );
    }

    // The window alone, both ends.
    for at in [now - 1_000, now + 8 * 24 * 3_600_000] {
        let mut cfg = chess(60_000, 0);
        cfg["start_at_ms"] = json!(at);
        let (status, body) = app.call("POST", "/v1/sessions", Some(cfg)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(field_names(&body), ["start_at_ms"]);
    }
    let mut cfg = chess(60_000, 0);
    cfg["delay_ms"] = json!(1000);
    let (status, body) = app.call("POST", "/v1/sessions", Some(cfg)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        field_names(&body).iter().any(|f| f.starts_with("delay")),
        "{body}"
    );
}
