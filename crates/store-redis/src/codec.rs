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
}
