//! Fuzz target: any text a WebSocket client may send, through the socket's
//! message parser (`http_actix::wire::parse_client_message`), and what the
//! socket would answer to a refusal (`http_actix::wire::error_message`).
//!
//! Only what reaches the parser is tried: UTF-8 text (other frames close the
//! socket first) of at most `MAX_MESSAGE_BYTES`. The parser must never
//! panic; what it accepts must be a JSON object whose `type` names what it
//! returned; what it refuses must become an `ERROR` message with code
//! `VALIDATION_ERROR` that echoes a valid `request_id`.

#![no_main]

use http_actix::wire::{ClientMessage, MAX_MESSAGE_BYTES, error_message, parse_client_message};
use kairos_domain::Command;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str);
    match parse_client_message(text) {
        Ok(ClientMessage::Command {
            command,
            expected_version,
            ..
        }) => {
            let wanted = match &command {
                Command::Switch { lag_ms, .. } => {
                    // Only a lag in the contract's range gets through.
                    assert!(
                        lag_ms.is_none_or(|l| kairos_domain::config::LAG_RANGE_MS.contains(&l))
                    );
                    "SWITCH"
                }
                Command::Pause => "PAUSE",
                Command::Resume => "RESUME",
                Command::AddTime { ms, reason, .. } => {
                    assert!(kairos_domain::config::ADD_TIME_RANGE_MS.contains(&ms.get()));
                    assert!(reason.as_ref().is_none_or(|r| r.chars().count() <= 200));
                    "ADD_TIME"
                }
                other => panic!("a client message became {other:?}"),
            };
            assert_eq!(kind, Some(wanted));
            let sent = parsed.as_ref().and_then(|v| v.get("expected_version"));
            assert_eq!(expected_version, sent.and_then(Value::as_u64));
        }
        Ok(ClientMessage::Ping { .. } | ClientMessage::Reconnect) => {
            assert!(matches!(kind, Some("PING" | "RECONNECT")), "{kind:?}")
        }
        Err(rejected) => {
            let error = error_message(&rejected.error, rejected.request_id.as_ref());
            let error: Value = serde_json::from_str(&error).expect("the ERROR text is JSON");
            assert_eq!(error["type"], "ERROR");
            assert_eq!(error["code"], "VALIDATION_ERROR");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
            // A string or number request_id is echoed, anything else is not.
            let sent = parsed.as_ref().and_then(|v| v.get("request_id"));
            let echoed = error.get("request_id");
            match sent {
                Some(Value::Number(n)) if n.is_f64() => {
                    // serde_json's default float parser may land one ULP
                    // off on the way back in: compare floats loosely.
                    let (a, b) = (n.as_f64(), echoed.and_then(Value::as_f64));
                    let close = a
                        .zip(b)
                        .is_some_and(|(a, b)| (a - b).abs() <= a.abs() * 1e-15);
                    assert!(close, "{a:?} echoed as {b:?}");
                }
                Some(id @ (Value::String(_) | Value::Number(_))) => assert_eq!(echoed, Some(id)),
                _ => assert_eq!(echoed, None),
            }
        }
    }
});
