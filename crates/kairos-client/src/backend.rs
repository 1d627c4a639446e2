//! The wire types of contract section 9, the app's backend and the people
//! in a session: webhook endpoints and their delivery log, and presence.
//! Tolerant of fields they do not know, like the rest of [`crate::types`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWebhook {
    /// Where events are POSTed: `https://` (or `http://` where the server
    /// allows it), not a private address unless the server allows it.
    pub url: String,
    /// The event types the endpoint wants; left out, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<String>>,
    /// Free text for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl NewWebhook {
    /// An endpoint at `url` that wants every event type.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            event_types: None,
            description: None,
        }
    }

    /// Only these event types (`session_expired`, `presence_left`, ...).
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// A description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }
}

/// A webhook endpoint as the server returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id.
    pub webhook_id: Uuid,
    /// Where events go.
    pub url: String,
    /// The event types it wants; `None`: all.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// The operator's description.
    #[serde(default)]
    pub description: Option<String>,
    /// The signing secret (`whsec_...`): only in the answer to the create
    /// call; verify deliveries with [`crate::WebhookVerifier::new`].
    #[serde(default)]
    pub secret: Option<String>,
    /// When it was created, ms since the epoch.
    pub created_at_ms: i64,
    /// Set once the endpoint answered `410 Gone` or ran out of retries: the
    /// server sends it nothing more.
    #[serde(default)]
    pub disabled: bool,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One attempt to deliver an event (`GET /v1/webhooks/{id}/deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The event (and the `webhook-id` header, the same on every retry).
    pub event_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's HTTP status, if it answered.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// Why the attempt failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// When it was sent, ms since the epoch.
    pub sent_at_ms: i64,
    /// How long the receiver took, ms.
    pub latency_ms: i64,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who is connected to a session, over every instance
/// (`GET /v1/sessions/{id}/presence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Open WebSocket connections.
    pub connections: u64,
    /// The users behind them.
    #[serde(default)]
    pub users: Vec<PresenceUser>,
}

/// One user connected to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceUser {
    /// The token's `sub` (or the `?user=` parameter with auth off; else `anonymous`).
    pub sub: String,
    /// The participant the user plays as, if named.
    #[serde(default)]
    pub participant_id: Option<String>,
    /// Their open connections.
    pub connections: u64,
    /// Since when they are connected, ms since the epoch.
    pub since_ms: i64,
}

/// The body of `POST /v1/sessions/{id}/add_time` (contract section 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddTime {
    /// The participant whose bank grows (or name a group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    /// The group whose bank grows (`per_group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// How much, in ms.
    pub ms: i64,
    /// Why, for the event's `metadata.reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version the caller saw (409 if it changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_webhook_leaves_out_what_is_not_set() {
        assert_eq!(
            serde_json::to_value(NewWebhook::new("https://example.com/hook")).unwrap(),
            json!({"url": "https://example.com/hook"})
        );
        assert_eq!(
            serde_json::to_value(
                NewWebhook::new("https://example.com/hook")
                    .event_types(["session_expired"])
                    .description("results")
            )
            .unwrap(),
            json!({"url": "https://example.com/hook", "event_types": ["session_expired"],
                   "description": "results"})
        );
    }

    #[test]
    fn a_listed_webhook_has_no_secret_and_keeps_unknown_fields() {
        let hook: Webhook = serde_json::from_value(json!({
            "webhook_id": "123e4567-e89b-12d3-a456-426614174000",
            "url": "https://example.com/hook", "event_types": null,
            "created_at_ms": 1760970615000i64, "disabled": true, "disabled_reason": "410 Gone"
        }))
        .unwrap();
        assert_eq!(hook.secret, None);
        assert!(hook.disabled);
        assert_eq!(hook.extra["disabled_reason"], json!("410 Gone"));
    }

    #[test]
    fn presence_and_deliveries_deserialize() {
        let p: Presence = serde_json::from_value(json!({"connections": 3, "users": [
            {"sub": "alice", "participant_id": "white", "connections": 2, "since_ms": 5},
            {"sub": "anonymous", "participant_id": null, "connections": 1, "since_ms": 7}]}))
        .unwrap();
        assert_eq!(p.connections, 3);
        assert_eq!(p.users[1].participant_id, None);
        let d: Delivery = serde_json::from_value(json!({
            "event_id": "123e4567-e89b-12d3-a456-426614174000", "attempt": 2,
            "status_code": 503, "error": "503 Service Unavailable", "sent_at_ms": 9, "latency_ms": 4}))
        .unwrap();
        assert_eq!((d.attempt, d.status_code), (2, Some(503)));
    }
}
