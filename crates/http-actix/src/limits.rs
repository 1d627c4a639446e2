//! Rate limits of contract section 7: which limit applies to which request,
//! who the client is, and the `RateLimit-*` / `Retry-After` headers.
//!
//! The counting itself is a [`RateLimiter`] port: in process for one
//! instance, a Redis script when instances share limits.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::HttpResponse;
use ipnet::IpNet;
use kairos_domain::RateLimiter;
use kairos_domain::ratelimit::{Limit, RateDecision};

use crate::error::{ApiError, ceil_secs};

/// Every configurable limit (defaults are the contract's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// `RATE_LIMITS=off` turns every limit off (load tests).
    pub enabled: bool,
    /// Switches per session (REST and WebSocket): 10 per second.
    pub switch: Limit,
    /// Creates per `sub` or IP: 5 per minute.
    pub create: Limit,
    /// Session reads per `sub` or IP: 100 per minute.
    pub get: Limit,
    /// `/v1/time` per IP: 60 per minute.
    pub time: Limit,
    /// WebSocket connects per IP: 5 per minute.
    pub ws_connect: Limit,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            switch: Limit::per_second(10),
            create: Limit::per_minute(5),
            get: Limit::per_minute(100),
            time: Limit::per_minute(60),
            ws_connect: Limit::per_minute(5),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Which limit a request falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /v1/sessions/{id}/switch`, WS `SWITCH`. Commands do not count
    /// it here: the store counts it with the commit
    /// ([`Limiter::switch_limit`]); `check` still serves a caller that has
    /// no store to count it in.
    Switch,
    /// `POST /v1/sessions`.
    Create,
    /// `GET /v1/sessions/{id}`.
    Get,
    /// `GET /v1/time`.
    Time,
    /// WebSocket connects.
    WsConnect,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Switch => "switch",
            Self::Create => "create",
            Self::Get => "get",
            Self::Time => "time",
            Self::WsConnect => "ws",
        }
    }
}

/// The limiter and its settings, as the handlers hold them.
#[derive(Clone)]
pub struct Limiter {
    /// Where the counts live.
    pub backend: Arc<dyn RateLimiter>,
    /// The limits.
    pub limits: RateLimits,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// The per-session switch limit, when limits are on. It is not counted
    /// here: it travels with the command and the store counts it in the
    /// commit's own atomic step (`SessionService::execute_limited`), so a
    /// switch costs no round trip of its own for it.
    pub fn switch_limit(&self) -> Option<Limit> {
        self.limits.enabled.then_some(self.limits.switch)
    }

    /// Counts one request of `kind` for `key` at `now_ms`. `Ok(None)` when
    /// limits are off; an error 429 `RATE_LIMITED` (with the headers) when over the limit. A
    /// failing limiter lets the request through: availability of the clock
    /// service matters more than a limit, and the failure is logged.
    pub async fn check(
        &self,
        kind: Kind,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<RateDecision>, ApiError> {
        if !self.limits.enabled {
            return Ok(None);
        }
        let limit = match kind {
            Kind::Switch => self.limits.switch,
            Kind::Create => self.limits.create,
            Kind::Get => self.limits.get,
            Kind::Time => self.limits.time,
            Kind::WsConnect => self.limits.ws_connect,
        };
        let full_key = format!("{}:{key}", kind.name());
        match self.backend.check(&full_key, limit, now_ms).await {
            Ok(d) if d.allowed => Ok(Some(d)),
            Ok(d) => Err(ApiError::rate_limited(d, limit)),
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                Ok(None)
            }
        }
    }
}

/// The client's address: the peer, or the first `X-Forwarded-For` hop when
/// the peer is a trusted proxy (anyone else could forge the header).
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip());
    let peer_trusted = peer.is_some_and(|p| trusted.iter().any(|net| net.contains(&p)));
    if peer_trusted {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer
}

/// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
pub fn apply_headers(response: &mut HttpResponse, decision: Option<&RateDecision>) {
    let Some(d) = decision else {
        return;
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", d.limit.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", ceil_secs(d.reset_ms).to_string()),
    ] {
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&value) {
            headers.insert(actix_web::http::header::HeaderName::from_static(name), v);
        }
    }
}

/// The key of a caller: its token subject, else its IP.
pub fn caller_key(actor: &kairos_domain::Actor, req: &HttpRequest, trusted: &[IpNet]) -> String {
    match &actor.sub {
        Some(sub) => format!("sub:{sub}"),
        None => format!(
            "ip:{}",
            client_ip(req, trusted).map_or_else(|| "unknown".into(), |ip| ip.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let via_proxy = TestRequest::default()
            .peer_addr("10.1.2.3:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "203.0.113.9, 10.1.2.3"))
            .to_http_request();
        assert_eq!(
            client_ip(&via_proxy, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let direct = TestRequest::default()
            .peer_addr("198.51.100.7:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "203.0.113.9"))
            .to_http_request();
        assert_eq!(
            client_ip(&direct, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
    }
}
