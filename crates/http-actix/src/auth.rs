//! Who is calling: turns a request into a domain [`Actor`] (contract section 6).
//!
//! Tokens are HS256 JWTs signed with `JWT_SECRET`; only that algorithm is
//! accepted (an `alg: none` or RS256 token is refused before any signature
//! check could be confused). Tokens come from `Authorization: Bearer`, or for
//! WebSocket upgrades from `?token=` because browsers cannot set headers on
//! a WebSocket. No token is ever logged: the request log names only the route.

use std::fmt;

use actix_web::HttpRequest;
use actix_web::http::header;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use kairos_domain::{Actor, ParticipantId, Role, SessionId};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};

/// Whether calls need a token (contract section 6).
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Every caller is an admin; for local development. Logged loudly at start.
    Off,
    /// HS256 JWTs signed with `JWT_SECRET` (boxed: the key material is large
    /// and the enum is copied into every worker's settings).
    Jwt(Box<JwtAuth>),
}

impl AuthMode {
    /// The caller of `req`.
    pub fn authenticate(&self, req: &HttpRequest) -> Result<Actor, ApiError> {
        self.authenticate_until(req).map(|(actor, _)| actor)
    }

    /// The caller of `req`, and until when its token is accepted (seconds
    /// since the Unix epoch, leeway included); `None` with `AUTH_MODE=off`.
    pub fn authenticate_until(&self, req: &HttpRequest) -> Result<(Actor, Option<i64>), ApiError> {
        match self {
            Self::Off => Ok((Actor::anonymous_admin(), None)),
            Self::Jwt(jwt) => match token_of(req)? {
                Some(token) => jwt.verify_until(&token).map(|(a, until)| (a, Some(until))),
                None => Err(unauthorized("a bearer token is required")),
            },
        }
    }
}

/// The shortest secret accepted: 32 bytes, as HS256 needs 256 bits of key.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret, refusing one shorter than [`MIN_SECRET_BYTES`].
    pub fn new(value: String) -> Result<Self, String> {
        if value.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_SECRET_BYTES} bytes (got {})",
                value.len()
            ));
        }
        Ok(Self(value))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How tokens are checked.
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("leeway_s", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// HS256 with `secret`, `leeway_s` seconds of clock leeway on `exp`.
    pub fn new(secret: &Secret, leeway_s: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret.bytes()),
            validation,
        }
    }

    /// Verifies a token and turns its claims into an actor.
    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        self.verify_until(token).map(|(actor, _)| actor)
    }

    /// Like [`JwtAuth::verify`], and says until when the token is accepted:
    /// its `exp` plus the leeway, in seconds since the Unix epoch. A
    /// WebSocket holds its token that long and no longer.
    pub fn verify_until(&self, token: &str) -> Result<(Actor, i64), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| unauthorized(&format!("invalid token: {}", reason(&e))))?;
        let c = data.claims;
        let role =
            Role::parse(&c.role).ok_or_else(|| unauthorized("invalid token: unknown role"))?;
        let sid = c
            .sid
            .map(|s| s.parse::<SessionId>())
            .transpose()
            .map_err(|_| unauthorized("invalid token: sid is not a UUID"))?;
        let pid = c
            .pid
            .map(|p| ParticipantId::parse(&p))
            .transpose()
            .map_err(|_| unauthorized("invalid token: pid is not a participant id"))?;
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
        let actor = Actor {
            sub: Some(c.sub),
            role,
            sid,
            pid,
        };
        Ok((actor, c.exp.saturating_add(leeway)))
    }
}

/// Says why a token failed without echoing any part of it.
fn reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed",
    }
}

/// The claims of contract section 6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: becomes the owner of sessions it creates.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// `admin`, `host`, `player` or `viewer`.
    pub role: String,
    /// Restricts the token to one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The participant a player plays as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
}

/// Signs `claims` with `secret` (HS256): what `kairos-server token` prints.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.bytes()),
    )
    .map_err(|e| e.to_string())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(Code::Unauthorized, message)
}

/// The token of `req`: the bearer header, or for a WebSocket upgrade the
/// `token` query parameter.
fn token_of(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| unauthorized("malformed Authorization header"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
        return Ok(Some(token.trim().to_owned()));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        let query = web_query(req.query_string());
        if let Some(t) = query {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

fn web_query(qs: &str) -> Option<String> {
    qs.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef".into()).unwrap()
    }

    fn claims(role: &str, exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp,
            role: role.into(),
            sid: Some("123e4567-e89b-12d3-a456-426614174000".into()),
            pid: Some("white".into()),
        }
    }

    const FAR: i64 = 4_000_000_000;

    #[test]
    fn a_minted_token_verifies_into_an_actor() {
        let jwt = JwtAuth::new(&secret(), 5);
        let token = mint(&secret(), &claims("player", FAR)).unwrap();
        let actor = jwt.verify(&token).unwrap();
        assert_eq!(actor.sub.as_deref(), Some("alice"));
        assert_eq!(actor.role, Role::Player);
        assert_eq!(actor.pid.unwrap().as_str(), "white");
        assert_eq!(
            actor.sid.unwrap().to_string(),
            "123e4567-e89b-12d3-a456-426614174000"
        );
    }

    #[test]
    fn a_token_is_held_until_its_expiry_plus_the_leeway() {
        let token = mint(&secret(), &claims("viewer", FAR)).unwrap();
        let (_, until) = JwtAuth::new(&secret(), 5).verify_until(&token).unwrap();
        assert_eq!(until, FAR + 5);
        let (_, until) = JwtAuth::new(&secret(), 0).verify_until(&token).unwrap();
        assert_eq!(until, FAR);
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(Secret::new("short".into()).is_err());
        assert_eq!(format!("{:?}", secret()), "Secret(<redacted>)");
    }

    #[test]
    fn forged_tokens_are_refused() {
        let jwt = JwtAuth::new(&secret(), 0);
        // Wrong secret.
        let other = Secret::new("another-secret-another-secret-xx".into()).unwrap();
        let wrong = mint(&other, &claims("admin", FAR)).unwrap();
        assert_eq!(jwt.verify(&wrong).unwrap_err().code, Code::Unauthorized);
        // Expired.
        let expired = mint(&secret(), &claims("admin", 1_000)).unwrap();
        assert!(
            jwt.verify(&expired)
                .unwrap_err()
                .message
                .contains("expired")
        );
        // Tampered payload: same header and signature, role changed.
        let good = mint(&secret(), &claims("viewer", FAR)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let forged_payload = mint(&other, &claims("admin", FAR)).unwrap();
        let evil = format!(
            "{}.{}.{}",
            parts[0],
            forged_payload.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(jwt.verify(&evil).is_err());
        // alg: none.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(jwt.verify(&none).is_err());
        // Unknown role.
        let odd = mint(&secret(), &claims("emperor", FAR)).unwrap();
        assert!(jwt.verify(&odd).is_err());
        // Garbage.
        assert!(jwt.verify("not.a.token").is_err());
    }
}
