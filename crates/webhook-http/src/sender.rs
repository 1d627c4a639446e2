//! One delivery attempt: sign, POST, and turn what happened into the
//! domain's [`AttemptOutcome`] (contract section 9).
//!
//! The client follows no redirect, goes through no proxy, gives up after
//! [`SEND_TIMEOUT`], speaks TLS through rustls on the ring provider with the
//! web's public roots, and resolves names through [`GuardedResolver`], which
//! hands it only the addresses the [`UrlPolicy`] allows: whatever the name
//! resolves to at send time, the connection goes to a checked address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kairos_domain::webhook::AttemptOutcome;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

use crate::guard::{self, UrlPolicy, allowed};
use crate::sign::signature;

/// A 2xx within this long is a success; anything slower is a failure.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured (the contract's last interval).
pub const MAX_RETRY_AFTER_MS: i64 = 24 * 3_600_000;

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct BuildError(String);

/// What one attempt sends.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The endpoint's URL (checked when it was created).
    pub url: &'a str,
    /// The endpoint's secret (`whsec_...`); never logged.
    pub secret: &'a str,
    /// `webhook-id`: the event's id, the same on every retry.
    pub webhook_id: &'a str,
    /// The JSON body, signed as sent.
    pub body: &'a str,
    /// Now, in ms since the Unix epoch (`webhook-timestamp` is its seconds).
    pub now_ms: i64,
}

/// Sends webhooks; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: UrlPolicy,
}

impl Sender {
    /// A sender that refuses what `policy` refuses.
    pub fn new(policy: UrlPolicy) -> Result<Self, BuildError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(SEND_TIMEOUT)
            .connect_timeout(SEND_TIMEOUT)
            .dns_resolver(GuardedResolver { policy })
            .user_agent(concat!("SyncKairos-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Self { client, policy })
    }

    /// The policy this sender enforces.
    pub fn policy(&self) -> UrlPolicy {
        self.policy
    }

    /// Makes one attempt. Never fails: every failure is an
    /// [`AttemptOutcome::Failed`] whose `error` names no secret and no URL
    /// credentials.
    pub async fn send(&self, message: Message<'_>) -> AttemptOutcome {
        let failed = |error: String| AttemptOutcome::Failed {
            status: None,
            error,
            retry_after_ms: None,
        };
        // A literal address never reaches the resolver: check it here.
        let url = match guard::parse_url(message.url, self.policy) {
            Ok((url, _)) => url,
            Err(e) => return failed(format!("url refused: {e}")),
        };
        let timestamp_s = message.now_ms.div_euclid(1000);
        let signature = match signature(
            message.secret,
            message.webhook_id,
            timestamp_s,
            message.body.as_bytes(),
        ) {
            Ok(s) => s,
            Err(e) => return failed(e.to_string()),
        };
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", message.webhook_id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(message.body.to_owned());
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after_ms = retry_after_ms(response.headers(), message.now_ms);
                // 2xx delivered, 410 gone, anything else (a redirect
                // included) a failure to retry. The body is not read.
                AttemptOutcome::from_status(status, retry_after_ms)
            }
            Err(e) => failed(describe(e)),
        }
    }
}

/// `Retry-After` as ms from now: delay-seconds or an HTTP date, capped at
/// [`MAX_RETRY_AFTER_MS`]; `None` when absent or unreadable.
pub fn retry_after_ms(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let ms = if raw.bytes().all(|b| b.is_ascii_digit()) && !raw.is_empty() {
        raw.parse::<i64>().unwrap_or(i64::MAX).saturating_mul(1000)
    } else {
        let at = httpdate::parse_http_date(raw).ok()?;
        let at_ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())?;
        at_ms.saturating_sub(now_ms)
    };
    Some(ms.clamp(0, MAX_RETRY_AFTER_MS))
}

/// A transport error as a short text, without the URL (it may hold credentials).
fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        format!("timed out after {} s", SEND_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut text = what;
    let e = e.without_url();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(300).collect()
}

/// The sender's resolver: the system's, keeping only the addresses the
/// policy allows (an empty result fails the attempt).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    policy: UrlPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = guard::resolve(&name, 0)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let kept: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allowed(a.ip(), policy))
                .collect();
            if kept.is_empty() {
                let refused = guard::UrlError::Forbidden {
                    addr: addrs[0].ip(),
                    kind: guard::forbidden_kind(addrs[0].ip()).unwrap_or("refused"),
                };
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now_ms = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after_ms(&h, now_ms)
        };
        assert_eq!(with("120"), Some(120_000));
        assert_eq!(with(" 0 "), Some(0));
        assert_eq!(with("Wed, 21 Oct 2015 07:30:00 GMT"), Some(120_000));
        // In the past: retry at once (the schedule still applies).
        assert_eq!(with("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0));
        assert_eq!(with("99999999999"), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(with("soon"), None);
        assert_eq!(with("-5"), None);
        assert_eq!(retry_after_ms(&HeaderMap::new(), now_ms), None);
    }

    #[tokio::test]
    async fn internal_targets_fail_without_a_connection() {
        let sender = Sender::new(UrlPolicy {
            allow_http: true,
            allow_private: false,
        })
        .unwrap();
        // A listener that would accept: the guard must stop the attempt first.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for url in [
            format!("http://127.0.0.1:{port}/h"),
            format!("http://localhost:{port}/h"),
        ] {
            let outcome = sender
                .send(Message {
                    url: &url,
                    secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                    webhook_id: "evt",
                    body: "{}",
                    now_ms: 0,
                })
                .await;
            let AttemptOutcome::Failed { status, error, .. } = outcome else {
                panic!("{url}: {outcome:?}")
            };
            assert_eq!(status, None, "{url}");
            assert!(error.contains("loopback"), "{url}: {error}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "nothing connected");
    }
}
