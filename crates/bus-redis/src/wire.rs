//! What a bus message looks like on Redis: the channel it goes to and the
//! bytes it carries. Every instance of a deployment reads what every other
//! writes, so this format is a contract between versions during a rolling
//! upgrade: fields may be added, never renamed.

use std::sync::Arc;

use kairos_domain::{BusMessage, Event, Session, SessionId};
use serde::{Deserialize, Serialize};

/// Channel names of one deployment: `<prefix>:{<session id>}:bus`.
///
/// The braces make the session id the Redis Cluster hash tag, the same one
/// the store uses for the session's keys, so a session's sharded channel lives
/// on the shard that owns its state.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    /// `<prefix>:{`, precomputed because every received message is matched against it.
    head: String,
}

/// What follows the session id in a channel name.
const TAIL: &str = "}:bus";

impl Channels {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            head: format!("{prefix}:{{"),
        }
    }

    /// The channel of a session.
    pub(crate) fn name(&self, id: SessionId) -> String {
        format!("{}{id}{TAIL}", self.head)
    }

    /// The session a channel belongs to, or `None` for a channel that is not
    /// one of ours (nothing else is subscribed on our connection, so that
    /// would be a bug worth a warning).
    pub(crate) fn session_of(&self, channel: &str) -> Option<SessionId> {
        channel
            .strip_prefix(&self.head)?
            .strip_suffix(TAIL)?
            .parse()
            .ok()
    }
}

/// The serialised form, borrowed on the way out so that publishing copies
/// nothing before serde writes the bytes.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Outgoing<'a> {
    Updated {
        state: &'a Session,
        events: &'a [Event],
        at_ms: i64,
    },
    Deleted {
        session_id: SessionId,
        at_ms: i64,
    },
}

/// The serialised form, owned on the way in.
// It only lives for the one `match` in `decode`; boxing the state would cost
// an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Incoming {
    Updated {
        state: Session,
        events: Vec<Event>,
        at_ms: i64,
    },
    Deleted {
        session_id: SessionId,
        at_ms: i64,
    },
}

/// Why a message could not be put on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    /// `Lagged` is a local signal from the bus to its subscribers, never published.
    #[error("Lagged is not a publishable message")]
    NotPublishable,
    /// serde_json refused the value (it cannot for the domain types, which
    /// have string map keys only; kept as an error rather than a panic).
    #[error("serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// The session a message is about and its bytes.
pub(crate) fn encode(message: &BusMessage) -> Result<(SessionId, Vec<u8>), EncodeError> {
    let (id, outgoing) = match message {
        BusMessage::Updated {
            state,
            events,
            at_ms,
        } => (
            state.id,
            Outgoing::Updated {
                state,
                events,
                at_ms: *at_ms,
            },
        ),
        BusMessage::Deleted { session_id, at_ms } => (
            *session_id,
            Outgoing::Deleted {
                session_id: *session_id,
                at_ms: *at_ms,
            },
        ),
        BusMessage::Lagged => return Err(EncodeError::NotPublishable),
    };
    Ok((id, serde_json::to_vec(&outgoing)?))
}

/// The message inside received bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<BusMessage, serde_json::Error> {
    Ok(match serde_json::from_slice(bytes)? {
        Incoming::Updated {
            state,
            events,
            at_ms,
        } => BusMessage::Updated {
            state: Arc::new(state),
            events,
            at_ms,
        },
        Incoming::Deleted { session_id, at_ms } => BusMessage::Deleted { session_id, at_ms },
    })
}

#[cfg(test)]
mod tests {
    use kairos_domain::{SessionConfig, machine};

    use super::*;

    fn session(id: SessionId) -> Session {
        let config = SessionConfig::parse(&serde_json::json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "white", "total_time_ms": 60000},
                {"participant_id": "black", "total_time_ms": 60000}
            ]
        }))
        .expect("a valid config");
        machine::create(config, id, None, 1_000).0
    }

    fn id() -> SessionId {
        "123e4567-e89b-12d3-a456-426614174000"
            .parse()
            .expect("a valid id")
    }

    #[test]
    fn channel_names_carry_the_session_as_hash_tag_and_parse_back() {
        let channels = Channels::new("kairos");
        let name = channels.name(id());
        assert_eq!(name, "kairos:{123e4567-e89b-12d3-a456-426614174000}:bus");
        assert_eq!(channels.session_of(&name), Some(id()));
        assert_eq!(channels.session_of("other:{x}:bus"), None);
        assert_eq!(channels.session_of("kairos:{not-a-uuid}:bus"), None);
    }

    #[test]
    fn updates_round_trip_with_state_events_and_instant() {
        let (state, created) = {
            let config = SessionConfig::parse(&serde_json::json!({
                "sync_mode": "per_participant",
                "participants": [{"participant_id": "a", "total_time_ms": 1000}]
            }))
            .expect("a valid config");
            machine::create(config, id(), None, 5)
        };
        let message = BusMessage::Updated {
            state: Arc::new(state),
            events: vec![created],
            at_ms: 5,
        };
        let (session_id, bytes) = encode(&message).expect("encodable");
        assert_eq!(session_id, id());
        assert_eq!(decode(&bytes).expect("decodable"), message);
    }

    #[test]
    fn deletions_round_trip() {
        let message = BusMessage::Deleted {
            session_id: id(),
            at_ms: 42,
        };
        let (session_id, bytes) = encode(&message).expect("encodable");
        assert_eq!(session_id, id());
        assert_eq!(decode(&bytes).expect("decodable"), message);
    }

    #[test]
    fn lagged_is_never_published_and_garbage_is_refused() {
        assert!(matches!(
            encode(&BusMessage::Lagged),
            Err(EncodeError::NotPublishable)
        ));
        assert!(decode(b"{\"kind\":\"exploded\"}").is_err());
        assert!(decode(b"\xff").is_err());
        // A state is carried whole: the version travels inside it.
        let mut state = session(id());
        state.version = 7;
        let (_, bytes) = encode(&BusMessage::Updated {
            state: Arc::new(state),
            events: vec![],
            at_ms: 0,
        })
        .expect("encodable");
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(json["state"]["version"], 7);
    }
}
