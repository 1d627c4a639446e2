//! Views on the wire against the v2 response shape: every session view this
//! server sends, over REST and over the WebSocket, must validate against
//! `docs/schema/session-view.schema.json`, the JSON Schema written from the
//! protocol reference. v2 clients validate `increment_ms`, `max_time_ms` and
//! each participant's `group_id` as optional, not nullable, so a `null` there
//! breaks them on every start, switch and pause; these tests fail if one is
//! sent, and check that the OpenAPI document says the same.
//!
//! The server is the real transport (`http_actix::serve`) over the in-memory
//! adapters, on a free loopback port, with authentication and rate limits off.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Data;
use adapter_memory::{MemoryBus, MemoryStore, SystemClock};
use futures_util::StreamExt;
use http_actix::{AppState, HttpSettings, Service};
use jsonschema::Validator;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// The schema, read from the repository (not a copy), so the document and
/// the test cannot drift apart.
const SCHEMA: &str = include_str!("../../../docs/schema/session-view.schema.json");

/// The view-level fields left out rather than sent as `null` (the third is
/// each participant's `group_id`).
const OMITTED_WHEN_EMPTY: [&str; 2] = ["increment_ms", "max_time_ms"];

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON; control frames are skipped.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

fn validator() -> Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the schema is a valid draft 2020-12 schema")
}

/// Fails with every violation listed when `view` does not match the schema.
fn assert_shape(validator: &Validator, view: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(view)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the view does not match the v2 shape:\n  {}\nview: {view}",
        errors.join("\n  ")
    );
}

/// A running server and a client for it.
struct TestServer {
    base: String,
    http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    async fn start() -> Self {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(3600)));
        let bus = Arc::new(MemoryBus::new());
        let service = Service::new(store, bus.clone(), Arc::new(SystemClock::new()));
        let state = Data::new(AppState::new(service, bus, HttpSettings::default()));
        state.lifecycle.set_ready();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let server = http_actix::serve(listener, state, Some(1), || {}).unwrap();
        let handle = server.handle();
        tokio::spawn(server);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self { base, http, handle }
    }

    /// `{"data": view}` of a POST, with the status it must have.
    async fn post(&self, path: &str, body: Value, status: u16) -> Value {
        let res = self
            .http
            .post(format!("http://{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "POST {path}");
        let body: Value = res.json().await.unwrap();
        body["data"].clone()
    }

    async fn create(&self, config: Value) -> Value {
        self.post("/v1/sessions", config, 201).await
    }

    async fn command(&self, id: &Value, name: &str) -> Value {
        let id = id.as_str().unwrap();
        self.post(&format!("/v1/sessions/{id}/{name}"), json!({}), 200)
            .await
    }

    async fn get(&self, id: &Value) -> Value {
        let id = id.as_str().unwrap();
        let res = self
            .http
            .get(format!("http://{}/v1/sessions/{id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["data"].clone()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn chess() -> Value {
    json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 300000},
            {"participant_id": "black", "total_time_ms": 300000}
        ],
        "increment_ms": 2000
    })
}

fn teams() -> Value {
    json!({
        "sync_mode": "per_group",
        "participants": [
            {"participant_id": "ann", "group_id": "red", "total_time_ms": 60000},
            {"participant_id": "bob", "group_id": "blue", "total_time_ms": 60000},
            {"participant_id": "cid", "group_id": "red", "total_time_ms": 60000}
        ],
        "groups": [
            {"group_id": "red", "total_time_ms": 600000},
            {"group_id": "blue", "total_time_ms": 600000}
        ],
        "max_time_ms": 900000
    })
}

/// Creates a session from `config` and drives it through start, switch,
/// pause, resume and complete, checking every view (and a GET after each).
async fn walk(server: &TestServer, v: &Validator, config: Value) -> Vec<Value> {
    let mode = config["sync_mode"].clone();
    let created = server.create(config).await;
    assert_shape(v, &created, &format!("{mode} created"));
    let id = created["session_id"].clone();
    let mut views = vec![created];
    for command in ["start", "switch", "pause", "resume", "switch", "complete"] {
        let view = server.command(&id, command).await;
        assert_shape(v, &view, &format!("{mode} after {command}"));
        let read = server.get(&id).await;
        assert_shape(v, &read, &format!("{mode} read after {command}"));
        views.push(view);
    }
    views
}

#[tokio::test]
async fn rest_views_of_every_mode_match_the_v2_shape() {
    let server = TestServer::start().await;
    let v = validator();

    // per_participant without a cap: max_time_ms and group_id are left out.
    for view in walk(&server, &v, chess()).await {
        assert_eq!(view["increment_ms"], 2000);
        assert!(view.get("max_time_ms").is_none(), "{view}");
        for p in view["participants"].as_array().unwrap() {
            assert!(p.get("group_id").is_none(), "{p}");
        }
        // The others stay present, null when empty.
        assert!(view["time_per_cycle_ms"].is_null());
        assert!(view["time_remaining_ms"].is_null());
        assert!(view["active_group_id"].is_null());
    }

    // per_group with groups and a cap: every one of the three is a value.
    for view in walk(&server, &v, teams()).await {
        assert_eq!(view["max_time_ms"], 900_000);
        assert_eq!(view["increment_ms"], 0);
        let groups: Vec<&str> = view["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["group_id"].as_str().unwrap())
            .collect();
        assert_eq!(groups, ["red", "blue", "red"]);
        assert_eq!(view["groups"].as_array().unwrap().len(), 2);
    }

    // global with no participants: the session countdown, no increment given.
    let global = json!({"sync_mode": "global", "total_time_ms": 60000});
    for view in walk(&server, &v, global).await {
        assert_eq!(view["increment_ms"], 0, "0 when none was configured");
        assert!(view.get("max_time_ms").is_none());
        assert!(view["time_remaining_ms"].is_number());
    }

    // global with speakers, per_cycle and count_up (with a stopwatch limit).
    let speakers = json!({
        "sync_mode": "global", "total_time_ms": 60000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}]
    });
    walk(&server, &v, speakers).await;
    let quiz = json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 30000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}]
    });
    walk(&server, &v, quiz).await;
    let stopwatch = json!({"sync_mode": "count_up", "max_time_ms": 60000, "metadata": {"lap": 1}});
    for view in walk(&server, &v, stopwatch).await {
        assert_eq!(view["max_time_ms"], 60_000);
    }

    // cancel and a switch that finds the clock run out (expired_participant_id).
    let id = server.create(chess()).await["session_id"].clone();
    server.command(&id, "start").await;
    let cancelled = server.command(&id, "cancel").await;
    assert_shape(&v, &cancelled, "cancelled");
    let short = json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 1000},
            {"participant_id": "black", "total_time_ms": 1000}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": false
    });
    let id = server.create(short).await["session_id"].clone();
    server.command(&id, "start").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let read = server.get(&id).await;
    assert_shape(&v, &read, "after the deadline");
    assert_eq!(read["participants"][0]["has_expired"], true, "{read}");

    server.stop().await;
}

/// The fields of contract section 8 are (ext): always present, `null` (or
/// `[]`, `0`, `none`) when empty, and the views of a staged, delayed, lag
/// compensated, warned, scheduled session match the schema too.
#[tokio::test]
async fn section_8_fields_are_present_and_match_the_shape() {
    let server = TestServer::start().await;
    let v = validator();

    let plain = server.create(chess()).await;
    assert_eq!(plain["stages"], json!([]));
    assert_eq!(plain["delay_ms"], 0);
    assert_eq!(plain["delay_mode"], "none");
    assert_eq!(plain["lag_compensation"], json!({"enabled": false}));
    assert_eq!(plain["warnings_ms"], json!([]));
    assert!(plain["start_at_ms"].is_null());
    for p in plain["participants"].as_array().unwrap() {
        assert_eq!(p["stage_index"], 0);
        for field in ["moves_to_next_stage", "delay_remaining_ms", "lag_quota_ms"] {
            assert!(p.get(field).is_some_and(Value::is_null), "{field}: {p}");
        }
    }

    let fide = json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 5400000},
            {"participant_id": "black", "total_time_ms": 5400000}
        ],
        "stages": [
            {"moves": 40, "increment_ms": 30000},
            {"add_ms": 1800000, "increment_ms": 30000}
        ],
        "lag_compensation": {"enabled": true},
        "warnings_ms": [60000, 10000]
    });
    for view in walk(&server, &v, fide).await {
        assert_eq!(view["stages"][0]["moves"], 40);
        assert!(view["stages"][1]["moves"].is_null());
        assert_eq!(view["lag_compensation"]["enabled"], true);
        assert!(
            view["participants"][0]["lag_quota_ms"].is_number(),
            "{view}"
        );
    }
    let delay = json!({
        "sync_mode": "per_group",
        "participants": [
            {"participant_id": "ann", "group_id": "red"},
            {"participant_id": "bob", "group_id": "blue"}
        ],
        "groups": [
            {"group_id": "red", "total_time_ms": 600000},
            {"group_id": "blue", "total_time_ms": 600000}
        ],
        "delay_ms": 5000, "delay_mode": "simple"
    });
    let views = walk(&server, &v, delay).await;
    assert_eq!(
        views[1]["groups"][0]["delay_remaining_ms"], 5000,
        "{}",
        views[1]
    );
    let start_at = plain["server_time_ms"].as_i64().unwrap() + 3_600_000;
    let mut scheduled = chess();
    scheduled["start_at_ms"] = json!(start_at);
    let view = server.create(scheduled).await;
    assert_shape(&v, &view, "scheduled");
    assert_eq!(view["start_at_ms"], start_at);
    server.stop().await;
}

#[tokio::test]
async fn websocket_state_messages_carry_the_same_shape() {
    let server = TestServer::start().await;
    let v = validator();
    let created = server.create(chess()).await;
    let id = created["session_id"].as_str().unwrap().to_owned();
    let (mut ws, _) = connect_async(format!("ws://{}/ws?sessionId={id}", server.base))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "CONNECTED");
    let sync = next_json(&mut ws).await;
    assert_eq!(sync["type"], "STATE_SYNC");
    assert_shape(&v, &sync["state"], "STATE_SYNC");
    assert!(sync["state"].get("max_time_ms").is_none());

    let id = Value::String(id);
    for command in ["start", "switch", "pause"] {
        server.command(&id, command).await;
        let update = next_json(&mut ws).await;
        assert_eq!(update["type"], "STATE_UPDATE");
        assert_shape(
            &v,
            &update["state"],
            &format!("STATE_UPDATE after {command}"),
        );
        assert!(update["state"].get("max_time_ms").is_none());
        for p in update["state"]["participants"].as_array().unwrap() {
            assert!(p.get("group_id").is_none(), "{p}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_null_in_an_omitted_field_fails_the_schema() {
    let server = TestServer::start().await;
    let v = validator();
    let view = server.create(chess()).await;
    assert_shape(&v, &view, "created");

    for field in OMITTED_WHEN_EMPTY {
        let mut bad = view.clone();
        bad[field] = Value::Null;
        assert!(!v.is_valid(&bad), "null {field} must fail the v2 shape");
    }
    let mut bad = view.clone();
    bad["participants"][1]["group_id"] = Value::Null;
    assert!(!v.is_valid(&bad), "a null group_id must fail the v2 shape");

    // The other fields are required: dropping one fails too.
    let mut bad = view.clone();
    bad.as_object_mut().unwrap().remove("time_per_cycle_ms");
    assert!(!v.is_valid(&bad), "time_per_cycle_ms is always present");
    server.stop().await;
}

/// The schema and the OpenAPI document name the same fields, and the
/// document marks the three as optional and not nullable, so that a
/// generated client does not expect `null` there either.
#[test]
fn the_openapi_document_agrees_with_the_schema() {
    let doc = serde_json::to_value(http_actix::openapi::document()).unwrap();
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let pairs = [
        ("WireView", &schema, &OMITTED_WHEN_EMPTY[..]),
        (
            "WireParticipant",
            &schema["$defs"]["participant"],
            &["group_id"][..],
        ),
        ("WireGroup", &schema["$defs"]["group"], &[][..]),
    ];
    for (name, ours, omitted) in pairs {
        let openapi = &doc["components"]["schemas"][name];
        let mut documented: Vec<&String> =
            openapi["properties"].as_object().unwrap().keys().collect();
        let mut expected: Vec<&String> = ours["properties"].as_object().unwrap().keys().collect();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected, "{name}: the fields differ");
        let required = openapi["required"].as_array().cloned().unwrap_or_default();
        for field in omitted {
            assert!(
                !required.contains(&json!(field)),
                "{name}.{field} must be optional in the OpenAPI document"
            );
            let property = &openapi["properties"][field];
            // utoipa spells a nullable field `"type": [T, "null"]`.
            assert!(
                property["type"].is_string() && property["type"] != "null",
                "{name}.{field} must not be nullable in the OpenAPI document: {property}"
            );
        }
    }
}

/// The example view of the protocol reference is a valid view too, so the
/// page a client author copies from cannot drift from the schema.
#[test]
fn the_documented_example_view_matches_the_schema() {
    let doc = include_str!("../../../docs/protocol.md");
    let section = doc
        .split("### The session view")
        .nth(1)
        .expect("docs/protocol.md has a section `### The session view`");
    let example = section
        .split("```json")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section opens with a JSON example");
    let view: Value = serde_json::from_str(example).expect("the example is JSON");
    assert_shape(&validator(), &view, "docs/protocol.md example");
    assert!(view.get("max_time_ms").is_none());
}
