//! `/v1/webhooks` (contract section 9): an admin registers, lists, reads and
//! deletes webhook endpoints and reads their delivery logs. The endpoints
//! live in the `WebhookStore` every instance shares; the secret is shown
//! once, in the answer to the create. A new URL passes the SSRF guard the
//! server hands over ([`crate::state::UrlCheckFn`]) before it is stored.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use kairos_domain::webhook::{DeliveryRecord, Endpoint, WebhookId, new_secret};
use kairos_domain::{Actor, EventType, FieldError, Role, StoreError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, Code, resource};
use crate::middleware::request_id;
use crate::rest::read_json;
use crate::schemas::{AccessErrors, ErrorBody};
use crate::state::{AppState, WebhookAdmin};

/// The most records one `deliveries` page returns (the log keeps 1,000).
pub const MAX_DELIVERIES_LIMIT: usize = 1000;
/// The longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// Registers the routes; a wrong method gets 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/webhooks")
            .route(web::post().to(create_webhook))
            .route(web::get().to(list_webhooks)),
    )
    .service(
        resource("/v1/webhooks/{id}")
            .route(web::get().to(get_webhook))
            .route(web::delete().to(delete_webhook)),
    )
    .service(resource("/v1/webhooks/{id}/deliveries").route(web::get().to(webhook_deliveries)));
}

/// A new endpoint, as a client writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCreateDoc {
    /// `https://` (or `http://` with `WEBHOOK_ALLOW_HTTP=true`); a host that
    /// resolves to a loopback, private, link-local or multicast address is
    /// refused unless `WEBHOOK_ALLOW_PRIVATE=true`.
    #[schema(example = "https://app.example.com/hooks/kairos", max_length = 2048)]
    url: String,
    /// The event types to send (contract section 5); all when left out.
    #[schema(example = json!(["session_expired", "participant_expired"]))]
    event_types: Option<Vec<String>>,
    /// Free text, at most 500 characters.
    #[schema(max_length = 500)]
    description: Option<String>,
}

/// An endpoint as the API shows it (never its secret, but in the create's answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct WireWebhook {
    /// Its id (UUID).
    webhook_id: String,
    url: String,
    /// The event types sent; `null` for all.
    event_types: Option<Vec<String>>,
    description: Option<String>,
    created_at_ms: i64,
    /// No more deliveries: the receiver answered 410, or the retry schedule
    /// ran out.
    disabled: bool,
    disabled_reason: Option<String>,
    /// `whsec_` + base64 of 32 random bytes: the signing key. Only in the
    /// answer to the create.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WireWebhook {
    fn from_endpoint(e: Endpoint, with_secret: bool) -> Self {
        Self {
            webhook_id: e.webhook_id.to_string(),
            url: e.url,
            event_types: e
                .event_types
                .map(|types| types.iter().map(|t| t.as_str().to_owned()).collect()),
            description: e.description,
            created_at_ms: e.created_at_ms,
            disabled: e.disabled,
            disabled_reason: e.disabled_reason,
            secret: with_secret.then_some(e.secret),
        }
    }
}

/// One attempt in an endpoint's delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct WireDelivery {
    /// The event (the `webhook-id` header).
    event_id: String,
    /// 1 for the first attempt.
    attempt: u32,
    /// The receiver's status, when it answered.
    status_code: Option<u16>,
    /// What went wrong, when something did.
    error: Option<String>,
    sent_at_ms: i64,
    latency_ms: i64,
}

impl From<DeliveryRecord> for WireDelivery {
    fn from(r: DeliveryRecord) -> Self {
        Self {
            event_id: r.event_id.to_string(),
            attempt: r.attempt,
            status_code: r.status_code,
            error: r.error,
            sent_at_ms: r.sent_at_ms,
            latency_ms: r.latency_ms,
        }
    }
}

/// `{"data": endpoint}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEnvelope {
    data: WireWebhook,
}

/// `{"data": [endpoint, ...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhooksEnvelope {
    data: Vec<WireWebhook>,
}

/// `{"data": [delivery, ...]}`, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesEnvelope {
    data: Vec<WireDelivery>,
}

/// The caller must be an admin whose token is not scoped to one session.
fn admin(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let actor: Actor = state.settings.auth.authenticate(req)?;
    if actor.role == Role::Admin && actor.sid.is_none() {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::Forbidden,
            "webhooks are managed by admins (a token without sid)",
        ))
    }
}

fn store(state: &AppState) -> Result<&WebhookAdmin, ApiError> {
    state
        .webhooks
        .as_ref()
        .ok_or_else(|| ApiError::new(Code::NotFound, "webhooks are not enabled here"))
}

fn from_store(e: StoreError, request_id: &str) -> ApiError {
    match e {
        StoreError::Unavailable(cause) => {
            tracing::warn!(request_id, %cause, "webhook store unavailable");
            ApiError::unavailable("the webhook store is unreachable; retry shortly", 1)
        }
        other => {
            tracing::error!(request_id, error = %other, "webhook store failed");
            ApiError::unavailable("the webhook store failed; retry shortly", 1)
        }
    }
}

fn parse_id(raw: &str) -> Result<WebhookId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::field("webhook_id", "path id must be a UUID"))
}

fn not_found(id: WebhookId) -> ApiError {
    ApiError::new(Code::NotFound, format!("webhook {id} not found"))
}

/// The fields of a create body, every bad one named.
struct NewEndpoint {
    url: String,
    event_types: Option<Vec<EventType>>,
    description: Option<String>,
}

fn parse_body(body: &Value) -> Result<NewEndpoint, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "body",
            "must be a JSON object with url, and optionally event_types and description",
        )]);
    };
    let mut errors = Vec::new();
    let url = match obj.get("url") {
        Some(Value::String(u)) if !u.trim().is_empty() => u.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            errors.push(FieldError::new("url", "is required"));
            String::new()
        }
        Some(_) => {
            errors.push(FieldError::new("url", "must be a string"));
            String::new()
        }
    };
    let event_types = match obj.get("event_types") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => {
            errors.push(FieldError::new(
                "event_types",
                "must list at least one event type (leave it out for all)",
            ));
            None
        }
        Some(Value::Array(items)) => {
            let mut types = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(EventType::parse) {
                    Some(t) => {
                        if !types.contains(&t) {
                            types.push(t);
                        }
                    }
                    None => errors.push(FieldError::new(
                        format!("event_types[{i}]"),
                        "is not an event type (contract section 5, e.g. session_expired)",
                    )),
                }
            }
            Some(types)
        }
        Some(_) => {
            errors.push(FieldError::new(
                "event_types",
                "must be an array of event types",
            ));
            None
        }
    };
    let description = match obj.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= MAX_DESCRIPTION_CHARS => Some(d.clone()),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("description", "must be a string"));
            None
        }
    };
    if errors.is_empty() {
        Ok(NewEndpoint {
            url,
            event_types,
            description,
        })
    } else {
        Err(errors)
    }
}

/// Register a webhook endpoint (admin). The secret is in this answer only.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body(content = WebhookCreateDoc, description = "url, event_types?, description?"),
    responses(
        (status = 201, description = "Created; `Location` names the endpoint; `secret` is shown only here", body = WebhookEnvelope),
        (status = 400, description = "VALIDATION_ERROR: a bad or refused url (scheme, private address, unresolvable host), an unknown event type", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
        AccessErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub async fn create_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    admin(&state, &req)?;
    let webhooks = store(&state)?;
    let body = read_json(&req, payload).await?;
    let new = parse_body(&body).map_err(ApiError::validation)?;
    (webhooks.check_url)(new.url.clone())
        .await
        .map_err(|message| ApiError::field("url", message))?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| {
        tracing::error!(request_id = %rid, error = %e, "no randomness for a webhook secret");
        ApiError::unavailable("no randomness available; retry shortly", 1)
    })?;
    let endpoint = Endpoint {
        webhook_id: WebhookId::from_uuid(uuid::Uuid::new_v4()),
        url: new.url,
        event_types: new.event_types,
        description: new.description,
        secret: new_secret(key),
        created_at_ms: state.service.now_ms(),
        disabled: false,
        disabled_reason: None,
    };
    webhooks
        .store
        .create_endpoint(&endpoint)
        .await
        .map_err(|e| from_store(e, &rid))?;
    tracing::info!(webhook_id = %endpoint.webhook_id, "webhook endpoint created");
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/webhooks/{}", endpoint.webhook_id),
        ))
        .json(WebhookEnvelope {
            data: WireWebhook::from_endpoint(endpoint, true),
        }))
}

/// Every webhook endpoint (admin), oldest first, without secrets.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "The endpoints", body = WebhooksEnvelope),
        AccessErrors,
    )
)]
pub async fn list_webhooks(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    admin(&state, &req)?;
    let mut endpoints = store(&state)?
        .store
        .list_endpoints()
        .await
        .map_err(|e| from_store(e, &rid))?;
    endpoints.sort_by_key(|e| (e.created_at_ms, e.webhook_id));
    let data: Vec<WireWebhook> = endpoints
        .into_iter()
        .map(|e| WireWebhook::from_endpoint(e, false))
        .collect();
    Ok(HttpResponse::Ok().json(WebhooksEnvelope { data }))
}

/// One webhook endpoint (admin), without its secret.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "Webhook id (UUID)")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        AccessErrors,
    )
)]
pub async fn get_webhook(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    admin(&state, &req)?;
    let endpoint = store(&state)?
        .store
        .get_endpoint(id)
        .await
        .map_err(|e| from_store(e, &rid))?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(WebhookEnvelope {
        data: WireWebhook::from_endpoint(endpoint, false),
    }))
}

/// Delete a webhook endpoint (admin) and its queued deliveries.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "Webhook id (UUID)")),
    responses(
        (status = 204, description = "Deleted; also for an unknown or already deleted id (idempotent)"),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID", body = ErrorBody),
        AccessErrors,
    )
)]
pub async fn delete_webhook(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    admin(&state, &req)?;
    let existed = store(&state)?
        .store
        .delete_endpoint(id)
        .await
        .map_err(|e| from_store(e, &rid))?;
    if existed {
        tracing::info!(webhook_id = %id, "webhook endpoint deleted");
    }
    Ok(HttpResponse::NoContent().finish())
}

/// An endpoint's delivery log (admin), newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(
        ("id" = uuid::Uuid, Path, description = "Webhook id (UUID)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many attempts (1..=1000, default 100)"),
    ),
    responses(
        (status = 200, description = "Attempts, newest first", body = DeliveriesEnvelope),
        (status = 400, description = "VALIDATION_ERROR: the id is not a UUID, or a bad limit", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        AccessErrors,
    )
)]
pub async fn webhook_deliveries(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<std::collections::HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rid = request_id(&req);
    let id = parse_id(&path)?;
    let limit = match query.get("limit") {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_DELIVERIES_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!("must be an integer from 1 to {MAX_DELIVERIES_LIMIT}"),
                ));
            }
        },
    };
    admin(&state, &req)?;
    let webhooks = store(&state)?;
    webhooks
        .store
        .get_endpoint(id)
        .await
        .map_err(|e| from_store(e, &rid))?
        .ok_or_else(|| not_found(id))?;
    let records = webhooks
        .store
        .deliveries(id, limit)
        .await
        .map_err(|e| from_store(e, &rid))?;
    let data: Vec<WireDelivery> = records.into_iter().map(WireDelivery::from).collect();
    Ok(HttpResponse::Ok().json(DeliveriesEnvelope { data }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn fields(body: Value) -> Vec<String> {
        parse_body(&body)
            .err()
            .unwrap()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_body_is_checked_field_by_field() {
        let ok = parse_body(&json!({
            "url": " https://x.example/h ",
            "event_types": ["session_expired", "time_warning", "session_expired"],
            "description": "lots",
        }))
        .ok()
        .unwrap();
        assert_eq!(ok.url, "https://x.example/h");
        assert_eq!(
            ok.event_types,
            Some(vec![EventType::SessionExpired, EventType::TimeWarning])
        );
        assert_eq!(ok.description.as_deref(), Some("lots"));
        let all = parse_body(&json!({"url": "https://x.example/h", "event_types": null}))
            .ok()
            .unwrap();
        assert_eq!(all.event_types, None);

        assert_eq!(fields(json!([])), ["body"]);
        assert_eq!(fields(json!({})), ["url"]);
        assert_eq!(
            fields(
                json!({"url": 5, "event_types": ["nope", "session_expired", 3], "description": 1})
            ),
            ["url", "event_types[0]", "event_types[2]", "description"]
        );
        assert_eq!(
            fields(json!({"url": "https://x.example", "event_types": []})),
            ["event_types"]
        );
        assert_eq!(
            fields(json!({"url": "https://x.example", "event_types": "session_expired"})),
            ["event_types"]
        );
        assert_eq!(
            fields(json!({"url": "https://x.example", "description": "d".repeat(501)})),
            ["description"]
        );
    }
}
