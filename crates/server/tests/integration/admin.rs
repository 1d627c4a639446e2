//! The admin view's server side over real HTTP: `/admin` and its assets are
//! served without a token (the page asks for one), and `GET
//! /v1/admin/sessions` walks every stored session a page at a time for an
//! admin token (401 without one, 403 for anyone else or an admin token
//! scoped to one session, 400 naming a bad `limit` or `cursor`). What the
//! page does in a browser is `web/tests/admin.test.mjs`.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::BTreeSet;

use crate::common::{self, TestApp, chess, spawn_with};
use serde_json::Value;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|f| f["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every session id a walk with pages of `limit` returns, and the pages.
async fn walk(app: &TestApp, token: &str, limit: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..=1000 {
        let mut path = format!("/v1/admin/sessions?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (status, body) = app.call_as(Some(token), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        for v in body["data"]["sessions"].as_array().unwrap() {
            assert!(v["participants"].is_array() && v["server_time_ms"].is_i64());
            ids.push(v["session_id"].as_str().unwrap().to_owned());
        }
        match body["data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert_eq!(body["data"]["next_cursor"], Value::Null);
                return (ids, pages);
            }
        }
    }
    panic!("the walk never ended");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_admin_page_is_served_without_a_token_and_loads_the_sdk() {
    let app = spawn_with(common::secured_settings()).await;
    let res = app.http.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = res.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("/admin.js") && html.contains("/admin.css"));
    let js = app
        .http
        .get(app.url("/admin.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("from '/sdk/kairos.js'"));
    assert!(js.contains("/v1/admin/sessions"));
    let css = app.http.get(app.url("/admin.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);
}

#[tokio::test]
async fn admins_walk_every_session_a_page_at_a_time() {
    let app = spawn_with(common::secured_settings()).await;
    let admin = common::token("admin", "root", None, None);
    let host = common::token("host", "alice", None, None);
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        let (status, body) = app
            .call_as(Some(&host), "POST", "/v1/sessions", Some(chess(60_000, 0)))
            .await;
        assert_eq!(status, 201, "{body}");
        created.insert(body["data"]["session_id"].as_str().unwrap().to_owned());
    }
    let one = created.iter().next().unwrap().clone();
    let scoped = common::token("admin", "root", Some(&one), None);

    // Only an admin token for every session.
    let (status, body) = app.call("GET", "/v1/admin/sessions", None).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHORIZED"), "{body}");
    for t in [&host, &scoped] {
        let (status, body) = app
            .call_as(Some(t), "GET", "/v1/admin/sessions", None)
            .await;
        assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{body}");
    }

    // A walk in pages of 2 returns each session once (the embedded store
    // walks in id order: three pages).
    let (ids, pages) = walk(&app, &admin, 2).await;
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, created);
    if std::env::var("KAIROS_TEST_ADAPTERS").is_ok_and(|a| a == "redis") {
        // Redis walks 64 partitions with SCAN: pages hold what one call found.
        assert!(pages >= 1);
    } else {
        assert_eq!(ids.len(), 5);
        assert_eq!(pages, 3);
    }
    // The first page that holds a session (on Redis a page may hold none
    // while the walk goes on) holds full views.
    let mut path = "/v1/admin/sessions".to_owned();
    let body = loop {
        let (status, body) = app.call_as(Some(&admin), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        if body["data"]["sessions"][0].is_object() {
            break body;
        }
        let cursor = body["data"]["next_cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("the walk ended without a session: {body}"));
        path = format!("/v1/admin/sessions?cursor={}", urlencode(cursor));
    };
    let first = &body["data"]["sessions"][0];
    assert_eq!(first["status"], "pending");
    assert_eq!(first["participants"][0]["participant_id"], "white");

    // Bad paging is named.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=", "cursor"),
        ("cursor=not-a-cursor", "cursor"),
    ] {
        let (status, body) = app
            .call_as(
                Some(&admin),
                "GET",
                &format!("/v1/admin/sessions?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(code(&body), "VALIDATION_ERROR");
        assert_eq!(fields(&body), [field], "{query}");
    }
}
