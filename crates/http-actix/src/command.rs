//! The clock commands by name, one table for both transports: REST's
//! `POST /v1/sessions/{id}/{command}` (`start`, `switch`, ..., `add_time`)
//! and the WebSocket's `SWITCH`, `PAUSE`, `RESUME` and `ADD_TIME`. Both turn
//! a name and a JSON body into a domain [`Command`] here
//! ([`CommandName::parse`]), with the same rules and the same error texts
//! (e.g. for a `next_participant_id` or `lag_ms` sent with anything but a
//! switch). Running the command (rate limit, latency metric, error
//! mapping) is `AppState::execute`, shared the same way.

use kairos_domain::Command;
use serde_json::Value;

use crate::dto::{AddTimeBody, CommandBody};
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
    /// `add_time` (ext, contract section 8; WS `ADD_TIME`).
    AddTime,
}

impl CommandName {
    /// Every command, in the contract's order.
    pub const ALL: [Self; 7] = [
        Self::Start,
        Self::Switch,
        Self::Pause,
        Self::Resume,
        Self::Complete,
        Self::Cancel,
        Self::AddTime,
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
            Self::AddTime => "add_time",
        }
    }

    /// The OpenAPI `operationId`: `startSession`, ..., and `addTime`.
    pub fn operation_id(self) -> String {
        match self {
            Self::AddTime => "addTime".to_owned(),
            other => format!("{}Session", other.as_str()),
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
            "ADD_TIME" => Some(Self::AddTime),
            _ => None,
        }
    }

    /// Whether this is a switch (rate-limited per session, its latency measured).
    pub fn is_switch(self) -> bool {
        self == Self::Switch
    }

    /// The domain command and its `expected_version` for this name and a
    /// JSON body (REST's, or the WebSocket message itself): `add_time`'s
    /// body is an [`AddTimeBody`], every other command's a [`CommandBody`].
    pub fn parse(self, body: &Value) -> Result<(Command, Option<u64>), ApiError> {
        if self == Self::AddTime {
            let b = AddTimeBody::parse(body)?;
            return Ok((
                Command::AddTime {
                    target: b.target,
                    ms: b.ms,
                    reason: b.reason,
                },
                b.expected_version,
            ));
        }
        let body = CommandBody::parse(body)?;
        let expected = body.expected_version;
        self.command(body).map(|c| (c, expected))
    }

    /// The domain command for this name and body; only a switch accepts
    /// `next_participant_id` and `lag_ms`. `add_time` takes its own body
    /// ([`Self::parse`]).
    pub fn command(self, body: CommandBody) -> Result<Command, ApiError> {
        if !self.is_switch() {
            for (sent, field) in [
                (body.next_participant_id.is_some(), "next_participant_id"),
                (body.lag_ms.is_some(), "lag_ms"),
            ] {
                if sent {
                    return Err(ApiError::field(field, "is only accepted by switch"));
                }
            }
        }
        Ok(match self {
            Self::Start => Command::Start,
            Self::Switch => Command::Switch {
                next: body.next_participant_id,
                lag_ms: body.lag_ms,
            },
            Self::Pause => Command::Pause,
            Self::Resume => Command::Resume,
            Self::Complete => Command::Complete,
            Self::Cancel => Command::Cancel,
            Self::AddTime => {
                return Err(ApiError::field(
                    "ms",
                    "add_time takes participant_id or group_id and ms",
                ));
            }
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
            lag_ms: None,
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

    #[test]
    fn lag_ms_goes_with_a_switch_and_add_time_has_its_own_body() {
        assert_eq!(CommandName::from_ws("ADD_TIME"), Some(CommandName::AddTime));
        assert_eq!(CommandName::AddTime.operation_id(), "addTime");
        assert_eq!(CommandName::Switch.operation_id(), "switchSession");
        let (switch, expected) = CommandName::Switch
            .parse(&serde_json::json!({"lag_ms": 80, "expected_version": 2}))
            .unwrap();
        assert_eq!(
            switch,
            Command::Switch {
                next: None,
                lag_ms: Some(80)
            }
        );
        assert_eq!(expected, Some(2));
        let refused = CommandName::Pause
            .parse(&serde_json::json!({"lag_ms": 80}))
            .unwrap_err();
        assert_eq!(refused.message, "lag_ms is only accepted by switch");
        let (add, _) = CommandName::AddTime
            .parse(&serde_json::json!({"participant_id": "white", "ms": 60000}))
            .unwrap();
        assert!(matches!(add, Command::AddTime { reason: None, .. }));
        assert!(CommandName::AddTime.parse(&serde_json::json!({})).is_err());
    }
}
