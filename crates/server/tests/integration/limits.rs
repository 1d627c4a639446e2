//! Rate limits of contract section 7 on one instance: the headers, 429 with
//! Retry-After past the limit, and recovery as the headers promise.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::Duration;

use crate::common::{chess, spawn_with, test_settings};
use serde_json::Value;

fn limited() -> server::Settings {
    server::Settings {
        rate_limits: http_actix::limits::RateLimits::default(),
        ..test_settings()
    }
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_eleventh_switch_within_a_second_is_429_and_then_it_recovers() {
    let app = spawn_with(limited()).await;
    let id = app.create(chess(60_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.command(&id, "start", None).await;
    let url = app.url(&format!("/v1/sessions/{id}/switch"));
    // The first one reports the full budget less itself.
    let first = app.http.post(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(header(&first, "ratelimit-remaining").as_deref(), Some("9"));
    // Then 19 at once: a burst of 10 per second, one more per 100 ms elapsed.
    let started = std::time::Instant::now();
    let calls = (0..19).map(|_| app.http.post(&url).send());
    let answers: Vec<reqwest::Response> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let elapsed_ms = started.elapsed().as_millis() as usize;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert!(ok >= 9, "{ok} of 19 allowed");
    assert!(
        ok <= 9 + elapsed_ms / 100,
        "{ok} of 19 allowed in {elapsed_ms} ms"
    );
    let refused: Vec<reqwest::Response> =
        answers.into_iter().filter(|r| r.status() != 200).collect();
    assert!(!refused.is_empty());
    for res in refused {
        check_429(res).await;
    }
    // Retry-After is 1 s (rounded up from 100 ms): after it, switching works again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let res = app.http.post(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

async fn check_429(res: reqwest::Response) {
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after").as_deref(), Some("1"));
    assert_eq!(header(&res, "ratelimit-remaining").as_deref(), Some("0"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}

#[tokio::test]
async fn creates_are_limited_to_five_per_minute_per_client() {
    let app = spawn_with(limited()).await;
    for i in 0..5 {
        let res = app
            .http
            .post(app.url("/v1/sessions"))
            .json(&chess(60_000, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "create {i}");
        assert_eq!(header(&res, "ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(
            header(&res, "ratelimit-remaining").unwrap(),
            (4 - i).to_string()
        );
    }
    let res = app
        .http
        .post(app.url("/v1/sessions"))
        .json(&chess(60_000, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // One create comes back every 12 s.
    assert_eq!(header(&res, "retry-after").as_deref(), Some("12"));
    assert_eq!(header(&res, "ratelimit-reset").as_deref(), Some("60"));
}

#[tokio::test]
async fn time_and_reads_carry_their_limits() {
    let app = spawn_with(limited()).await;
    let res = app.http.get(app.url("/v1/time")).send().await.unwrap();
    assert_eq!(header(&res, "ratelimit-limit").as_deref(), Some("60"));
    let id = app.create(chess(60_000, 0)).await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .http
        .get(app.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(header(&res, "ratelimit-remaining").as_deref(), Some("99"));
    // Unlimited endpoints carry no such header.
    let res = app.http.get(app.url("/health")).send().await.unwrap();
    assert!(header(&res, "ratelimit-limit").is_none());
}

#[tokio::test]
async fn rate_limits_off_means_no_limit_and_no_headers() {
    let app = spawn_with(test_settings()).await;
    for _ in 0..70 {
        let res = app.http.get(app.url("/v1/time")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(header(&res, "ratelimit-limit").is_none());
    }
}
