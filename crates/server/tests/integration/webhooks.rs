//! Webhooks (contract section 9) end to end: real `kairos-server` processes
//! send to a real HTTP receiver inside the test (actix-web on 127.0.0.1,
//! recording every request). Signatures are checked by an independent
//! implementation (Python's `hmac`, `hashlib` and `base64`); delivery is at
//! least once across a receiver that fails for a while and across an
//! instance killed with SIGKILL mid-delivery; 410 disables; a shortened
//! retry schedule is followed attempt by attempt (read from the delivery
//! log, not from timings); the SSRF guard refuses private addresses; every
//! `/v1/webhooks` endpoint answers 403 `FORBIDDEN` to a token that is not an
//! unscoped admin.

#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::common::procs::{Instance, database_url, post, prefix, redis_url};
use crate::common::{chess, create_session, eventually};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    webhook_id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
    /// What it answered; 0 while held (never answered).
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug, Default)]
struct Shared {
    log: Mutex<Vec<Received>>,
    /// `/flaky` answers 500 while set.
    failing: AtomicBool,
    /// `/flaky` holds the request (never answers) while set.
    holding: AtomicBool,
}

/// The receiver: `/ok` answers 204, `/fail` 500, `/gone` 410, `/flaky` as
/// its flags say, `/retry-after` 503 with `Retry-After: 0`.
struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

async fn hook(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let path = req.path().to_owned();
    let hold = path == "/flaky" && shared.holding.load(Ordering::SeqCst);
    let status = match path.as_str() {
        "/ok" => 204,
        "/gone" => 410,
        "/flaky" if hold => 0,
        "/flaky" if shared.failing.load(Ordering::SeqCst) => 500,
        "/flaky" => 200,
        _ => 500,
    };
    shared.log.lock().unwrap().push(Received {
        path,
        webhook_id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
        status,
    });
    if hold {
        // Longer than the test: the sender gives up first (or dies).
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status.max(200)).unwrap()).finish()
}

impl Receiver {
    async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(hook))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind(("127.0.0.1", 0))
        .expect("the receiver binds");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            port,
            shared,
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `pred` holds of the requests so far (at most `secs`).
    async fn wait_for(&self, secs: u64, what: &str, pred: impl Fn(&[Received]) -> bool) {
        let ok = eventually(Duration::from_secs(secs), || {
            let got = self.received();
            let done = pred(&got);
            async move { done.then_some(()) }
        })
        .await;
        assert!(
            ok.is_some(),
            "receiver: never saw {what}; got {:#?}",
            self.received()
                .iter()
                .map(|r| (&r.path, r.status, r.json()["type"].clone()))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

/// The settings every test instance gets: URLs on 127.0.0.1 over http allowed.
fn open_env() -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_ALLOW_HTTP", "true".to_owned()),
        ("WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
    ]
}

async fn register(
    http: &reqwest::Client,
    server: &Instance,
    url: &str,
    event_types: Option<&[&str]>,
) -> (String, String) {
    let mut body = json!({"url": url, "description": "test receiver"});
    if let Some(types) = event_types {
        body["event_types"] = json!(types);
    }
    let (status, created) = post(http, server.url("/v1/webhooks"), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let data = &created["data"];
    let secret = data["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (data["webhook_id"].as_str().unwrap().to_owned(), secret)
}

async fn get_json(http: &reqwest::Client, url: String) -> (u16, Value) {
    let res = http.get(url).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The endpoint's delivery log, newest first.
async fn deliveries(http: &reqwest::Client, server: &Instance, id: &str) -> Vec<Value> {
    let (status, body) = get_json(
        http,
        server.url(&format!("/v1/webhooks/{id}/deliveries?limit=1000")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Checks every signature with Python's standard library, not our code.
fn verify_with_python(secret: &str, requests: &[Received]) {
    let items: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "id": r.webhook_id,
                "ts": r.timestamp,
                "sig": r.signature,
                "body_hex": r.body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            })
        })
        .collect();
    let script = r#"
import base64, hashlib, hmac, json, sys
secret, items = sys.argv[1], json.load(sys.stdin)
key = base64.b64decode(secret[len("whsec_"):])
good = 0
for it in items:
    content = it["id"].encode() + b"." + it["ts"].encode() + b"." + bytes.fromhex(it["body_hex"])
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    if any(hmac.compare_digest(expected, s) for s in it["sig"].split(" ")):
        good += 1
    else:
        print("bad signature for", it["id"], file=sys.stderr)
print(f"verified {good} of {len(items)}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&items).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let n = requests.len();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("verified {n} of {n}")
    );
}

/// Creates a chess session and starts it: `session_created`, `session_started`.
async fn started_session(http: &reqwest::Client, server: &Instance) -> String {
    let id = create_session(http, server.url("/v1/sessions"), None, chess(600_000, 0)).await;
    let (status, body) = post(http, server.url(&format!("/v1/sessions/{id}/start")), None).await;
    assert_eq!(status, 200, "{body}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_as_the_contract_says_and_filtered_by_type() {
    let receiver = Receiver::start().await;
    let server = Instance::start(&open_env()).await;
    let http = reqwest::Client::new();
    let (all_id, all_secret) = register(&http, &server, &receiver.url("/ok"), None).await;
    let (started_id, started_secret) = register(
        &http,
        &server,
        &receiver.url("/flaky"),
        Some(&["session_started"]),
    )
    .await;

    let session = started_session(&http, &server).await;
    let (status, _) = post(
        &http,
        server.url(&format!("/v1/sessions/{session}/switch")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    receiver
        .wait_for(20, "three events on /ok and one on /flaky", |got| {
            got.iter().filter(|r| r.path == "/ok").count() >= 3
                && got.iter().any(|r| r.path == "/flaky")
        })
        .await;

    let all = receiver.on("/ok");
    let mut types: Vec<String> = all
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["cycle_switched", "session_created", "session_started"]
    );
    for r in &all {
        let body = r.json();
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            body["data"]["event_id"], r.webhook_id,
            "webhook-id is the event id"
        );
        assert_eq!(body["data"]["session_id"], session);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(r.timestamp.parse::<i64>().unwrap() > 1_600_000_000);
        assert!(r.signature.starts_with("v1,"));
    }
    verify_with_python(&all_secret, &all);

    // The filtered endpoint got session_started alone.
    let filtered = receiver.on("/flaky");
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].json()["type"], "session_started");
    verify_with_python(&started_secret, &filtered);
    // A signature made with another endpoint's secret does not verify.
    assert_ne!(all_secret, started_secret);

    // The records: no secret after the create; the log names each attempt.
    let (status, list) = get_json(&http, server.url("/v1/webhooks")).await;
    assert_eq!(status, 200);
    let list = list["data"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|w| w.get("secret").is_none()), "{list:?}");
    let (status, one) = get_json(&http, server.url(&format!("/v1/webhooks/{started_id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(one["data"]["event_types"], json!(["session_started"]));
    assert_eq!(one["data"]["disabled"], false);
    assert!(one["data"].get("secret").is_none());
    let log = eventually(Duration::from_secs(10), || {
        let (http, server, id) = (&http, &server, &all_id);
        async move {
            let log = deliveries(http, server, id).await;
            (log.len() == 3).then_some(log)
        }
    })
    .await
    .expect("three records in the log");
    let mut logged: BTreeSet<String> = BTreeSet::new();
    for rec in &log {
        assert_eq!(rec["attempt"], 1);
        assert_eq!(rec["status_code"], 204);
        assert_eq!(rec["error"], Value::Null);
        logged.insert(rec["event_id"].as_str().unwrap().to_owned());
    }
    let sent: BTreeSet<String> = all.iter().map(|r| r.webhook_id.clone()).collect();
    assert_eq!(logged, sent);

    // The OpenAPI document lists the five operations.
    let (_, doc) = get_json(&http, server.url("/openapi.json")).await;
    for (path, method) in [
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/deliveries", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_and_bad_input_are_refused_in_the_contracts_format() {
    let server = Instance::start(&[("WEBHOOK_ALLOW_HTTP", "true".to_owned())]).await;
    let http = reqwest::Client::new();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:192.168.1.1]/hook",
        "http://100.64.0.1/hook",
    ] {
        let (status, body) =
            post(&http, server.url("/v1/webhooks"), Some(json!({"url": url}))).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{url}");
        assert_eq!(body["error"]["details"][0]["field"], "url", "{url}");
        assert!(
            body["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("WEBHOOK_ALLOW_PRIVATE"),
            "{url}: {body}"
        );
    }
    // https only without WEBHOOK_ALLOW_HTTP.
    let strict = Instance::start(&[]).await;
    let (status, body) = post(
        &http,
        strict.url("/v1/webhooks"),
        Some(json!({"url": "http://example.com/hook"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "url");
    let (status, body) = post(
        &http,
        strict.url("/v1/webhooks"),
        Some(json!({"url": "https://127.0.0.1/hook", "event_types": ["nope"]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["event_types[0]"]);

    // Nothing was stored.
    let (status, list) = get_json(&http, server.url("/v1/webhooks")).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]));

    // 404 and 400 in the error format; DELETE is idempotent.
    let missing = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/webhooks/{missing}"),
        format!("/v1/webhooks/{missing}/deliveries"),
    ] {
        let (status, body) = get_json(&http, server.url(&path)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}");
    }
    let (status, body) = get_json(&http, server.url("/v1/webhooks/not-a-uuid")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"][0]["field"], "webhook_id");
    for _ in 0..2 {
        let res = http
            .delete(server.url(&format!("/v1/webhooks/{missing}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_after_the_receiver_comes_back() {
    let receiver = Receiver::start().await;
    receiver.shared.failing.store(true, Ordering::SeqCst);
    let mut env = open_env();
    // Twenty quick retries: the receiver fails for a while, well inside them.
    env.push(("WEBHOOK_RETRY_SCHEDULE_MS", vec!["100"; 20].join(",")));
    let server = Instance::start(&env).await;
    let http = reqwest::Client::new();
    let (id, secret) = register(&http, &server, &receiver.url("/flaky"), None).await;
    let session = started_session(&http, &server).await;
    for command in ["switch", "pause", "resume"] {
        let (status, _) = post(
            &http,
            server.url(&format!("/v1/sessions/{session}/{command}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{command}");
    }
    // Down: each of the five events is refused at least twice.
    receiver
        .wait_for(30, "two failed attempts of each event", |got| {
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for r in got.iter().filter(|r| r.status == 500) {
                *per.entry(&r.webhook_id).or_default() += 1;
            }
            per.len() == 5 && per.values().all(|&n| n >= 2)
        })
        .await;
    // Back up.
    receiver.shared.failing.store(false, Ordering::SeqCst);
    receiver
        .wait_for(30, "each event delivered", |got| {
            got.iter()
                .filter(|r| r.status == 200)
                .map(|r| &r.webhook_id)
                .collect::<BTreeSet<_>>()
                .len()
                == 5
        })
        .await;

    let got = receiver.received();
    let failed: BTreeSet<String> = got
        .iter()
        .filter(|r| r.status == 500)
        .map(|r| r.webhook_id.clone())
        .collect();
    let delivered: BTreeSet<String> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.webhook_id.clone())
        .collect();
    // The same webhook-id on every retry, and nothing missing: exactly the
    // session's events.
    assert_eq!(failed, delivered);
    // The audit trail is written in the background too: wait for its five.
    let committed: BTreeSet<String> = eventually(Duration::from_secs(10), || {
        let (http, url) = (&http, server.url(&format!("/v1/sessions/{session}/events")));
        async move {
            let (_, history) = get_json(http, url).await;
            let ids: BTreeSet<String> = history["data"]
                .as_array()?
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect();
            (ids.len() == 5).then_some(ids)
        }
    })
    .await
    .expect("five events in the history");
    assert_eq!(delivered, committed);
    // Every attempt carried the same signed body per event.
    for event_id in &delivered {
        let attempts: Vec<&Received> = got.iter().filter(|r| &r.webhook_id == event_id).collect();
        assert!(attempts.len() >= 3, "{event_id}: {}", attempts.len());
        assert!(attempts.iter().all(|r| r.body == attempts[0].body));
    }
    verify_with_python(&secret, &got);
    let (_, record) = get_json(&http, server.url(&format!("/v1/webhooks/{id}"))).await;
    assert_eq!(record["data"]["disabled"], false);
    // The log holds every attempt: 500s, then one 200 per event.
    let log = eventually(Duration::from_secs(10), || {
        let (http, server, id, n) = (&http, &server, &id, got.len());
        async move {
            let log = deliveries(http, server, id).await;
            (log.len() == n).then_some(log)
        }
    })
    .await
    .expect("every attempt logged");
    assert_eq!(
        log.iter().filter(|r| r["status_code"] == 200).count(),
        5,
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_schedule_is_followed_then_the_endpoint_disabled() {
    let receiver = Receiver::start().await;
    let mut env = open_env();
    env.push(("WEBHOOK_RETRY_SCHEDULE_MS", "100,200,300".to_owned()));
    let metrics_port = crate::common::procs::free_port();
    env.push(("METRICS_PORT", metrics_port.to_string()));
    let server = Instance::start(&env).await;
    let http = reqwest::Client::new();
    let (id, _) = register(
        &http,
        &server,
        &receiver.url("/fail"),
        Some(&["session_started"]),
    )
    .await;
    started_session(&http, &server).await;

    let record = eventually(Duration::from_secs(20), || {
        let (http, server, id) = (&http, &server, &id);
        async move {
            let (_, body) = get_json(http, server.url(&format!("/v1/webhooks/{id}"))).await;
            (body["data"]["disabled"] == true).then_some(body)
        }
    })
    .await
    .expect("the endpoint is disabled once the schedule is over");
    let reason = record["data"]["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("exhausted after 4 attempts"), "{reason}");

    // One first attempt and one per step: 4, in order, newest first.
    let log = deliveries(&http, &server, &id).await;
    let attempts: Vec<u64> = log.iter().map(|r| r["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [4, 3, 2, 1]);
    assert!(
        log.iter()
            .all(|r| r["status_code"] == 500 && r["error"] == "HTTP 500")
    );
    let event_ids: BTreeSet<&str> = log
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(event_ids.len(), 1);
    let sent_at: Vec<i64> = log
        .iter()
        .rev()
        .map(|r| r["sent_at_ms"].as_i64().unwrap())
        .collect();
    assert!(sent_at.windows(2).all(|w| w[0] < w[1]), "{sent_at:?}");
    let got = receiver.on("/fail");
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|r| r.json()["type"] == "session_started"));

    // Disabled: later events are not attempted (a second endpoint that
    // receives them shows they were fanned out).
    register(
        &http,
        &server,
        &receiver.url("/ok"),
        Some(&["session_paused"]),
    )
    .await;
    let session = started_session(&http, &server).await;
    let (status, _) = post(
        &http,
        server.url(&format!("/v1/sessions/{session}/pause")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    receiver
        .wait_for(20, "the pause on /ok", |got| {
            got.iter().any(|r| r.path == "/ok")
        })
        .await;
    assert_eq!(receiver.on("/fail").len(), 4);

    // The outcomes, counted: three failures retried, one exhausting the
    // schedule, one delivered.
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"kairos_webhook_deliveries_total{outcome="failed"} 3"#,
        r#"kairos_webhook_deliveries_total{outcome="exhausted"} 1"#,
        r#"kairos_webhook_deliveries_total{outcome="delivered"} 1"#,
        "kairos_webhook_queue_depth ",
        "kairos_webhook_oldest_undelivered_seconds ",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_at_once() {
    let receiver = Receiver::start().await;
    let server = Instance::start(&open_env()).await;
    let http = reqwest::Client::new();
    let (gone, _) = register(
        &http,
        &server,
        &receiver.url("/gone"),
        Some(&["session_started", "session_paused"]),
    )
    .await;
    let (ok, _) = register(
        &http,
        &server,
        &receiver.url("/ok"),
        Some(&["session_paused"]),
    )
    .await;
    let session = started_session(&http, &server).await;
    let record = eventually(Duration::from_secs(20), || {
        let (http, server, id) = (&http, &server, &gone);
        async move {
            let (_, body) = get_json(http, server.url(&format!("/v1/webhooks/{id}"))).await;
            (body["data"]["disabled"] == true).then_some(body)
        }
    })
    .await
    .expect("410 disables the endpoint");
    assert!(
        record["data"]["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{record}"
    );
    let (status, _) = post(
        &http,
        server.url(&format!("/v1/sessions/{session}/pause")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    receiver
        .wait_for(20, "the pause on /ok", |got| {
            got.iter().any(|r| r.path == "/ok")
        })
        .await;
    // One attempt, the 410, and nothing after it.
    let gone_got = receiver.on("/gone");
    assert_eq!(gone_got.len(), 1);
    assert_eq!(gone_got[0].json()["type"], "session_started");
    let log = deliveries(&http, &server, &gone).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status_code"], 410);
    assert_eq!(log[0]["attempt"], 1);
    let ok_log = eventually(Duration::from_secs(10), || {
        let (http, server, id) = (&http, &server, &ok);
        async move {
            let log = deliveries(http, server, id).await;
            (!log.is_empty()).then_some(log)
        }
    })
    .await
    .expect("the /ok attempt logged");
    assert_eq!(ok_log[0]["status_code"], 204);
}

/// Two instances on one Redis (and one PostgreSQL for the delivery log):
/// the first takes the deliveries, the receiver holds them, the first is
/// killed with SIGKILL; the second delivers the same webhook-ids after the
/// lease, and nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_delivery_is_taken_over() {
    let receiver = Receiver::start().await;
    receiver.shared.holding.store(true, Ordering::SeqCst);
    let prefix = prefix();
    let mut env = open_env();
    env.push(("REDIS_URL", redis_url()));
    env.push(("REDIS_KEY_PREFIX", prefix));
    // The delivery log in PostgreSQL, shared like the endpoints.
    env.push(("DATABASE_URL", database_url()));
    let mut first = Instance::start(&env).await;
    let http = reqwest::Client::new();
    let (id, secret) = register(&http, &first, &receiver.url("/flaky"), None).await;
    let session = started_session(&http, &first).await;

    // Both events are in flight on the first instance, held by the receiver.
    receiver
        .wait_for(20, "two held requests", |got| {
            got.iter().filter(|r| r.status == 0).count() == 2
        })
        .await;
    let held: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(held.len(), 2);
    first.kill();
    receiver.shared.holding.store(false, Ordering::SeqCst);

    // The second instance starts after the kill, so only it can deliver.
    let second = Instance::start(&env).await;
    receiver
        .wait_for(60, "both events delivered by the second instance", |got| {
            got.iter()
                .filter(|r| r.status == 200)
                .map(|r| &r.webhook_id)
                .collect::<BTreeSet<_>>()
                .len()
                == 2
        })
        .await;
    let got = receiver.received();
    let delivered: BTreeSet<String> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(delivered, held, "the same webhook-ids");
    let mut types: Vec<String> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(types, ["session_created", "session_started"]);
    for r in got.iter().filter(|r| r.status == 200) {
        assert_eq!(r.json()["data"]["session_id"], session);
    }
    verify_with_python(&secret, &got);
    // The shared record and log, read through the second instance.
    let log = deliveries(&http, &second, &id).await;
    assert!(
        log.iter().filter(|r| r["status_code"] == 200).count() >= 2,
        "{log:?}"
    );
}

/// Every `/v1/webhooks` endpoint is for admins: with tokens on, a host, a
/// player, a viewer and an admin token scoped to one session all get 403
/// `FORBIDDEN` in the contract's error format (no token: 401), and nothing
/// they asked for happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_manage_webhooks() {
    use crate::common::{secured_settings, spawn_with, token};

    let mut settings = secured_settings();
    settings.webhooks.allow_http = true;
    settings.webhooks.allow_private = true;
    let app = spawn_with(settings).await;
    let admin = token("admin", "ops", None, None);
    let hook = json!({"url": "http://127.0.0.1:9/hook", "description": "admin's"});
    let (status, created) = app
        .call_as(Some(&admin), "POST", "/v1/webhooks", Some(hook.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["data"]["webhook_id"].as_str().unwrap().to_owned();

    let some_session = uuid::Uuid::new_v4().to_string();
    let others = [
        ("host", token("host", "alice", None, None)),
        ("player", token("player", "bob", None, Some("white"))),
        ("viewer", token("viewer", "carol", None, None)),
        (
            "admin of one session",
            token("admin", "ops", Some(&some_session), None),
        ),
    ];
    let one = format!("/v1/webhooks/{id}");
    let log = format!("/v1/webhooks/{id}/deliveries?limit=5");
    let calls: [(&str, &str, Option<Value>); 5] = [
        ("POST", "/v1/webhooks", Some(hook.clone())),
        ("GET", "/v1/webhooks", None),
        ("GET", &one, None),
        ("DELETE", &one, None),
        ("GET", &log, None),
    ];
    for (who, t) in &others {
        for (method, path, body) in &calls {
            let (status, body) = app.call_as(Some(t), method, path, body.clone()).await;
            assert_eq!(status, 403, "{who}: {method} {path}: {body}");
            assert_eq!(
                body["error"]["code"], "FORBIDDEN",
                "{who}: {method} {path}: {body}"
            );
            assert!(
                body["error"]["message"].as_str().unwrap().contains("admin"),
                "{who}: {method} {path}: {body}"
            );
        }
    }
    for (method, path, body) in &calls {
        let (status, body) = app.call_as(None, method, path, body.clone()).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{method} {path}");
    }

    // Nothing was registered or deleted: the admin's endpoint is the only one.
    let (status, list) = app.call_as(Some(&admin), "GET", "/v1/webhooks", None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
}
