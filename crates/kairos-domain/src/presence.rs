//! Who is connected to a session (contract section 9), as pure data and
//! rules: the entries a presence registry (a port) keeps, the
//! counts `GET /v1/sessions/{id}/presence` shows, the `presence_joined` and
//! `presence_left` events, and when an absent active participant pauses the
//! session by itself (`auto_pause_on_disconnect_ms`).
//!
//! The rule of the auto-pause lives here, not in a worker, so that it is
//! one pure function the state machine (the machine's
//! `Command::AutoPause`) and the property tests share.

use serde_json::Map;
use uuid::Uuid;

use crate::event::{Event, EventType};
use crate::ids::{ParticipantId, SessionId};
use crate::session::{Session, Status};

/// How long a connection's entry lives without renewal. Its instance
/// renews it well before (the transport every 10 s), so an entry lapses
/// only when its instance is gone: a killed instance's connections leave
/// the counts within this long (contract section 9: 30 s).
pub const PRESENCE_LEASE_MS: i64 = 30_000;

/// The default of `PRESENCE_LEAVE_DELAY_MS`: a user whose last connection
/// closed is announced as gone only if they did not come back this soon.
pub const DEFAULT_LEAVE_DELAY_MS: i64 = 5_000;

/// How soon an absence is checked again while it cannot pause anything
/// (the session is paused or pending, or it is another participant's
/// turn): the state may change at any command, which the auto-pause worker
/// does not hear of. The pause itself is still as of its own instant; this
/// bounds only how late it may be committed after a turn came to an
/// absent participant whose period had already run.
pub const ABSENCE_RECHECK_MS: i64 = 1_000;

/// The `sub` of a connection without one (no token subject, no `?user=`).
pub const ANONYMOUS: &str = "anonymous";

/// One live connection to a session, as its instance registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConnection {
    /// The session.
    pub session_id: SessionId,
    /// Unique across instances (the instance's id and a counter).
    pub connection_id: String,
    /// The user: the token's `sub`, `?user=` with auth off, else [`ANONYMOUS`].
    pub sub: String,
    /// The participant the user plays as, when it names one of the session.
    pub participant_id: Option<ParticipantId>,
    /// When it connected.
    pub since_ms: i64,
}

/// One user of [`PresenceSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUser {
    /// The user.
    pub sub: String,
    /// The participant of its earliest connection that names one.
    pub participant_id: Option<ParticipantId>,
    /// How many live connections it has.
    pub connections: u32,
    /// When its earliest live connection connected.
    pub since_ms: i64,
}

/// Who is connected to a session, counted over every instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceSnapshot {
    /// Live connections.
    pub connections: u32,
    /// Their users, earliest first (then by `sub`).
    pub users: Vec<PresenceUser>,
}

/// Counts live connections per user. The registries keep entries; this is
/// the one place they become the answer of `GET .../presence`.
///
/// ```
/// use kairos_domain::presence::{summarize, PresenceConnection};
/// let id = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// let c = |n: &str, sub: &str, since_ms| PresenceConnection {
///     session_id: id, connection_id: n.into(), sub: sub.into(),
///     participant_id: None, since_ms,
/// };
/// let s = summarize([c("1", "bob", 20), c("2", "ann", 10), c("3", "bob", 5)]);
/// assert_eq!(s.connections, 3);
/// assert_eq!((s.users[0].sub.as_str(), s.users[0].connections, s.users[0].since_ms), ("bob", 2, 5));
/// assert_eq!(s.users[1].sub, "ann");
/// ```
pub fn summarize(connections: impl IntoIterator<Item = PresenceConnection>) -> PresenceSnapshot {
    let mut all: Vec<PresenceConnection> = connections.into_iter().collect();
    all.sort_by(|a, b| (a.since_ms, &a.connection_id).cmp(&(b.since_ms, &b.connection_id)));
    let mut users: Vec<PresenceUser> = Vec::new();
    for c in &all {
        match users.iter_mut().find(|u| u.sub == c.sub) {
            Some(u) => {
                u.connections = u.connections.saturating_add(1);
                if u.participant_id.is_none() {
                    u.participant_id.clone_from(&c.participant_id);
                }
            }
            None => users.push(PresenceUser {
                sub: c.sub.clone(),
                participant_id: c.participant_id.clone(),
                connections: 1,
                since_ms: c.since_ms,
            }),
        }
    }
    users.sort_by(|a, b| (a.since_ms, &a.sub).cmp(&(b.since_ms, &b.sub)));
    PresenceSnapshot {
        connections: u32::try_from(all.len()).unwrap_or(u32::MAX),
        users,
    }
}

/// A user whose last connection closed (or lapsed): `presence_left` is due
/// at `due_ms` unless they come back first. Claimed by a worker with a
/// lease, like a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLeave {
    /// The session.
    pub session_id: SessionId,
    /// The user.
    pub sub: String,
    /// The participant of the connection that closed last, if any.
    pub participant_id: Option<ParticipantId>,
    /// When the last connection closed (for a lapsed one: its lease's end).
    pub left_at_ms: i64,
    /// When `presence_left` is due: `left_at_ms` + the leave delay.
    pub due_ms: i64,
}

/// A participant of a session that had connections and lost them all:
/// the auto-pause worker checks it at `next_check_ms` (a registry's index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Absence {
    /// The session.
    pub session_id: SessionId,
    /// The participant.
    pub participant_id: ParticipantId,
    /// When its last connection closed (for a lapsed one: its lease's end).
    pub absent_since_ms: i64,
}

/// When the absence of `participant` (no connection since
/// `absent_since_ms`) pauses `s` by itself, as things stand: `None` unless
/// the session runs, has `auto_pause_on_disconnect_ms`, and `participant`
/// is the active one. Else `max(absent_since_ms, start of the current
/// running segment) + auto_pause_on_disconnect_ms`: the segment starts
/// when the participant's turn starts or the session resumes, so a turn
/// that comes to an absent participant, or a resume, gives it a full
/// period again.
///
/// Only a participant that connected and then lost all its connections is
/// absent (the registries record an absence only then); one that never
/// connected never pauses anything.
///
/// ```
/// use kairos_domain::{machine, presence::auto_pause_due, Command, SessionConfig};
/// let cfg = SessionConfig::parse(&serde_json::json!({
///     "sync_mode": "per_participant", "auto_pause_on_disconnect_ms": 10000,
///     "participants": [{"participant_id": "a", "total_time_ms": 60000},
///                      {"participant_id": "b", "total_time_ms": 60000}]
/// })).unwrap();
/// let id = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// let (s, _) = machine::create(cfg, id, None, 0);
/// let a = "a".parse().unwrap();
/// assert_eq!(auto_pause_due(&s, &a, 0), None, "not running");
/// let s = machine::decide(&s, &Command::Start, None, 1_000).unwrap().state;
/// assert_eq!(auto_pause_due(&s, &a, 500), Some(11_000), "since the turn began");
/// assert_eq!(auto_pause_due(&s, &a, 3_000), Some(13_000), "since it left");
/// assert_eq!(auto_pause_due(&s, &"b".parse().unwrap(), 0), None, "not its turn");
/// ```
pub fn auto_pause_due(
    s: &Session,
    participant: &ParticipantId,
    absent_since_ms: i64,
) -> Option<i64> {
    let period = s.auto_pause_on_disconnect_ms?;
    if s.status != Status::Running {
        return None;
    }
    if &s.active_participant()?.id != participant {
        return None;
    }
    let segment = s.segment_started_at_ms?;
    Some(absent_since_ms.max(segment).saturating_add(period))
}

/// Namespace of the name hash in presence event ids, apart from state events'.
const PRESENCE_NAMESPACE: Uuid = Uuid::from_u128(0x1d0c_7e52_94a3_4c61_8b0e_2f6a_9d47_c3b5);

/// A `presence_joined` or `presence_left` event: version 0 (not a state
/// change), `metadata.sub` the user. Its id is time-ordered by `at_ms`,
/// the rest a hash of (session, type, `key`, `at_ms`) (see
/// [`crate::event`]'s `timed_id`): the same leave delivered again after a
/// lost claim keeps its id, so receivers can drop the duplicate.
pub fn presence_event(
    session_id: SessionId,
    event_type: EventType,
    sub: &str,
    participant_id: Option<ParticipantId>,
    key: &str,
    at_ms: i64,
) -> Event {
    let mut name = Vec::with_capacity(16 + 24 + key.len() + 8);
    name.extend_from_slice(session_id.as_uuid().as_bytes());
    name.extend_from_slice(event_type.as_str().as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    name.push(0);
    name.extend_from_slice(&at_ms.to_be_bytes());
    let mut metadata = Map::new();
    metadata.insert("sub".into(), sub.into());
    Event {
        event_id: crate::event::timed_id(&PRESENCE_NAMESPACE, at_ms, &name),
        session_id,
        version: 0,
        event_type,
        participant_id,
        group_id: None,
        at_ms,
        time_remaining_ms: None,
        time_elapsed_ms: None,
        action: None,
        metadata,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn presence_events_are_not_versions_and_their_ids_are_stable() {
        let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
        let pid: ParticipantId = "white".parse().unwrap();
        let e = presence_event(id, EventType::PresenceLeft, "bob", Some(pid), "bob", 7);
        assert_eq!(e.version, 0);
        assert_eq!(e.metadata["sub"], "bob");
        assert_eq!(
            e.participant_id.as_ref().map(ParticipantId::as_str),
            Some("white")
        );
        let again = presence_event(id, EventType::PresenceLeft, "bob", None, "bob", 7);
        assert_eq!(e.event_id, again.event_id);
        let joined = presence_event(id, EventType::PresenceJoined, "bob", None, "bob", 7);
        assert_ne!(e.event_id, joined.event_id);
        let later = presence_event(id, EventType::PresenceLeft, "bob", None, "bob", 8);
        assert_ne!(e.event_id, later.event_id);
    }
}
