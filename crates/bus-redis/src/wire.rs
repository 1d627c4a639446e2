//! What a bus message looks like on Redis: the channel it goes to and the
//! bytes it carries. Every instance of a deployment reads what every other
//! writes, so this format is a contract between versions during a rolling
//! upgrade: fields may be added, never renamed.
//!
//! The bytes are MessagePack with field names (`rmp_serde::to_vec_named`):
//! a map `{kind, body}`, where `body` is `{state, events, at_ms}` for
//! `updated` and `{session_id, at_ms}` for `deleted`. Names rather than
//! positions keep it tolerant: a field this version does not know is
//! skipped. JSON from older versions, which starts with `{` where
//! MessagePack maps never do, is still read.
//!
//! Every publish encodes a whole session state and every watching instance
//! decodes it, so this sits on the switch and fan-out paths: as JSON it took
//! 4.9% of the switch path's CPU (encode) and 2.4% of a fan-out instance's
//! (decode).

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
///
/// The tag comes first and the fields in a map beside it (`{kind, body}`),
/// so that the decoder, reading the tag first, decodes the body straight
/// into its type; with the tag among the fields (as the JSON of older
/// versions has it) serde first copies the whole message into a generic
/// tree to look for the tag, which doubled the decoding time.
#[derive(Serialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
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
    /// A presence event (not a state change). An instance of a version
    /// before it cannot decode it: it counts the message and sends its
    /// subscribers `Lagged`, which costs them one resynchronisation.
    Event {
        event: &'a Event,
    },
}

/// The serialised form, owned on the way in.
// Both incoming forms only live for the one `match` in `decode`; boxing the
// state would cost an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
enum Incoming {
    Updated(Updated),
    Deleted(Deleted),
    Event(EventBody),
}

/// What versions before MessagePack published, as JSON: the same bodies with
/// the tag among their fields.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum IncomingJson {
    Updated(Updated),
    Deleted(Deleted),
}

/// The body of an update.
#[derive(Deserialize)]
struct Updated {
    state: Session,
    events: Vec<Event>,
    at_ms: i64,
}

/// The body of a presence event.
#[derive(Deserialize)]
struct EventBody {
    event: Event,
}

/// The body of a deletion.
#[derive(Deserialize)]
struct Deleted {
    session_id: SessionId,
    at_ms: i64,
}

/// Why a message could not be put on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EncodeError {
    /// `Lagged` is a local signal from the bus to its subscribers, never published.
    #[error("Lagged is not a publishable message")]
    NotPublishable,
    /// rmp_serde refused the value (it cannot for the domain types; kept as
    /// an error rather than a panic).
    #[error("serialisation failed: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
}

/// Why received bytes are not a message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Nothing was received.
    #[error("empty message")]
    Empty,
    /// Bytes that look like MessagePack but are not a message.
    #[error("malformed MessagePack message: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    /// Bytes that look like JSON (an instance of an older version) but are
    /// not a message.
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
}

/// The session a message is about and its bytes: MessagePack with field
/// names (`rmp_serde::to_vec_named`), so that a field added by a newer
/// version is skipped by an older one rather than misread.
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
        BusMessage::Event { event } => (event.session_id, Outgoing::Event { event }),
        BusMessage::Lagged => return Err(EncodeError::NotPublishable),
    };
    Ok((id, write(&outgoing)?))
}

/// An update's bytes, exactly as [`encode`] writes
/// [`BusMessage::Updated`], from borrowed parts (the service encodes it
/// for a store that publishes inside its commit).
pub(crate) fn encode_update(
    state: &Session,
    events: &[Event],
    at_ms: i64,
) -> Result<Vec<u8>, EncodeError> {
    write(&Outgoing::Updated {
        state,
        events,
        at_ms,
    })
}

/// The bytes of a message: MessagePack with field names.
fn write(outgoing: &Outgoing<'_>) -> Result<Vec<u8>, EncodeError> {
    // Sized for a small session at once (a two-clock update is about 850
    // bytes) rather than grown by doubling from nothing.
    let mut bytes = Vec::with_capacity(INITIAL_CAPACITY);
    rmp_serde::encode::write_named(&mut bytes, outgoing)?;
    Ok(bytes)
}

/// Where an encoded message starts: one allocation for the messages of
/// small sessions.
const INITIAL_CAPACITY: usize = 1024;

/// The message inside received bytes.
///
/// Versions before MessagePack published JSON. A JSON message starts with
/// `{`, which no MessagePack map does (0x7b would be a bare integer), so
/// both are read during a rolling upgrade from such a version.
pub(crate) fn decode(bytes: &[u8]) -> Result<BusMessage, DecodeError> {
    let incoming = match bytes.first() {
        None => return Err(DecodeError::Empty),
        Some(b'{') => match serde_json::from_slice(bytes)? {
            IncomingJson::Updated(updated) => Incoming::Updated(updated),
            IncomingJson::Deleted(deleted) => Incoming::Deleted(deleted),
        },
        Some(_) => rmp_serde::from_slice(bytes)?,
    };
    Ok(match incoming {
        Incoming::Updated(Updated {
            state,
            events,
            at_ms,
        }) => BusMessage::Updated {
            state: Arc::new(state),
            events,
            at_ms,
        },
        Incoming::Deleted(Deleted { session_id, at_ms }) => {
            BusMessage::Deleted { session_id, at_ms }
        }
        Incoming::Event(EventBody { event }) => BusMessage::Event { event },
    })
}

#[cfg(test)]
mod tests {
    use kairos_domain::{Command, EventType, SessionConfig, Status, machine};

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

    /// A started session switched once, with metadata of every JSON kind, and
    /// the events of that switch: what a switch publishes.
    fn switched() -> (Session, Vec<Event>) {
        let config = SessionConfig::parse(&serde_json::json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "white", "total_time_ms": 60000},
                {"participant_id": "black", "total_time_ms": 60000}
            ],
            "increment_ms": 2000,
            "metadata": {"room": "blitz", "nested": [1, -2, 2.5, null, true]}
        }))
        .expect("a valid config");
        let (created, _) = machine::create(config, id(), Some("alice".into()), 1_000);
        let started = machine::decide(&created, &Command::Start, None, 2_000)
            .expect("a pending session starts")
            .state;
        let switched = machine::decide(
            &started,
            &Command::Switch {
                next: None,
                lag_ms: None,
            },
            Some(2),
            2_750,
        )
        .expect("a running session switches");
        (switched.state, switched.events)
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
    fn updates_round_trip_in_messagepack_with_state_events_and_instant() {
        let (state, events) = switched();
        let message = BusMessage::Updated {
            state: Arc::new(state),
            events,
            at_ms: 2_750,
        };

        let (session_id, bytes) = encode(&message).expect("encodable");
        let decoded = decode(&bytes).expect("decodable");

        assert_eq!(session_id, id());
        // A MessagePack map (fixmap or map16), not JSON.
        assert!(matches!(bytes[0], 0x80..=0x8f | 0xde), "{:#x}", bytes[0]);
        assert_eq!(decoded, message);
        let BusMessage::Updated {
            state,
            events,
            at_ms,
        } = decoded
        else {
            panic!("an update decodes as an update: {decoded:?}");
        };
        assert_eq!(at_ms, 2_750);
        assert_eq!(state.id, id());
        assert_eq!(state.version, 3);
        assert_eq!(state.status, Status::Running);
        assert_eq!(state.owner.as_deref(), Some("alice"));
        assert_eq!(state.active, Some(1));
        assert_eq!(
            state.metadata["nested"],
            serde_json::json!([1, -2, 2.5, null, true])
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, EventType::CycleSwitched);
        assert_eq!(events[0].version, 3);
        assert_eq!(events[0].time_elapsed_ms, Some(750));
    }

    #[test]
    fn an_update_encoded_from_its_parts_is_the_published_message() {
        let (state, events) = switched();
        let message = BusMessage::Updated {
            state: Arc::new(state.clone()),
            events: events.clone(),
            at_ms: 2_750,
        };

        let parts = encode_update(&state, &events, 2_750).expect("encodable");

        assert_eq!(parts, encode(&message).expect("encodable").1);
        assert_eq!(decode(&parts).expect("decodable"), message);
    }

    #[test]
    fn presence_events_round_trip() {
        let event = kairos_domain::presence::presence_event(
            id(),
            EventType::PresenceJoined,
            "bob",
            Some("white".parse().expect("a participant id")),
            "conn-1",
            1_234,
        );
        let message = BusMessage::Event { event };
        let (session, bytes) = encode(&message).expect("encodes");
        assert_eq!(session, id());
        assert_eq!(decode(&bytes).expect("decodes"), message);
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
    fn fields_travel_by_name() {
        let mut state = session(id());
        state.version = 7;
        let (_, bytes) = encode(&BusMessage::Updated {
            state: Arc::new(state),
            events: vec![],
            at_ms: 0,
        })
        .expect("encodable");

        // A reader that knows a few of the fields finds them by name.
        #[derive(Deserialize)]
        struct Named {
            kind: String,
            body: NamedBody,
        }
        #[derive(Deserialize)]
        struct NamedBody {
            state: NamedState,
            at_ms: i64,
        }
        #[derive(Deserialize)]
        struct NamedState {
            version: u64,
        }
        let named: Named = rmp_serde::from_slice(&bytes).expect("a map with these names");

        assert_eq!(named.kind, "updated");
        assert_eq!(named.body.state.version, 7);
        assert_eq!(named.body.at_ms, 0);
    }

    /// What a newer version may publish: the same message with a field this
    /// version does not know yet, in the envelope and in the body.
    #[derive(Serialize)]
    struct Newer<'a> {
        kind: &'a str,
        body: NewerBody<'a>,
        added_later: u32,
    }
    #[derive(Serialize)]
    struct NewerBody<'a> {
        state: &'a Session,
        added_later: (&'a str, u32),
        events: &'a [Event],
        at_ms: i64,
    }

    #[test]
    fn an_unknown_field_is_ignored() {
        let (state, events) = switched();
        let bytes = rmp_serde::to_vec_named(&Newer {
            kind: "updated",
            body: NewerBody {
                state: &state,
                added_later: ("news", 3),
                events: &events,
                at_ms: 9,
            },
            added_later: 4,
        })
        .expect("encodable");

        let decoded = decode(&bytes).expect("decodable despite the extra field");

        assert_eq!(
            decoded,
            BusMessage::Updated {
                state: Arc::new(state),
                events,
                at_ms: 9,
            }
        );
    }

    #[test]
    fn json_from_an_older_version_is_still_read() {
        let (state, events) = switched();
        // As those versions wrote it: the tag among the fields.
        let json = serde_json::to_vec(&serde_json::json!({
            "kind": "updated",
            "state": state,
            "events": events,
            "at_ms": 3,
        }))
        .expect("encodable");

        assert_eq!(
            decode(&json).expect("decodable"),
            BusMessage::Updated {
                state: Arc::new(state),
                events,
                at_ms: 3,
            }
        );
    }

    #[test]
    fn lagged_is_never_published_and_garbage_is_refused() {
        assert!(matches!(
            encode(&BusMessage::Lagged),
            Err(EncodeError::NotPublishable)
        ));
        assert!(matches!(decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"{\"kind\":\"exploded\"}"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(decode(b"\xc1"), Err(DecodeError::MessagePack(_))));
        let unknown_kind =
            rmp_serde::to_vec_named(&serde_json::json!({"kind": "exploded"})).expect("encodable");
        assert!(matches!(
            decode(&unknown_kind),
            Err(DecodeError::MessagePack(_))
        ));
    }
}
