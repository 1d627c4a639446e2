//! The client's errors: what the server refused (with the contract's error
//! code, message, details, HTTP status and `Retry-After`), and what went
//! wrong on the way (transport, an unexpected body, a closed subscription).

use std::time::Duration;

use serde_json::Value;

/// The contract's error codes (`error.code`, docs/protocol.md "Errors").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed JSON, a broken rule, a bad id.
    ValidationError,
    /// 400: the command is not allowed in the session's status.
    InvalidStateTransition,
    /// 401: a missing or bad token.
    Unauthorized,
    /// 403: a valid token without the right.
    Forbidden,
    /// 404: no such session.
    SessionNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 409: `expected_version` differs.
    Conflict,
    /// 409: the `session_id` is taken.
    SessionExists,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 429: over a rate limit (`Retry-After`).
    RateLimited,
    /// 503: the store is unreachable, or the instance is draining.
    Unavailable,
    /// 500: anything unexpected.
    InternalError,
    /// A code this version of the client does not know, as sent.
    Other(String),
}

impl ErrorCode {
    /// The code as on the wire.
    pub fn as_str(&self) -> &str {
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
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::InternalError => "INTERNAL_ERROR",
            Self::Other(code) => code,
        }
    }

    /// The code of a wire string.
    pub fn parse(code: &str) -> Self {
        match code {
            "VALIDATION_ERROR" => Self::ValidationError,
            "INVALID_STATE_TRANSITION" => Self::InvalidStateTransition,
            "UNAUTHORIZED" => Self::Unauthorized,
            "FORBIDDEN" => Self::Forbidden,
            "SESSION_NOT_FOUND" => Self::SessionNotFound,
            "NOT_FOUND" => Self::NotFound,
            "METHOD_NOT_ALLOWED" => Self::MethodNotAllowed,
            "CONFLICT" => Self::Conflict,
            "SESSION_EXISTS" => Self::SessionExists,
            "PAYLOAD_TOO_LARGE" => Self::PayloadTooLarge,
            "RATE_LIMITED" => Self::RateLimited,
            "UNAVAILABLE" => Self::Unavailable,
            "INTERNAL_ERROR" => Self::InternalError,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bad field of a `VALIDATION_ERROR` (`details: [{"field", "message"}]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `participants[1].total_time_ms`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A refusal by the server: an error body over REST, or an `ERROR` message on
/// the socket (whose `status` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status (REST), `None` for a socket `ERROR`.
    pub status: Option<u16>,
    /// The contract's error code.
    pub code: ErrorCode,
    /// For people; may change between versions.
    pub message: String,
    /// `details` when given (bad fields, versions, a request id).
    pub details: Option<Value>,
    /// The `Retry-After` header, when given (429, 503).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// `(expected_version, actual_version)` of a `CONFLICT`.
    pub fn conflict_versions(&self) -> Option<(u64, u64)> {
        let details = self.details.as_ref()?;
        Some((
            details.get("expected_version")?.as_u64()?,
            details.get("actual_version")?.as_u64()?,
        ))
    }

    /// The bad fields of a `VALIDATION_ERROR` (empty when `details` lists none).
    pub fn field_errors(&self) -> Vec<FieldError> {
        let Some(Value::Array(items)) = &self.details else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                Some(FieldError {
                    field: item.get("field")?.as_str()?.to_owned(),
                    message: item
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                })
            })
            .collect()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "{status} {}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// Everything a call of this crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request (its error body, typed; boxed so
    /// that every `Result` of this crate stays small).
    #[error("the server refused: {0}")]
    Api(Box<ApiError>),
    /// The request did not complete (connection refused, timeout, ...).
    #[error("HTTP transport: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered something that is not what the contract says.
    #[error("unexpected answer (HTTP {status:?}): {message}")]
    Decode {
        /// The HTTP status, when the answer came over REST.
        status: Option<u16>,
        /// What was wrong.
        message: String,
    },
    /// A base URL or session URL that cannot be used.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The WebSocket failed (handshake, protocol).
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// A socket command was sent while the socket was not open.
    #[error("the connection is not open")]
    NotConnected,
    /// The socket closed before a command was confirmed; it may or may not
    /// have been applied.
    #[error("the connection closed before the command was confirmed")]
    Disconnected,
    /// A socket command was not confirmed in time.
    #[error("the command was not confirmed within {0:?}")]
    Timeout(Duration),
    /// The subscription ended for good: closed by the application, the
    /// session deleted, or a close after which reconnecting cannot help
    /// (4404, 1008; `code` and `reason` say which).
    #[error("the subscription ended: {reason} (close code {code:?})")]
    Closed {
        /// The close code, when the server closed the socket.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// The server's refusal, when this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The contract's error code, when the server refused.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.api().map(|e| &e.code)
    }
}
