//! Events: what happened to a session, for the audit trail and `EVENT` messages
//! (contract section 5).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{GroupId, ParticipantId, SessionId};

/// The kinds of event of contract section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The session was created.
    SessionCreated,
    /// The session was started.
    SessionStarted,
    /// A participant ended their cycle (switch).
    CycleSwitched,
    /// The session was paused (by a command, or by a timeout without `auto_advance`).
    SessionPaused,
    /// The session was resumed.
    SessionResumed,
    /// A participant's (or group's) bank ran out.
    ParticipantExpired,
    /// A `per_cycle` cycle ran out.
    CycleTimeout,
    /// The session was completed.
    SessionCompleted,
    /// The session was cancelled.
    SessionCancelled,
    /// Time ran out and the session ended.
    SessionExpired,
    /// The running clock reached a `warnings_ms` threshold (contract section 8).
    TimeWarning,
    /// An owner or admin added time to a bank (contract section 8).
    TimeAdded,
    /// A participant joined a live session (contract section 9).
    ParticipantJoined,
    /// A participant left a live session (contract section 9).
    ParticipantLeft,
    /// A user's first connection to the session (contract section 9).
    /// Not a state change: no version, not in the audit history.
    PresenceJoined,
    /// A user's last connection closed and they did not come back within the
    /// leave delay (contract section 9). Not a state change.
    PresenceLeft,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionCreated => "session_created",
            Self::SessionStarted => "session_started",
            Self::CycleSwitched => "cycle_switched",
            Self::SessionPaused => "session_paused",
            Self::SessionResumed => "session_resumed",
            Self::ParticipantExpired => "participant_expired",
            Self::CycleTimeout => "cycle_timeout",
            Self::SessionCompleted => "session_completed",
            Self::SessionCancelled => "session_cancelled",
            Self::SessionExpired => "session_expired",
            Self::TimeWarning => "time_warning",
            Self::TimeAdded => "time_added",
            Self::ParticipantJoined => "participant_joined",
            Self::ParticipantLeft => "participant_left",
            Self::PresenceJoined => "presence_joined",
            Self::PresenceLeft => "presence_left",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::SessionCreated,
            Self::SessionStarted,
            Self::CycleSwitched,
            Self::SessionPaused,
            Self::SessionResumed,
            Self::ParticipantExpired,
            Self::CycleTimeout,
            Self::SessionCompleted,
            Self::SessionCancelled,
            Self::SessionExpired,
            Self::TimeWarning,
            Self::TimeAdded,
            Self::ParticipantJoined,
            Self::ParticipantLeft,
            Self::PresenceJoined,
            Self::PresenceLeft,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// Timeouts and expiries are the notable events sent as `EVENT` messages.
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Self::ParticipantExpired | Self::CycleTimeout | Self::SessionExpired
        )
    }

    /// The events sent to subscribers as `EVENT` messages: the timeouts, the
    /// time warnings and added time of contract section 8, and the
    /// participants and presence of section 9.
    pub fn is_notable(self) -> bool {
        self.is_timeout()
            || matches!(
                self,
                Self::TimeWarning
                    | Self::TimeAdded
                    | Self::ParticipantJoined
                    | Self::ParticipantLeft
                    | Self::PresenceJoined
                    | Self::PresenceLeft
            )
    }

    /// Presence events are not state changes: they carry no version and are
    /// not written to the audit trail (contract section 9).
    pub fn is_presence(self) -> bool {
        matches!(self, Self::PresenceJoined | Self::PresenceLeft)
    }
}

/// One event. `event_id` is derived from (session, creation instant, version,
/// position), so a retried commit produces the same ids and audit writes are
/// idempotent, while a session id reused after deletion gets fresh ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique and deterministic (see the type's documentation).
    pub event_id: Uuid,
    /// The session.
    pub session_id: SessionId,
    /// The session version this event produced.
    pub version: u64,
    /// What happened.
    pub event_type: EventType,
    /// The participant concerned, if any.
    pub participant_id: Option<ParticipantId>,
    /// The group concerned, if any.
    pub group_id: Option<GroupId>,
    /// When it took effect (for timeouts: the deadline).
    pub at_ms: i64,
    /// The concerned clock's remaining time after the event.
    pub time_remaining_ms: Option<i64>,
    /// The time the ended cycle lasted (switch, timeout), if any.
    pub time_elapsed_ms: Option<i64>,
    /// The client-defined action of an `auto_action` timeout.
    pub action: Option<String>,
    /// Extra details (e.g. the next participant).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Namespace of the name hash in event ids.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2a44_0c2d_4f5e_9a7b_5d1e_3c8f_0a11);

/// The largest instant a time-ordered id holds (48 bits of unix ms, the
/// year 10889).
const MAX_ID_MS: i64 = (1 << 48) - 1;

/// A time-ordered name-based id (RFC 9562 version 8, the layout of version
/// 7 with a hash for its random bits): the first 48 bits are `at_ms` (unix
/// ms, clamped to 0..2^48), the other 74 free bits come from the UUIDv5 of
/// `name` in `namespace`. Deterministic, so the same event always gets the
/// same id; ids sort by the instant first, so an index on them (the audit
/// trail's primary key) grows at its end instead of at random pages, and a
/// client can order ids by time.
pub(crate) fn timed_id(namespace: &Uuid, at_ms: i64, name: &[u8]) -> Uuid {
    let hashed = Uuid::new_v5(namespace, name).into_bytes();
    let ms = u64::try_from(at_ms.clamp(0, MAX_ID_MS)).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&hashed[6..]);
    // Sets the version (8) and variant bits over the hash's.
    Uuid::new_v8(bytes)
}

impl Event {
    /// The deterministic id of the `seq`-th event of `version`, which took
    /// effect at `at_ms`: a version 8 UUID whose first 48 bits are `at_ms`
    /// (so ids sort by it), the rest a hash of session, creation instant,
    /// version and position.
    pub fn make_id(
        session_id: SessionId,
        created_at_ms: i64,
        version: u64,
        seq: usize,
        at_ms: i64,
    ) -> Uuid {
        let mut name = [0u8; 16 + 8 + 8 + 8];
        name[..16].copy_from_slice(session_id.as_uuid().as_bytes());
        name[16..24].copy_from_slice(&created_at_ms.to_be_bytes());
        name[24..32].copy_from_slice(&version.to_be_bytes());
        name[32..].copy_from_slice(&(seq as u64).to_be_bytes());
        timed_id(&EVENT_NAMESPACE, at_ms, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(n: u128) -> SessionId {
        SessionId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn an_event_id_is_a_version_8_uuid_whose_first_48_bits_are_its_instant() {
        let at = 1_765_000_000_123_i64;
        let id = Event::make_id(session(7), at - 5_000, 3, 1, at);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let b = id.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&b[..6]);
        assert_eq!(i64::from_be_bytes(ms), at);
        // Deterministic.
        assert_eq!(id, Event::make_id(session(7), at - 5_000, 3, 1, at));
        // Instants outside 48 bits are clamped, not wrapped.
        assert_eq!(
            Event::make_id(session(7), 0, 1, 0, -5).as_bytes()[..6],
            [0; 6]
        );
        assert_eq!(
            Event::make_id(session(7), 0, 1, 0, i64::MAX).as_bytes()[..6],
            [0xff; 6]
        );
    }

    proptest! {
        /// Ids order by instant, and every (session, creation instant,
        /// version, position) names its own id at any one instant.
        #[test]
        fn ids_order_by_instant_and_differ_by_name(
            a in (0u128..4, 0i64..3, 0u64..4, 0usize..3, 0i64..(1 << 48)),
            b in (0u128..4, 0i64..3, 0u64..4, 0usize..3, 0i64..(1 << 48)),
        ) {
            let id = |(s, c, v, q, at): (u128, i64, u64, usize, i64)| {
                Event::make_id(session(s), c, v, q, at)
            };
            if a.4 < b.4 {
                prop_assert!(id(a) < id(b));
            }
            let same_instant = (b.0, b.1, b.2, b.3, a.4);
            prop_assert_eq!(id(a) == id(same_instant), a == same_instant);
        }
    }
}
