//! One delivery attempt: sign, POST, and turn what happened into the
//! domain's [`AttemptOutcome`] (contract section 9).
//!
//! Attempts go through a pool of kept-alive HTTP/1.1 connections (hyper-util's
//! pooled client), one pool per origin (scheme, host, port): a connection
//! that answered is reused by the next attempt to that origin, so a busy
//! endpoint costs no TCP or TLS handshake per delivery. The pool is bounded:
//! at most [`MAX_IDLE_PER_ORIGIN`] idle connections per origin, each closed
//! after [`IDLE_TIMEOUT`] unused, so an endpoint that went away holds
//! nothing. New connections are opened by [`crate::connect::Connector`],
//! which resolves the host itself and connects only to addresses the
//! [`UrlPolicy`] allows (DNS rebinding reaches nothing). When an attempt
//! fails on a reused connection before any answer (the receiver closed it
//! while idle), it is made once more on a fresh connection within the same
//! deadline. No redirect is followed (a 3xx is a failure), no proxy is
//! used, and the whole attempt, connection, TLS and reading the answer
//! included, gives up after [`SEND_TIMEOUT`]. TLS is rustls on the ring
//! provider with the web's public roots. The answer's body is read (up to
//! [`MAX_DRAINED_BODY`]) only so that the connection can be reused.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, RETRY_AFTER, USER_AGENT};
use hyper::http::Extensions;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kairos_domain::webhook::AttemptOutcome;
use tokio::time::Instant;
use url::Position;

use crate::connect::{ConnectError, Connector, Uses};
use crate::guard::{self, UrlPolicy};
use crate::sign::signature;

/// A 2xx within this long is a success; anything slower is a failure.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured (the contract's last interval).
pub const MAX_RETRY_AFTER_MS: i64 = 24 * 3_600_000;
/// An idle pooled connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections kept per origin (scheme, host, port): the
/// default `WEBHOOK_CONCURRENCY`, so that at the default settings no
/// connection is ever closed for being one too many (sends in flight, and
/// so connections in use, never exceed it), even when a whole batch of
/// sends to one endpoint ends at once.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;
/// An answer's body longer than this is not read: its connection is closed
/// instead of reused.
pub const MAX_DRAINED_BODY: usize = 64 * 1024;
/// The `user-agent` of every attempt.
const AGENT: &str = concat!("SyncKairos-Webhooks/", env!("CARGO_PKG_VERSION"));

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook TLS configuration: {0}")]
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

type HttpClient = Client<Connector, Full<Bytes>>;

/// Sends webhooks; cheap to clone (the clones share one connection pool).
#[derive(Clone)]
pub struct Sender {
    /// Keeps connections alive and reuses them.
    pooled: HttpClient,
    /// Keeps nothing: the second try after a reused connection failed.
    fresh: HttpClient,
    policy: UrlPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why one request got no answer, and whether it went over a connection
/// that had carried a request before.
struct Failure {
    error: String,
    reused: bool,
}

impl Sender {
    /// A sender that refuses what `policy` refuses.
    pub fn new(policy: UrlPolicy) -> Result<Self, BuildError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = Connector {
            policy,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        };
        let pooled = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(Self {
            pooled,
            fresh,
            policy,
            timeout: SEND_TIMEOUT,
        })
    }

    /// The same sender giving up on an attempt after `timeout` instead of
    /// [`SEND_TIMEOUT`] (tests).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The policy this sender enforces.
    pub fn policy(&self) -> UrlPolicy {
        self.policy
    }

    /// Makes one attempt. Never fails: every failure is an
    /// [`AttemptOutcome::Failed`] whose `error` names no secret and no URL.
    pub async fn send(&self, message: Message<'_>) -> AttemptOutcome {
        let failed = |error: String| AttemptOutcome::Failed {
            status: None,
            error,
            retry_after_ms: None,
        };
        let deadline = Instant::now() + self.timeout;
        let (url, _port) = match guard::parse_url(message.url, self.policy) {
            Ok(checked) => checked,
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
        // The origin and the path: no user info, no fragment.
        let uri = format!(
            "{}://{}{}",
            url.scheme(),
            &url[Position::BeforeHost..Position::AfterPort],
            &url[Position::BeforePath..Position::AfterQuery]
        );
        let body = Bytes::copy_from_slice(message.body.as_bytes());
        let request = || {
            hyper::Request::post(uri.as_str())
                .header(HOST, &url[Position::BeforeHost..Position::AfterPort])
                .header(USER_AGENT, AGENT)
                .header(CONTENT_TYPE, "application/json")
                .header("webhook-id", message.webhook_id)
                .header("webhook-timestamp", timestamp_s.to_string())
                .header("webhook-signature", signature.as_str())
                .body(Full::new(body.clone()))
        };
        let first = match request() {
            Ok(r) => r,
            Err(e) => return failed(format!("cannot build the request: {e}")),
        };
        let answered = tokio::time::timeout_at(deadline, async {
            match exchange(&self.pooled, first).await {
                // The receiver closed a kept-alive connection before
                // answering: once more on a new connection.
                Err(Failure { reused: true, .. }) => match request() {
                    Ok(again) => exchange(&self.fresh, again).await,
                    Err(e) => Err(Failure {
                        error: format!("cannot build the request: {e}"),
                        reused: false,
                    }),
                },
                other => other,
            }
        })
        .await;
        match answered {
            Ok(Ok((status, headers, body))) => {
                // Read what is left so that the connection can be reused;
                // the answer is known already, so this only bounds the wait.
                let _ = tokio::time::timeout_at(deadline, drain(body)).await;
                let retry_after_ms = retry_after_ms(&headers, message.now_ms);
                // 2xx delivered, 410 gone, anything else (a redirect
                // included) a failure to retry.
                AttemptOutcome::from_status(status, retry_after_ms)
            }
            Ok(Err(failure)) => failed(failure.error),
            Err(_) => failed(timed_out(self.timeout)),
        }
    }
}

/// "timed out after 10 s" (or ms when under a second).
fn timed_out(timeout: Duration) -> String {
    if timeout.subsec_nanos() == 0 {
        format!("timed out after {} s", timeout.as_secs())
    } else {
        format!("timed out after {} ms", timeout.as_millis())
    }
}

/// One request through `client`; the answer's status, headers and body.
async fn exchange(
    client: &HttpClient,
    mut request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, HeaderMap, Incoming), Failure> {
    let captured = capture_connection(&mut request);
    let result = client.request(request).await;
    // Whether the connection it went over had carried a request before.
    let reused = captured.connection_metadata().as_ref().is_some_and(|c| {
        let mut extras = Extensions::new();
        c.get_extras(&mut extras);
        extras.get::<Uses>().is_some_and(|uses| uses.mark() > 0)
    });
    match result {
        Ok(response) => {
            let (head, body) = response.into_parts();
            Ok((head.status.as_u16(), head.headers, body))
        }
        Err(e) => Err(Failure {
            error: describe(&e),
            reused: reused && !e.is_connect(),
        }),
    }
}

/// An error of the pooled client as one line: the connector's own message
/// for a connection that could not be opened, else what hyper says.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut source = std::error::Error::source(error);
    let mut parts = Vec::new();
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return c.0.clone();
        }
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    format!("request failed: {}", parts.join(": "))
}

/// Reads an answer's body to its end, or stops (and the connection is
/// closed rather than reused) past [`MAX_DRAINED_BODY`] or at an error.
async fn drain(mut body: Incoming) {
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read += data.len();
            if read > MAX_DRAINED_BODY {
                return;
            }
        }
    }
}

/// `Retry-After` as ms from now: delay-seconds or an HTTP date, capped at
/// [`MAX_RETRY_AFTER_MS`]; `None` when absent or unreadable.
pub fn retry_after_ms(headers: &HeaderMap, now_ms: i64) -> Option<i64> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let ms = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hyper::header::HeaderValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn message(url: &str) -> Message<'_> {
        Message {
            url,
            secret: SECRET,
            webhook_id: "evt_1",
            body: r#"{"type":"x"}"#,
            now_ms: 1_649_367_553_000,
        }
    }

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
        // In the past: no floor (the schedule still applies).
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
            let outcome = sender.send(message(&url)).await;
            let AttemptOutcome::Failed { status, error, .. } = outcome else {
                panic!("{url}: {outcome:?}")
            };
            assert_eq!(status, None, "{url}");
            assert!(error.contains("loopback"), "{url}: {error}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "nothing connected");
    }

    /// A raw TCP receiver: reads one request head and answers `answer`.
    async fn one_answer(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Head and the 12-byte body.
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n{\"type\":\"x\"}") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (port, task)
    }

    #[tokio::test]
    async fn a_signed_post_and_its_answer() {
        let sender = Sender::new(UrlPolicy {
            allow_http: true,
            allow_private: true,
        })
        .unwrap();
        let (port, task) = one_answer("HTTP/1.1 204 No Content\r\n\r\n").await;
        let url = format!("http://localhost:{port}/hooks/k?a=1");
        assert_eq!(
            sender.send(message(&url)).await,
            AttemptOutcome::Delivered { status: 204 }
        );
        let request = task.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("post /hooks/k?a=1 http/1.1\r\n"),
            "{request}"
        );
        for line in [
            format!("host: localhost:{port}\r\n"),
            "content-type: application/json\r\n".to_owned(),
            "webhook-id: evt_1\r\n".to_owned(),
            "webhook-timestamp: 1649367553\r\n".to_owned(),
            "content-length: 12\r\n".to_owned(),
        ] {
            assert!(request.contains(&line), "{line:?} in {request}");
        }
        let expected = signature(SECRET, "evt_1", 1_649_367_553, br#"{"type":"x"}"#).unwrap();
        assert!(
            request.contains(&format!(
                "webhook-signature: {}\r\n",
                expected.to_ascii_lowercase()
            )),
            "{request}"
        );

        let (port, _task) = one_answer(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(
            sender
                .send(message(&format!("http://127.0.0.1:{port}/")))
                .await,
            AttemptOutcome::Failed {
                status: Some(503),
                error: "HTTP 503".to_owned(),
                retry_after_ms: Some(7_000)
            }
        );
        // A redirect is not followed: it is a failure.
        let (port, _task) =
            one_answer("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n\r\n").await;
        assert!(matches!(
            sender
                .send(message(&format!("http://127.0.0.1:{port}/")))
                .await,
            AttemptOutcome::Failed {
                status: Some(302),
                ..
            }
        ));
        let (port, _task) = one_answer("HTTP/1.1 410 Gone\r\n\r\n").await;
        assert_eq!(
            sender
                .send(message(&format!("http://127.0.0.1:{port}/")))
                .await,
            AttemptOutcome::Gone
        );
        // Nobody listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let AttemptOutcome::Failed { status, error, .. } = sender
            .send(message(&format!("http://127.0.0.1:{port}/")))
            .await
        else {
            panic!("a refused connection fails")
        };
        assert_eq!(status, None);
        assert!(error.contains("connection"), "{error}");
    }
}
