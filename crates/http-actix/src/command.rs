//! The clock commands by name, one table for both transports: REST's
//! `POST /v1/sessions/{id}/{command}` (`start`, `switch`, ...) and the
//! WebSocket's `SWITCH`, `PAUSE` and `RESUME`. Both turn a name and a
//! [`CommandBody`] into a domain [`Command`] here, with the same rule and
//! the same error text for a `next_participant_id` sent with anything but
//! a switch. Running the command (rate limit, latency metric, error
//! mapping) is `AppState::execute`, shared the same way.

use kairos_domain::Command;

use crate::dto::CommandBody;
use crate::error::ApiError;

/// A command a client may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    /// `start`.
    Start,
    /// `switch` (WS `SWITCH`).
    Switch,
    /// `pause` (WS `PAUSE`).
    Pause,
    /// `resume` (WS `RESUME`).
    Resume,
    /// `complete`.
    Complete,
    /// `cancel` (ext).
    Cancel,
}

impl CommandName {
    /// Every command, in the contract's order.
    pub const ALL: [Self; 6] = [
        Self::Start,
        Self::Switch,
        Self::Pause,
        Self::Resume,
        Self::Complete,
        Self::Cancel,
    ];

    /// The REST name (the last path segment).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Switch => "switch",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Complete => "complete",
            Self::Cancel => "cancel",
        }
    }

    /// The command a REST path segment names, if any.
    pub fn from_rest(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The command a WebSocket message `type` names, if any: only the
    /// clock commands a player or host uses mid-session are offered there.
    pub fn from_ws(kind: &str) -> Option<Self> {
        match kind {
            "SWITCH" => Some(Self::Switch),
            "PAUSE" => Some(Self::Pause),
            "RESUME" => Some(Self::Resume),
            _ => None,
        }
    }

    /// Whether this is a switch (rate-limited per session, its latency measured).
    pub fn is_switch(self) -> bool {
        self == Self::Switch
    }

    /// The domain command for this name and body; only a switch accepts
    /// `next_participant_id`.
    pub fn command(self, body: CommandBody) -> Result<Command, ApiError> {
        if body.next_participant_id.is_some() && !self.is_switch() {
            return Err(ApiError::field(
                "next_participant_id",
                "is only accepted by switch",
            ));
        }
        Ok(match self {
            Self::Start => Command::Start,
            Self::Switch => Command::Switch {
                next: body.next_participant_id,
                lag_ms: None,
            },
            Self::Pause => Command::Pause,
            Self::Resume => Command::Resume,
            Self::Complete => Command::Complete,
            Self::Cancel => Command::Cancel,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kairos_domain::ParticipantId;

    #[test]
    fn names_round_trip_and_only_switch_takes_a_next_participant() {
        for name in CommandName::ALL {
            assert_eq!(CommandName::from_rest(name.as_str()), Some(name));
        }
        assert_eq!(CommandName::from_rest("frobnicate"), None);
        assert_eq!(CommandName::from_ws("SWITCH"), Some(CommandName::Switch));
        assert_eq!(CommandName::from_ws("START"), None);
        let next = CommandBody {
            expected_version: None,
            next_participant_id: Some(ParticipantId::parse("black").unwrap()),
        };
        assert_eq!(
            CommandName::Switch.command(next.clone()).unwrap(),
            Command::Switch {
                next: next.next_participant_id.clone(),
                lag_ms: None,
            }
        );
        let refused = CommandName::Pause.command(next).unwrap_err();
        assert_eq!(
            refused.message,
            "next_participant_id is only accepted by switch"
        );
    }
}
