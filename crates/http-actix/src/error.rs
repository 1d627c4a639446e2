//! The one place where errors become status codes, wire error codes and
//! WebSocket close codes (contract sections 3, "Errors", and 4).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use kairos_domain::{FieldError, ServiceError, TransitionError};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The wire error codes of the contract (plus the two transport ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400: bad JSON, wrong types, a broken rule, a bad path id, an unknown participant.
    ValidationError,
    /// 400: the command is not allowed in the session's status.
    InvalidStateTransition,
    /// 401: no valid token.
    Unauthorized,
    /// 403: a valid token without the right.
    Forbidden,
    /// 404: no such session.
    SessionNotFound,
    /// 404: no such route (ext).
    NotFound,
    /// 405: the route exists with another method (ext).
    MethodNotAllowed,
    /// 409: `expected_version` differs.
    Conflict,
    /// 409: the session id is taken.
    SessionExists,
    /// 409: a joining participant's id is taken (ext, contract section 9).
    ParticipantExists,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 429: over a rate limit.
    RateLimited,
    /// 503: the primary store is unreachable, or the instance is full or draining.
    Unavailable,
    /// 500: anything unexpected.
    InternalError,
}

impl Code {
    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "VALIDATION_ERROR",
            Self::InvalidStateTransition => "INVALID_STATE_TRANSITION",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::SessionExists => "SESSION_EXISTS",
            Self::ParticipantExists => "PARTICIPANT_EXISTS",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationError | Self::InvalidStateTransition => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::SessionNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::SessionExists | Self::ParticipantExists => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// Wire code.
    pub code: Code,
    /// Human-readable, safe to show (never internals).
    pub message: String,
    /// Structured details (field errors, versions).
    pub details: Option<Box<Value>>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// The limit that refused the request (429), for the `RateLimit-*` headers.
    pub rate_limit: Option<Box<kairos_domain::RateDecision>>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            rate_limit: None,
        }
    }

    /// 429 `RATE_LIMITED` for a refusal by `limit`, with `Retry-After` and
    /// the decision for the `RateLimit-*` headers (contract section 7).
    pub fn rate_limited(
        decision: kairos_domain::RateDecision,
        limit: kairos_domain::Limit,
    ) -> Self {
        Self {
            retry_after: Some(ceil_secs(decision.retry_after_ms)),
            rate_limit: Some(Box::new(decision)),
            ..Self::new(
                Code::RateLimited,
                format!(
                    "over the limit of {} per {} s; retry after {} s",
                    decision.limit,
                    limit.period_ms / 1000,
                    ceil_secs(decision.retry_after_ms)
                ),
            )
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// A validation error listing every bad field.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("{} {}", one.field, one.message),
            _ => format!("{} fields are invalid", fields.len()),
        };
        Self::new(Code::ValidationError, message).with_details(json!(fields))
    }

    /// A validation error on one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// A 503 with `Retry-After: retry_after_s`.
    pub fn unavailable(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after: Some(retry_after_s),
            ..Self::new(Code::Unavailable, message)
        }
    }

    /// A 500 that names only the request id; the cause goes to the log.
    pub fn internal(request_id: &str) -> Self {
        Self::new(
            Code::InternalError,
            format!("internal error; quote request id {request_id} when reporting it"),
        )
        .with_details(json!({ "request_id": request_id }))
    }

    /// The body of this error.
    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(details) = &self.details {
            error["details"] = (**details).clone();
        }
        json!({ "error": error })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(d) = &self.rate_limit {
            response.insert_header(("ratelimit-limit", d.limit.to_string()));
            response.insert_header(("ratelimit-remaining", d.remaining.to_string()));
            response.insert_header(("ratelimit-reset", ceil_secs(d.reset_ms).to_string()));
        }
        if self.code == Code::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(self.body())
    }
}

/// Whole seconds, rounded up (headers count in seconds).
pub fn ceil_secs(ms: i64) -> u64 {
    u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000)
}

/// The close code for an unknown session (contract section 4).
pub const CLOSE_NO_SUCH_SESSION: u16 = 4404;

/// The WebSocket close code of an error that ends a socket, from the same
/// wire code as its HTTP status: 4404 for an unknown session, 1013 (try
/// again later) when a store or bus is unreachable, 1009 for a message
/// over the limit, 1011 for anything unexpected, 1008 (policy) for every
/// refusal (token, right, origin, rate, bad session id).
pub fn close_code(code: Code) -> u16 {
    match code {
        Code::SessionNotFound => CLOSE_NO_SUCH_SESSION,
        Code::Unavailable => CloseCode::Again.into(),
        Code::PayloadTooLarge => CloseCode::Size.into(),
        Code::InternalError => CloseCode::Error.into(),
        Code::ValidationError
        | Code::InvalidStateTransition
        | Code::Unauthorized
        | Code::Forbidden
        | Code::NotFound
        | Code::MethodNotAllowed
        | Code::Conflict
        | Code::SessionExists
        | Code::ParticipantExists
        | Code::RateLimited => CloseCode::Policy.into(),
    }
}

/// Maps a service error; `request_id` goes into 500 bodies, the cause to the log.
pub fn from_service(err: ServiceError, request_id: &str) -> ApiError {
    match err {
        ServiceError::NotFound(id) => {
            ApiError::new(Code::SessionNotFound, format!("session {id} not found"))
        }
        ServiceError::AlreadyExists(id) => {
            ApiError::new(Code::SessionExists, format!("session {id} already exists"))
        }
        ServiceError::Forbidden(why) => ApiError::new(Code::Forbidden, why),
        ServiceError::Invalid(fields) => ApiError::validation(fields),
        ServiceError::Transition(t) => match t {
            TransitionError::InvalidTransition { .. } | TransitionError::ParticipantExpired(_) => {
                ApiError::new(Code::InvalidStateTransition, t.to_string())
            }
            TransitionError::UnknownParticipant(_) => {
                ApiError::field("next_participant_id", t.to_string())
            }
            TransitionError::Conflict { expected, actual } => {
                ApiError::new(Code::Conflict, t.to_string()).with_details(json!({
                    "expected_version": expected,
                    "actual_version": actual,
                }))
            }
            TransitionError::ParticipantExists(id) => ApiError::new(
                Code::ParticipantExists,
                format!("participant {id} is already in the session"),
            )
            .with_details(json!({ "participant_id": id.as_str() })),
            TransitionError::InvalidParticipant(fields) => ApiError::validation(fields),
            TransitionError::NothingDue => {
                tracing::error!(request_id, "a client command produced NothingDue");
                ApiError::internal(request_id)
            }
        },
        ServiceError::Unavailable(cause) => {
            tracing::warn!(request_id, %cause, "primary store unavailable");
            ApiError::unavailable("the session store is unreachable; retry shortly", 1)
        }
        ServiceError::AuditDisabled => ApiError {
            retry_after: None,
            ..ApiError::new(
                Code::Unavailable,
                "the audit trail is disabled on this deployment",
            )
        },
        ServiceError::AuditUnavailable(cause) => {
            tracing::warn!(request_id, %cause, "audit history failed");
            ApiError::unavailable("the audit trail is unreachable; retry shortly", 5)
        }
        ServiceError::Internal(cause) => {
            tracing::error!(request_id, %cause, "internal error");
            ApiError::internal(request_id)
        }
        ServiceError::RateLimited { decision, limit } => ApiError::rate_limited(decision, limit),
    }
}

/// The answer to a method a route does not serve: 405 `METHOD_NOT_ALLOWED`
/// in the error format (every resource's `default_service`, so that no
/// route answers actix's empty 405).
pub(crate) async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        Code::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .error_response()
}

/// A resource at `path` that answers a method none of its routes serves
/// with [`method_not_allowed`]: every route of the API is built on it.
pub(crate) fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// A [`resource`] that serves `GET` with `handler`.
pub(crate) fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path).route(web::get().to(handler))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_domain::SessionId;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
        assert_eq!(ceil_secs(-5), 0);
    }

    #[test]
    fn close_codes_follow_the_wire_codes() {
        let id = SessionId::from_uuid(uuid::Uuid::nil());
        let close = |e: ServiceError| close_code(from_service(e, "r").code);
        assert_eq!(close(ServiceError::NotFound(id)), 4404);
        assert_eq!(close(ServiceError::Forbidden("no")), 1008);
        assert_eq!(close(ServiceError::Unavailable("down".into())), 1013);
        assert_eq!(close(ServiceError::Internal("bug".into())), 1011);
        assert_eq!(close_code(Code::Unauthorized), 1008);
        assert_eq!(close_code(Code::RateLimited), 1008);
    }
}
