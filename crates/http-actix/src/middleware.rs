//! Request ids, request logging and HTTP metrics, for every request.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;

use crate::state::AppState;

/// The id of one request: echoed in `x-request-id`, in 500 bodies and in
/// every log line of the request, so a report can be matched to the logs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The request id of `req` (set by [`observe`]; "unknown" outside it).
pub fn request_id(req: &actix_web::HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| "unknown".to_owned(), |r| r.0.clone())
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps every request: assigns its id, opens its tracing span, records its
/// metrics. Logs the route pattern, never the query string (it may hold a token).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    if let Some(m) = metrics {
        m.http_requests
            .with_label_values(&[route.as_str(), method.as_str(), &status.to_string()])
            .inc();
        m.http_latency
            .with_label_values(&[route.as_str(), method.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_us = elapsed.as_micros() as u64,
            "request done"
        );
    });
    result.map(|mut res| {
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        res
    })
}
