//! Who may do what (contract section 6), as a pure function of the caller and
//! the session, so REST and WebSocket apply the same matrix.

use crate::ids::{ParticipantId, SessionId};
use crate::session::Session;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May do anything.
    Admin,
    /// May create sessions and run the ones it owns.
    Host,
    /// May press the clock when its `pid` is the active participant.
    Player,
    /// May read and subscribe.
    Viewer,
}

impl Role {
    /// Parses the claim value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "admin" => Self::Admin,
            "host" => Self::Host,
            "player" => Self::Player,
            "viewer" => Self::Viewer,
            _ => return None,
        })
    }

    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Host => "host",
            Self::Player => "player",
            Self::Viewer => "viewer",
        }
    }
}

/// An authenticated caller (from a verified token, or the anonymous admin
/// of `AUTH_MODE=off`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Subject (`sub`); becomes the owner of sessions it creates.
    pub sub: Option<String>,
    /// Role.
    pub role: Role,
    /// Restricts the token to one session.
    pub sid: Option<SessionId>,
    /// The participant a player plays as.
    pub pid: Option<ParticipantId>,
}

impl Actor {
    /// A viewer scoped to one session: what a component that reads on
    /// behalf of that session's already-authorized subscribers acts as.
    pub fn session_reader(session_id: SessionId) -> Self {
        Self {
            sub: None,
            role: Role::Viewer,
            sid: Some(session_id),
            pid: None,
        }
    }

    /// The caller of `AUTH_MODE=off`: an admin with no subject.
    pub fn anonymous_admin() -> Self {
        Self {
            sub: None,
            role: Role::Admin,
            sid: None,
            pid: None,
        }
    }
}

/// The actions of the authorization matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create a session.
    Create,
    /// Start, pause, resume, complete, cancel, delete.
    Control,
    /// Press the clock.
    Switch,
    /// Read the session or subscribe to it.
    Read,
    /// Read the audit events.
    ReadEvents,
    /// Add time to a bank (contract section 8): owner or admin.
    AddTime,
    /// Let a participant join or leave a live session (contract section 9):
    /// owner or admin.
    ManageParticipants,
    /// List every stored session (the admin view): an admin whose token is
    /// not scoped to one session.
    ListSessions,
}

/// Whether `actor` may perform `action` on `session` (`None` for create).
/// `session` must be the state as of now (deadlines applied), so that
/// "the active participant" means the one whose clock runs now.
pub fn authorize(actor: &Actor, action: Action, session: Option<&Session>) -> bool {
    if action == Action::ListSessions {
        return actor.role == Role::Admin && actor.sid.is_none();
    }
    if let (Some(sid), Some(s)) = (actor.sid, session)
        && sid != s.id
    {
        return false;
    }
    if actor.role == Role::Admin {
        return true;
    }
    let owner = session.is_some_and(|s| {
        actor.sub.is_some() && s.owner.is_some() && s.owner.as_deref() == actor.sub.as_deref()
    });
    match action {
        Action::Create => actor.role == Role::Host,
        Action::ListSessions => false,
        Action::Read => true,
        Action::Control | Action::ReadEvents | Action::AddTime | Action::ManageParticipants => {
            owner
        }
        Action::Switch => {
            owner
                || (actor.role == Role::Player
                    && actor.pid.is_some()
                    && session
                        .and_then(Session::active_participant)
                        .is_some_and(|p| Some(&p.id) == actor.pid.as_ref()))
        }
    }
}
