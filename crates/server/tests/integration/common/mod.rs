//! Shared test harness: `spawn_app()` starts the real server on free ports
//! with the embedded adapters and gives each test its own instance;
//! [`procs`] runs real `kairos-server` processes and servers of their own;
//! [`create_session`] creates a session on either.
#![allow(unreachable_pub)] // `pub` here means "shared by the suite's modules".

pub mod procs;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use server::{Application, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The suite's settings. With `KAIROS_TEST_ADAPTERS=redis` the same tests
/// run against the Redis store, bus, clock and limiter and the PostgreSQL
/// audit trail of `cargo xtask test`, each app under a key prefix of its own.
pub fn test_settings() -> Settings {
    let redis = std::env::var("KAIROS_TEST_ADAPTERS").is_ok_and(|a| a == "redis");
    let (redis, database_url) = if redis {
        let url = std::env::var("KAIROS_TEST_REDIS_URL")
            .expect("KAIROS_TEST_REDIS_URL (cargo xtask test)");
        let db = std::env::var("KAIROS_TEST_DATABASE_URL")
            .expect("KAIROS_TEST_DATABASE_URL (cargo xtask test)");
        (
            Some(server::config::RedisSettings {
                target: store_redis::RedisTarget::new(url),
                command_timeout: Duration::from_secs(2),
                key_prefix: format!("t{}:", uuid::Uuid::new_v4().simple()),
            }),
            Some(audit_diesel::DatabaseUrl::new(db)),
        )
    } else {
        (None, None)
    };
    Settings {
        redis,
        database_url,
        port: 0,
        metrics_port: 0,
        shutdown_drain: Duration::from_millis(300),
        http_workers: Some(2),
        // Tests hammer one server from one IP; rate-limit tests turn them on.
        rate_limits: http_actix::limits::RateLimits {
            enabled: false,
            ..Default::default()
        },
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(test_settings()).await
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    let app = Application::build(settings).await.expect("app builds");
    let addr = app.addr();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    // Wait until it answers.
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("http://{addr}/ready")).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    TestApp {
        addr,
        metrics_addr,
        http,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends a request and returns (status, JSON body or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(None, method, path, body).await
    }

    /// As [`Self::call`], with `Authorization: Bearer <token>` when given.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn create(&self, config: Value) -> Value {
        let (status, body) = self.call("POST", "/v1/sessions", Some(config)).await;
        assert_eq!(status, 201, "create failed: {body}");
        body["data"].clone()
    }

    pub async fn command(&self, id: &str, name: &str, body: Option<Value>) -> (u16, Value) {
        self.call("POST", &format!("/v1/sessions/{id}/{name}"), body)
            .await
    }

    pub async fn get(&self, id: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(status, 200, "get failed: {body}");
        body["data"].clone()
    }

    /// Stops the server (SIGTERM path) and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Settings with tokens required (`JWT_SECRET` = [`TEST_SECRET`]).
pub fn secured_settings() -> Settings {
    Settings {
        auth: server::config::Auth::Jwt {
            secret: http_actix::auth::Secret::new(TEST_SECRET.into()).expect("secret"),
            leeway_s: 0,
        },
        ..test_settings()
    }
}

/// A token signed with [`TEST_SECRET`], valid for an hour.
pub fn token(role: &str, sub: &str, sid: Option<&str>, pid: Option<&str>) -> String {
    let secret = http_actix::auth::Secret::new(TEST_SECRET.into()).expect("secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    server::token::mint_token(
        &secret,
        role,
        sub,
        sid.map(Into::into),
        pid.map(Into::into),
        "1h",
        now,
    )
    .expect("token")
}

/// Creates a session with `POST url` (a `/v1/sessions` URL of a [`TestApp`],
/// a [`procs::Instance`] or a proxy in front of them), as `token` when
/// given; asserts 201 and returns the new session's id.
pub async fn create_session(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    config: Value,
) -> String {
    let mut req = http.post(url).json(&config);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "create failed: {body}");
    body["data"]["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned()
}

pub use test_support::chess;

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
