//! Identifiers, parsed once at the edge so the core never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A session id: a UUID (contract section "Sessions").
///
/// ```
/// use kairos_domain::SessionId;
/// let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
/// assert_eq!(id.to_string(), "123e4567-e89b-12d3-a456-426614174000");
/// assert!("not-a-uuid".parse::<SessionId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// Wraps a UUID that the caller already holds (for example a freshly generated v4).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lower case, the form clients send and expect back.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The session id is not a UUID.
    #[error("must be a UUID")]
    NotUuid,
    /// Participant and group ids are 1 to 64 characters.
    #[error("must be 1 to 64 characters long")]
    Length,
    /// Participant and group ids use `[A-Za-z0-9_.:-]` only.
    #[error("may contain only letters, digits and _ . : -")]
    Charset,
}

impl FromStr for SessionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid)
    }
}

fn check_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > 64 {
        return Err(IdError::Length);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(IdError::Charset);
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses 1 to 64 characters from `[A-Za-z0-9_.:-]`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name(s)?;
                Ok(Self(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_name(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// A participant id: 1 to 64 characters from `[A-Za-z0-9_.:-]` (UUIDs included).
    ///
    /// ```
    /// use kairos_domain::ParticipantId;
    /// assert!(ParticipantId::parse("white").is_ok());
    /// assert!(ParticipantId::parse("").is_err());
    /// assert!(ParticipantId::parse("no spaces").is_err());
    /// ```
    ParticipantId
);

name_id!(
    /// A group id: the same alphabet and length as [`ParticipantId`].
    GroupId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_ids_follow_the_contract_alphabet() {
        assert!(ParticipantId::parse("a").is_ok());
        assert!(ParticipantId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(ParticipantId::parse(&"x".repeat(65)), Err(IdError::Length));
        assert_eq!(ParticipantId::parse("a/b"), Err(IdError::Charset));
        assert!(ParticipantId::parse("team-1:player_2.x").is_ok());
        assert!(ParticipantId::parse("123e4567-e89b-12d3-a456-426614174000").is_ok());
        assert_eq!(ParticipantId::parse("é"), Err(IdError::Charset));
    }

    #[test]
    fn session_id_round_trips_through_serde() {
        let id: SessionId = "123e4567-e89b-12d3-a456-426614174000".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"123e4567-e89b-12d3-a456-426614174000\"");
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
    }
}
