//! How sessions and events are encoded in Redis values.
//!
//! A session's state is encoded on every commit and decoded on every load,
//! so its encoding is on the switch path twice. Decoding recognises every
//! encoding by its first byte (JSON objects start with `{`, which no
//! MessagePack struct encoding does), so changing [`StateCodec::DEFAULT`]
//! never strands stored sessions. Events in the outbox are JSON: the audit
//! worker and humans with `redis-cli` read them.

use kairos_domain::{Event, Session, StoreError};

/// An encoding of [`Session`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCodec {
    /// `serde_json`: readable with `redis-cli`.
    Json,
    /// MessagePack with field names (`rmp_serde::to_vec_named`): binary, and
    /// still tolerant of reordered fields.
    MessagePack,
}

impl StateCodec {
    /// The encoding new writes use: the faster on encode + decode of the two,
    /// measured by `benches/encoding.rs` (figures in the crate documentation).
    pub const DEFAULT: Self = Self::MessagePack;

    /// Encodes a session.
    pub fn encode(self, state: &Session) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Json => serde_json::to_vec(state)
                .map_err(|e| StoreError::Other(format!("encoding session as JSON: {e}"))),
            Self::MessagePack => rmp_serde::to_vec_named(state)
                .map_err(|e| StoreError::Other(format!("encoding session as MessagePack: {e}"))),
        }
    }

    /// Decodes a session in any encoding this type writes.
    pub fn decode(bytes: &[u8]) -> Result<Session, StoreError> {
        match bytes.first() {
            Some(b'{') => serde_json::from_slice(bytes)
                .map_err(|e| StoreError::Other(format!("corrupt session (JSON): {e}"))),
            Some(_) => rmp_serde::from_slice(bytes)
                .map_err(|e| StoreError::Other(format!("corrupt session (MessagePack): {e}"))),
            None => Err(StoreError::Other("corrupt session: empty value".into())),
        }
    }
}

/// Encodes an event for the outbox stream.
pub(crate) fn encode_event(event: &Event) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(event).map_err(|e| StoreError::Other(format!("encoding event: {e}")))
}

/// Decodes an outbox entry's event.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Other(format!("corrupt outbox event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_domain::{SessionConfig, SessionId, machine};

    fn session() -> Session {
        let config = SessionConfig::parse(&serde_json::json!({
            "sync_mode": "per_group",
            "participants": [
                {"participant_id": "a", "group_id": "red"},
                {"participant_id": "b", "group_id": "blue"}
            ],
            "groups": [{"group_id": "red", "total_time_ms": 60000},
                       {"group_id": "blue", "total_time_ms": 60000}],
            "action_on_timeout": {"type": "auto_action", "action": "fold", "penalty": {"ms": 5}},
            "metadata": {"room": "x", "nested": [1, 2.5, null, true]}
        }))
        .expect("a valid config");
        let id = SessionId::from_uuid(uuid::Uuid::from_u128(7));
        machine::create(config, id, Some("owner".into()), 1_700_000_000_000).0
    }

    #[test]
    fn both_encodings_round_trip_and_are_told_apart() {
        let s = session();
        for codec in [StateCodec::Json, StateCodec::MessagePack] {
            let bytes = codec.encode(&s).expect("encodes");
            assert_eq!(StateCodec::decode(&bytes).expect("decodes"), s, "{codec:?}");
        }
        assert!(matches!(StateCodec::decode(b""), Err(StoreError::Other(_))));
        assert!(matches!(
            StateCodec::decode(b"{nope"),
            Err(StoreError::Other(_))
        ));
        assert!(matches!(
            StateCodec::decode(&[0xc1]),
            Err(StoreError::Other(_))
        ));
    }

    /// A running `per_group` session as the previous release stored it
    /// (before contract section 8): its JSON ...
    const OLD_JSON: &str = r#"{"id":"00000000-0000-0000-0000-000000000007","sync_mode":"per_group","status":"running","version":2,"participants":[{"id":"a","index":0,"group_id":"red","total_time_ms":60000,"time_used_ms":0,"cycle_count":1,"has_expired":false},{"id":"b","index":1,"group_id":"blue","total_time_ms":60000,"time_used_ms":0,"cycle_count":0,"has_expired":false}],"groups":[{"id":"red","index":0,"total_time_ms":60000,"time_used_ms":0,"has_expired":false,"last_member":0},{"id":"blue","index":1,"total_time_ms":60000,"time_used_ms":0,"has_expired":false,"last_member":null}],"active":0,"active_group":0,"total_time_ms":null,"time_per_cycle_ms":null,"increment_ms":0,"max_time_ms":null,"action_on_timeout":{"kind":"auto_action","action":"fold","extra":{"penalty":{"ms":5}}},"auto_advance":false,"metadata":{"nested":[1,2.5,null,true],"room":"x"},"owner":"owner","elapsed_ms":0,"cycle_used_ms":0,"segment_started_at_ms":1700000001000,"cycle_started_at_ms":1700000001000,"session_started_at_ms":1700000001000,"session_completed_at_ms":null,"created_at_ms":1700000000000,"updated_at_ms":1700000001000}"#;

    /// ... and its MessagePack with field names, as [`StateCodec::MessagePack`] wrote it.
    const OLD_MESSAGEPACK_HEX: &str = concat!(
        "de0018a26964c41000000000000000000000000000000007a973796e635f6d6f6465a97065725f67726f7570a6737461",
        "747573a772756e6e696e67a776657273696f6e02ac7061727469636970616e74739287a26964a161a5696e64657800a8",
        "67726f75705f6964a3726564ad746f74616c5f74696d655f6d73cdea60ac74696d655f757365645f6d7300ab6379636c",
        "655f636f756e7401ab6861735f65787069726564c287a26964a162a5696e64657801a867726f75705f6964a4626c7565",
        "ad746f74616c5f74696d655f6d73cdea60ac74696d655f757365645f6d7300ab6379636c655f636f756e7400ab686173",
        "5f65787069726564c2a667726f7570739286a26964a3726564a5696e64657800ad746f74616c5f74696d655f6d73cdea",
        "60ac74696d655f757365645f6d7300ab6861735f65787069726564c2ab6c6173745f6d656d6265720086a26964a4626c",
        "7565a5696e64657801ad746f74616c5f74696d655f6d73cdea60ac74696d655f757365645f6d7300ab6861735f657870",
        "69726564c2ab6c6173745f6d656d626572c0a661637469766500ac6163746976655f67726f757000ad746f74616c5f74",
        "696d655f6d73c0b174696d655f7065725f6379636c655f6d73c0ac696e6372656d656e745f6d7300ab6d61785f74696d",
        "655f6d73c0b1616374696f6e5f6f6e5f74696d656f757483a46b696e64ab6175746f5f616374696f6ea6616374696f6e",
        "a4666f6c64a5657874726181a770656e616c747981a26d7305ac6175746f5f616476616e6365c2a86d65746164617461",
        "82a66e65737465649401cb4004000000000000c0c3a4726f6f6da178a56f776e6572a56f776e6572aa656c6170736564",
        "5f6d7300ad6379636c655f757365645f6d7300b57365676d656e745f737461727465645f61745f6d73cf0000018bcfe5",
        "6be8b36379636c655f737461727465645f61745f6d73cf0000018bcfe56be8b573657373696f6e5f737461727465645f",
        "61745f6d73cf0000018bcfe56be8b773657373696f6e5f636f6d706c657465645f61745f6d73c0ad637265617465645f",
        "61745f6d73cf0000018bcfe56800ad757064617465645f61745f6d73cf0000018bcfe56be8",
    );

    fn old_messagepack() -> Vec<u8> {
        (0..OLD_MESSAGEPACK_HEX.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&OLD_MESSAGEPACK_HEX[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn sessions_stored_by_the_previous_release_load_and_behave_as_before() {
        // Today's session, started at the same instant, uses none of the new rules.
        let now = machine::decide(
            &session(),
            &kairos_domain::Command::Start,
            None,
            1_700_000_001_000,
        )
        .expect("starts")
        .state;
        for (codec, bytes) in [
            ("json", OLD_JSON.as_bytes().to_vec()),
            ("messagepack", old_messagepack()),
        ] {
            let old = StateCodec::decode(&bytes).expect("an old session loads");
            assert_eq!(old, now, "{codec}");
            let t = 1_700_000_030_000;
            assert_eq!(
                kairos_domain::view::view(&old, t),
                kairos_domain::view::view(&now, t)
            );
            let switch = kairos_domain::Command::Switch {
                next: None,
                lag_ms: None,
            };
            assert_eq!(
                machine::decide(&old, &switch, None, t),
                machine::decide(&now, &switch, None, t),
                "{codec}"
            );
            // Re-encoded today, it decodes to the same session.
            for c in [StateCodec::Json, StateCodec::MessagePack] {
                let again = StateCodec::decode(&c.encode(&old).expect("encodes")).expect("decodes");
                assert_eq!(again, old);
            }
        }
    }
}
