//! `kairos-server token`: mints a token from the configured secret so a
//! newcomer can call a secured server in one line.

use http_actix::auth::{Claims, Secret, mint};
use kairos_domain::{ParticipantId, Role, SessionId};

/// Parses a lifetime such as `90s`, `30m`, `1h`, `7d` or plain seconds.
pub fn parse_ttl(raw: &str) -> Result<i64, String> {
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("--ttl {raw:?}: expected e.g. 90s, 30m, 1h, 7d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--ttl {raw:?}: unit must be s, m, h or d")),
    };
    match n.checked_mul(factor) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(format!("--ttl {raw:?}: must be positive and reasonable")),
    }
}

/// Builds and signs the claims, checking every argument the way the server
/// will when it receives the token.
pub fn mint_token(
    secret: &Secret,
    role: &str,
    sub: &str,
    sid: Option<String>,
    pid: Option<String>,
    ttl: &str,
    now_s: i64,
) -> Result<String, String> {
    Role::parse(role)
        .ok_or_else(|| format!("--role {role:?}: expected admin, host, player or viewer"))?;
    if sub.is_empty() {
        return Err("--sub must not be empty".into());
    }
    if let Some(s) = &sid {
        s.parse::<SessionId>()
            .map_err(|_| format!("--sid {s:?}: must be a session UUID"))?;
    }
    if let Some(p) = &pid {
        ParticipantId::parse(p).map_err(|e| format!("--pid {p:?}: {e}"))?;
    }
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now_s.saturating_add(parse_ttl(ttl)?),
        role: role.to_owned(),
        sid,
        pid,
    };
    mint(secret, &claims)
}

/// Mints a token valid from now, signed with the configured secret
/// (`JWT_SECRET`, read and checked by [`crate::config`]).
pub fn mint_now(
    secret: Option<&Secret>,
    role: &str,
    sub: &str,
    sid: Option<String>,
    pid: Option<String>,
    ttl: &str,
) -> Result<String, String> {
    let secret = secret.ok_or("JWT_SECRET is not set")?;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    mint_token(secret, role, sub, sid, pid, ttl, now_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_actix::auth::JwtAuth;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn a_minted_token_is_accepted_by_the_server_side_check() {
        let secret = Secret::new("0123456789abcdef0123456789abcdef".into()).unwrap();
        let token = mint_token(&secret, "host", "alice", None, None, "1h", 4_000_000_000).unwrap();
        let actor = JwtAuth::new(&secret, 0).verify(&token).unwrap();
        assert_eq!(actor.role, Role::Host);
        assert_eq!(actor.sub.as_deref(), Some("alice"));
        assert!(mint_token(&secret, "king", "a", None, None, "1h", 0).is_err());
        assert!(mint_token(&secret, "host", "a", Some("x".into()), None, "1h", 0).is_err());
        assert!(mint_token(&secret, "player", "a", None, Some("bad id".into()), "1h", 0).is_err());
    }
}
