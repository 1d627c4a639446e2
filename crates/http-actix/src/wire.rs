//! The WebSocket wire format of contract section 4: the message types, the
//! parser of client messages and the encoders of server messages. The hub
//! (which serializes each committed version once for every socket) and the
//! connection code (which answers one client) both speak it through here;
//! the fuzz target `fuzz/fuzz_targets/ws_client_message.rs` drives
//! [`parse_client_message`] directly.

use kairos_domain::{Command, Event, SessionId, SessionView};
use serde::Serialize;
use serde_json::{Number, Value};

use crate::command::CommandName;
use crate::dto::{WireEvent, WireView};
use crate::error::ApiError;

/// Frames and reassembled messages over this many bytes close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024;
/// The `type` of the message sent right after connecting.
pub const CONNECTED: &str = "CONNECTED";
/// The `type` of a full snapshot (after connecting, on `RECONNECT`, after lost messages).
pub const STATE_SYNC: &str = "STATE_SYNC";
/// The `type` of one committed version.
pub const STATE_UPDATE: &str = "STATE_UPDATE";
/// The `type` of a notable event (a timeout, a time warning, added time)
/// following its `STATE_UPDATE`.
pub const EVENT: &str = "EVENT";
/// The `type` of the message sent before closing for a deleted session.
pub const SESSION_DELETED: &str = "SESSION_DELETED";

/// A message from the client, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Clock-offset probe; `client_time_ms` is echoed.
    Ping {
        /// The client's clock, echoed in `PONG`.
        client_time_ms: Option<Number>,
    },
    /// Asks for a fresh `STATE_SYNC`.
    Reconnect,
    /// `SWITCH`, `PAUSE`, `RESUME` or `ADD_TIME`.
    Command {
        /// The domain command.
        command: Command,
        /// Optimistic lock: apply only at this version.
        expected_version: Option<u64>,
        /// Echoed in an `ERROR` answer.
        request_id: Option<Value>,
    },
}

/// A client message refused with `ERROR` (the socket stays open).
#[derive(Debug)]
pub struct Rejected {
    /// Why (always `VALIDATION_ERROR`).
    pub error: ApiError,
    /// The message's `request_id`, when it had a valid one.
    pub request_id: Option<Value>,
}

/// Parses a client message. The error is boxed: refusals are rare and an
/// [`ApiError`] is large, so the common path stays small.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, Box<Rejected>> {
    let reject =
        |error: ApiError, request_id: Option<Value>| Box::new(Rejected { error, request_id });
    let value: Value = serde_json::from_str(text).map_err(|e| {
        reject(
            ApiError::field("message", format!("is not valid JSON: {e}")),
            None,
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(reject(
            ApiError::field("message", "must be a JSON object"),
            None,
        ));
    };
    let request_id = match obj.get("request_id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return Err(reject(
                ApiError::field("request_id", "must be a string or a number"),
                None,
            ));
        }
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(reject(
            ApiError::field(
                "type",
                "is required: PING, RECONNECT, SWITCH, PAUSE, RESUME or ADD_TIME",
            ),
            request_id,
        ));
    };
    match kind {
        "PING" => match obj.get("client_time_ms") {
            None | Some(Value::Null) => Ok(ClientMessage::Ping {
                client_time_ms: None,
            }),
            Some(Value::Number(n)) => Ok(ClientMessage::Ping {
                client_time_ms: Some(n.clone()),
            }),
            Some(_) => Err(reject(
                ApiError::field("client_time_ms", "must be a number"),
                request_id,
            )),
        },
        "RECONNECT" => Ok(ClientMessage::Reconnect),
        _ => {
            let Some(name) = CommandName::from_ws(kind) else {
                return Err(reject(
                    ApiError::field(
                        "type",
                        "is not one of PING, RECONNECT, SWITCH, PAUSE, RESUME or ADD_TIME",
                    ),
                    request_id,
                ));
            };
            match name.parse(&value) {
                Ok((command, expected_version)) => Ok(ClientMessage::Command {
                    command,
                    expected_version,
                    request_id,
                }),
                Err(error) => Err(reject(error, request_id)),
            }
        }
    }
}

// Server messages. The envelope fields `sessionId` and `timestamp` are
// camelCase because the v2 format fixes them (contract, introduction).

#[derive(Serialize)]
struct Bare {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "sessionId")]
    session_id: SessionId,
    timestamp: i64,
}

#[derive(Serialize)]
struct StateMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "sessionId")]
    session_id: SessionId,
    timestamp: i64,
    state: WireView,
}

#[derive(Serialize)]
struct EventMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "sessionId")]
    session_id: SessionId,
    timestamp: i64,
    event: WireEvent,
}

#[derive(Serialize)]
struct Pong {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_time_ms: Option<Number>,
}

#[derive(Serialize)]
struct ErrorMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    /// (ext) The same details as the REST error body, e.g. the versions of a CONFLICT.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a Value>,
}

/// What is sent if a message cannot be encoded (it cannot happen with these
/// types: no maps with non-string keys, no failing `Serialize` impls).
const ENCODE_FAILED: &str =
    r#"{"type":"ERROR","code":"INTERNAL_ERROR","message":"the server could not encode a message"}"#;

fn encode(message: &impl Serialize) -> String {
    serde_json::to_string(message).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a WebSocket message failed to encode");
        ENCODE_FAILED.to_owned()
    })
}

/// `STATE_SYNC` or `STATE_UPDATE` for `view`.
pub fn state_message(
    kind: &'static str,
    session_id: SessionId,
    timestamp: i64,
    view: SessionView,
) -> String {
    encode(&StateMessage {
        kind,
        session_id,
        timestamp,
        state: WireView::from_view(view, None),
    })
}

/// `EVENT` for `event`.
pub fn event_message(session_id: SessionId, timestamp: i64, event: &Event) -> String {
    encode(&EventMessage {
        kind: EVENT,
        session_id,
        timestamp,
        event: WireEvent::from(event),
    })
}

/// `SESSION_DELETED`.
pub fn deleted_message(session_id: SessionId, timestamp: i64) -> String {
    encode(&Bare {
        kind: SESSION_DELETED,
        session_id,
        timestamp,
    })
}

/// `CONNECTED`.
pub fn connected_message(session_id: SessionId, timestamp: i64) -> String {
    encode(&Bare {
        kind: CONNECTED,
        session_id,
        timestamp,
    })
}

/// `PONG`, echoing the client's time when it sent one.
pub fn pong_message(timestamp: i64, client_time_ms: Option<Number>) -> String {
    encode(&Pong {
        kind: "PONG",
        timestamp,
        client_time_ms,
    })
}

/// `ERROR` for `error`, echoing the message's `request_id` when it had one.
pub fn error_message(error: &ApiError, request_id: Option<&Value>) -> String {
    encode(&ErrorMessage {
        kind: "ERROR",
        code: error.code.as_str(),
        message: &error.message,
        details: error.details.as_deref(),
        request_id,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::error::Code;
    use kairos_domain::ParticipantId;
    use serde_json::json;

    fn rejected(text: &str) -> Box<Rejected> {
        parse_client_message(text).unwrap_err()
    }

    #[test]
    fn pings_parse_with_or_without_a_client_time() {
        assert_eq!(
            parse_client_message(r#"{"type":"PING"}"#).unwrap(),
            ClientMessage::Ping {
                client_time_ms: None
            }
        );
        let ClientMessage::Ping { client_time_ms } =
            parse_client_message(r#"{"type":"PING","client_time_ms":1760970615000.5}"#).unwrap()
        else {
            panic!("not a ping");
        };
        let pong = encode(&Pong {
            kind: "PONG",
            timestamp: 7,
            client_time_ms,
        });
        assert_eq!(
            serde_json::from_str::<Value>(&pong).unwrap(),
            json!({"type": "PONG", "timestamp": 7, "client_time_ms": 1760970615000.5})
        );
        let bare = encode(&Pong {
            kind: "PONG",
            timestamp: 7,
            client_time_ms: None,
        });
        assert_eq!(bare, r#"{"type":"PONG","timestamp":7}"#);
        assert_eq!(
            rejected(r#"{"type":"PING","client_time_ms":"now"}"#)
                .error
                .message,
            "client_time_ms must be a number"
        );
    }

    #[test]
    fn commands_parse_into_domain_commands() {
        assert_eq!(
            parse_client_message(
                r#"{"type":"SWITCH","next_participant_id":"black","expected_version":4,"request_id":"r1"}"#
            )
            .unwrap(),
            ClientMessage::Command {
                command: Command::Switch {
                    next: Some(ParticipantId::parse("black").unwrap()),
                    lag_ms: None,
                },
                expected_version: Some(4),
                request_id: Some(json!("r1")),
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"PAUSE","request_id":9}"#).unwrap(),
            ClientMessage::Command {
                command: Command::Pause,
                expected_version: None,
                request_id: Some(json!(9)),
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"RESUME","sessionId":"ignored"}"#).unwrap(),
            ClientMessage::Command {
                command: Command::Resume,
                expected_version: None,
                request_id: None,
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"RECONNECT"}"#).unwrap(),
            ClientMessage::Reconnect
        );
        assert_eq!(
            parse_client_message(r#"{"type":"SWITCH","lag_ms":150}"#).unwrap(),
            ClientMessage::Command {
                command: Command::Switch {
                    next: None,
                    lag_ms: Some(150),
                },
                expected_version: None,
                request_id: None,
            }
        );
        assert_eq!(
            parse_client_message(
                r#"{"type":"ADD_TIME","group_id":"red","ms":120000,"reason":"arbiter","expected_version":2}"#
            )
            .unwrap(),
            ClientMessage::Command {
                command: Command::AddTime {
                    target: kairos_domain::AddTarget::Group(
                        kairos_domain::GroupId::parse("red").unwrap()
                    ),
                    ms: kairos_domain::AddMs::new(120_000).unwrap(),
                    reason: Some("arbiter".into()),
                },
                expected_version: Some(2),
                request_id: None,
            }
        );
    }

    #[test]
    fn bad_messages_are_validation_errors_that_echo_the_request_id() {
        for (text, message) in [
            ("not json", None),
            ("[1,2]", Some("message must be a JSON object")),
            (
                r#"{"request_id":"r"}"#,
                Some("type is required: PING, RECONNECT, SWITCH, PAUSE, RESUME or ADD_TIME"),
            ),
            (r#"{"type":"START","request_id":"r"}"#, None),
            (
                r#"{"type":"PAUSE","next_participant_id":"x","request_id":"r"}"#,
                Some("next_participant_id is only accepted by switch"),
            ),
            (
                r#"{"type":"SWITCH","expected_version":-1,"request_id":"r"}"#,
                Some("expected_version must be a non-negative integer"),
            ),
            (
                r#"{"type":"SWITCH","request_id":{"a":1}}"#,
                Some("request_id must be a string or a number"),
            ),
            (
                r#"{"type":"SWITCH","lag_ms":10001,"request_id":"r"}"#,
                Some("lag_ms must be an integer from 0 to 10000"),
            ),
            (
                r#"{"type":"ADD_TIME","participant_id":"white","ms":0,"request_id":"r"}"#,
                Some("ms must be an integer from 1 to 3600000"),
            ),
        ] {
            let r = rejected(text);
            assert_eq!(r.error.code, Code::ValidationError, "{text}");
            if let Some(message) = message {
                assert_eq!(r.error.message, message, "{text}");
            }
            if text.contains(r#""request_id":"r""#) {
                assert_eq!(r.request_id, Some(json!("r")), "{text}");
            }
        }
    }

    #[test]
    fn error_messages_carry_code_details_and_request_id() {
        let error = ApiError::new(
            Code::Conflict,
            "expected version 3, the session is at version 4",
        )
        .with_details(json!({"expected_version": 3, "actual_version": 4}));
        let text = encode(&ErrorMessage {
            kind: "ERROR",
            code: error.code.as_str(),
            message: &error.message,
            details: error.details.as_deref(),
            request_id: Some(&json!("r1")),
        });
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({
                "type": "ERROR", "code": "CONFLICT",
                "message": "expected version 3, the session is at version 4",
                "details": {"expected_version": 3, "actual_version": 4},
                "request_id": "r1"
            })
        );
    }

    #[test]
    fn envelopes_use_the_v2_field_names() {
        let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
        assert_eq!(
            deleted_message(id, 5),
            r#"{"type":"SESSION_DELETED","sessionId":"123e4567-e89b-12d3-a456-426614174000","timestamp":5}"#
        );
        let connected = encode(&Bare {
            kind: CONNECTED,
            session_id: id,
            timestamp: 6,
        });
        assert_eq!(
            connected,
            r#"{"type":"CONNECTED","sessionId":"123e4567-e89b-12d3-a456-426614174000","timestamp":6}"#
        );
    }
}
