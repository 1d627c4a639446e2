//! The demo page, the admin view and the browser SDK, embedded in the binary so that the
//! server serves them with nothing on disk and no network (contract section
//! 3: the demo page needs no token).
//!
//! | path | file (`crates/http-actix/static/`) | content type |
//! | --- | --- | --- |
//! | `GET /` | `index.html` | `text/html` |
//! | `GET /demo.js` | `demo.js` | `text/javascript` |
//! | `GET /demo.css` | `demo.css` | `text/css` |
//! | `GET /sdk/kairos.js` | `kairos.js` | `text/javascript` |
//! | `GET /sdk/kairos.d.ts` | `kairos.d.ts` | `text/typescript` |
//! | `GET /admin` | `admin.html` | `text/html` |
//! | `GET /admin.js` | `admin.js` | `text/javascript` |
//! | `GET /admin.css` | `admin.css` | `text/css` |
//!
//! The admin view (`/admin`) is served without a token like the demo page:
//! it holds no data of its own and asks for an admin token before it reads
//! anything (`GET /v1/admin/sessions` is admin only).
//!
//! Responses carry `Cache-Control: no-cache` (a browser revalidates, so a
//! new build is picked up at once) and an `ETag` computed from the content
//! at first use, so revalidation costs a 304.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::get_only;

/// One embedded file.
#[derive(Debug)]
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<String>,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            etag: OnceLock::new(),
        }
    }

    /// A strong ETag: FNV-1a of the content (no cryptographic need here).
    fn etag(&self) -> &str {
        self.etag.get_or_init(|| {
            let hash = self.body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            format!("\"{hash:016x}\"")
        })
    }

    fn respond(&self, req: &HttpRequest) -> HttpResponse {
        let etag = self.etag();
        let fresh = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut res = if fresh {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header((
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .insert_header((header::ETAG, etag.to_owned()));
        if fresh {
            res.finish()
        } else {
            res.content_type(self.content_type).body(self.body)
        }
    }
}

static INDEX_HTML: Asset = Asset::new(
    include_str!("../static/index.html"),
    "text/html; charset=utf-8",
);
static DEMO_JS: Asset = Asset::new(
    include_str!("../static/demo.js"),
    "text/javascript; charset=utf-8",
);
static DEMO_CSS: Asset = Asset::new(
    include_str!("../static/demo.css"),
    "text/css; charset=utf-8",
);
static SDK_JS: Asset = Asset::new(
    include_str!("../static/kairos.js"),
    "text/javascript; charset=utf-8",
);
static SDK_DTS: Asset = Asset::new(
    include_str!("../static/kairos.d.ts"),
    "text/typescript; charset=utf-8",
);

static ADMIN_HTML: Asset = Asset::new(
    include_str!("../static/admin.html"),
    "text/html; charset=utf-8",
);
static ADMIN_JS: Asset = Asset::new(
    include_str!("../static/admin.js"),
    "text/javascript; charset=utf-8",
);
static ADMIN_CSS: Asset = Asset::new(
    include_str!("../static/admin.css"),
    "text/css; charset=utf-8",
);

async fn index(req: HttpRequest) -> HttpResponse {
    INDEX_HTML.respond(&req)
}

async fn demo_js(req: HttpRequest) -> HttpResponse {
    DEMO_JS.respond(&req)
}

async fn demo_css(req: HttpRequest) -> HttpResponse {
    DEMO_CSS.respond(&req)
}

async fn sdk_js(req: HttpRequest) -> HttpResponse {
    SDK_JS.respond(&req)
}

async fn sdk_dts(req: HttpRequest) -> HttpResponse {
    SDK_DTS.respond(&req)
}

async fn admin(req: HttpRequest) -> HttpResponse {
    ADMIN_HTML.respond(&req)
}

async fn admin_js(req: HttpRequest) -> HttpResponse {
    ADMIN_JS.respond(&req)
}

async fn admin_css(req: HttpRequest) -> HttpResponse {
    ADMIN_CSS.respond(&req)
}

/// Registers the demo page, the admin view, their assets and the SDK.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/", index))
        .service(get_only("/admin", admin))
        .service(get_only("/admin.js", admin_js))
        .service(get_only("/admin.css", admin_css))
        .service(get_only("/demo.js", demo_js))
        .service(get_only("/demo.css", demo_css))
        .service(get_only("/sdk/kairos.js", sdk_js))
        .service(get_only("/sdk/kairos.d.ts", sdk_dts));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_starts_with_a_comment_saying_why_it_exists() {
        for html in [INDEX_HTML.body, ADMIN_HTML.body] {
            assert!(html.starts_with("<!doctype html>\n<!--"));
        }
        for js in [DEMO_JS.body, SDK_JS.body, SDK_DTS.body, ADMIN_JS.body] {
            assert!(js.starts_with("// "), "{}", &js[..40]);
        }
        for css in [DEMO_CSS.body, ADMIN_CSS.body] {
            assert!(css.starts_with("/* "));
        }
    }

    #[test]
    fn the_page_loads_the_sdk_and_its_own_assets() {
        assert!(INDEX_HTML.body.contains("/demo.js"));
        assert!(INDEX_HTML.body.contains("/demo.css"));
        assert!(DEMO_JS.body.contains("from '/sdk/kairos.js'"));
        assert!(ADMIN_HTML.body.contains("/admin.js"));
        assert!(ADMIN_HTML.body.contains("/admin.css"));
        assert!(ADMIN_JS.body.contains("from '/sdk/kairos.js'"));
        for text in [ADMIN_HTML.body, ADMIN_JS.body, ADMIN_CSS.body] {
            assert!(!text.contains("https://"), "the admin view works offline");
        }
    }

    #[test]
    fn etags_are_quoted_and_differ_between_files() {
        let a = SDK_JS.etag().to_owned();
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 18,
            "{a}"
        );
        assert_ne!(a, SDK_DTS.etag());
        assert_eq!(a, SDK_JS.etag());
    }
}
