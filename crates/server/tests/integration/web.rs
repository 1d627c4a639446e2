//! The demo page and the browser SDK as the server serves them: `/` is HTML
//! that loads the SDK, `/sdk/kairos.js` is JavaScript with the right content
//! type, `/sdk/kairos.d.ts` its types, all without a token and revalidated
//! by ETag. (What the page does in a browser is tested by
//! `web/tests/browser.test.mjs`, run by `cargo xtask test`.)
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use crate::common::{self, spawn_app};

async fn get(app: &common::TestApp, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).send().await.expect("request")
}

fn content_type(res: &reqwest::Response) -> String {
    res.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn root_serves_the_demo_page_which_loads_the_sdk() {
    let app = spawn_app().await;
    let res = get(&app, "/").await;
    assert_eq!(res.status(), 200, "/ must be the demo page, not a redirect");
    assert!(
        content_type(&res).starts_with("text/html"),
        "{}",
        content_type(&res)
    );
    let html = res.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(
        html.contains("/sdk/kairos.js"),
        "the page references the SDK"
    );
    assert!(html.contains("/demo.js"));

    // The page's own script imports the SDK; nothing comes from elsewhere.
    let res = get(&app, "/demo.js").await;
    assert_eq!(res.status(), 200);
    assert!(content_type(&res).starts_with("text/javascript"));
    let js = res.text().await.unwrap();
    assert!(js.contains("from '/sdk/kairos.js'"));
    for text in [&html, &js] {
        assert!(!text.contains("https://"), "the demo must work offline");
    }
    let css = get(&app, "/demo.css").await;
    assert_eq!(css.status(), 200);
    assert!(content_type(&css).starts_with("text/css"));

    // The API docs stay where they were.
    let docs = get(&app, "/docs/").await;
    assert_eq!(docs.status(), 200);
}

#[tokio::test]
async fn the_sdk_is_javascript_with_its_types_beside_it() {
    let app = spawn_app().await;
    let res = get(&app, "/sdk/kairos.js").await;
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), "text/javascript; charset=utf-8");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let js = res.text().await.unwrap();
    assert!(
        js.starts_with("// "),
        "starts with a comment saying why it exists"
    );
    for export in [
        "export class KairosClient",
        "export class OffsetEstimator",
        "export function computeDisplay",
    ] {
        assert!(js.contains(export), "{export} missing");
    }

    // Revalidation answers 304 without a body.
    let again = app
        .http
        .get(app.url("/sdk/kairos.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.text().await.unwrap().is_empty());

    let types = get(&app, "/sdk/kairos.d.ts").await;
    assert_eq!(types.status(), 200);
    assert!(content_type(&types).starts_with("text/typescript"));
    assert!(
        types
            .text()
            .await
            .unwrap()
            .contains("export declare class KairosClient")
    );
}

#[tokio::test]
async fn only_get_is_served() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(app.url("/sdk/kairos.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
}
