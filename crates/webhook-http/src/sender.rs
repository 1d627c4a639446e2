//! One delivery attempt: sign, POST, and turn what happened into the
//! domain's [`AttemptOutcome`] (contract section 9).
//!
//! Each attempt opens one HTTP/1.1 connection (hyper) to an address the
//! [`UrlPolicy`] allows, resolved here rather than by a client library, so
//! whatever the name resolves to at send time the connection goes to a
//! checked address (DNS rebinding reaches nothing). No redirect is
//! followed (a 3xx is a failure), no proxy is used, and the whole attempt,
//! connection and TLS included, gives up after [`SEND_TIMEOUT`]. TLS is
//! rustls on the ring provider with the web's public roots. The response's
//! body is never read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, RETRY_AFTER, USER_AGENT};
use hyper_util::rt::TokioIo;
use kairos_domain::webhook::AttemptOutcome;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use url::{Host, Position, Url};

use crate::guard::{self, UrlPolicy, allowed, forbidden_kind};
use crate::sign::signature;

/// A 2xx within this long is a success; anything slower is a failure.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured (the contract's last interval).
pub const MAX_RETRY_AFTER_MS: i64 = 24 * 3_600_000;
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

/// Sends webhooks; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    tls: tokio_rustls::TlsConnector,
    policy: UrlPolicy,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
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
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            policy,
        })
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
        let (url, port) = match guard::parse_url(message.url, self.policy) {
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
        let request = hyper::Request::post(&url[Position::BeforePath..Position::AfterQuery])
            .header(HOST, &url[Position::BeforeHost..Position::AfterPort])
            .header(USER_AGENT, AGENT)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", message.webhook_id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::copy_from_slice(message.body.as_bytes())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return failed(format!("cannot build the request: {e}")),
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.post(&url, port, request)).await {
            Ok(Ok(headers)) => {
                let (status, headers) = headers;
                let retry_after_ms = retry_after_ms(&headers, message.now_ms);
                // 2xx delivered, 410 gone, anything else (a redirect
                // included) a failure to retry.
                AttemptOutcome::from_status(status, retry_after_ms)
            }
            Ok(Err(error)) => failed(error),
            Err(_) => failed(format!("timed out after {} s", SEND_TIMEOUT.as_secs())),
        }
    }

    /// Connects to an allowed address of the URL's host and sends `request`;
    /// the answer's status and headers.
    async fn post(
        &self,
        url: &Url,
        port: u16,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, HeaderMap), String> {
        let (addrs, server_name) = match url.host() {
            Some(Host::Ipv4(ip)) => (
                vec![SocketAddr::new(ip.into(), port)],
                ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
            ),
            Some(Host::Ipv6(ip)) => (
                vec![SocketAddr::new(ip.into(), port)],
                ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
            ),
            Some(Host::Domain(name)) => {
                let resolved = guard::resolve(name, port)
                    .await
                    .map_err(|e| e.to_string())?;
                let kept: Vec<SocketAddr> = resolved
                    .iter()
                    .copied()
                    .filter(|a| allowed(a.ip(), self.policy))
                    .collect();
                if kept.is_empty() {
                    let first = resolved[0].ip();
                    return Err(guard::UrlError::Forbidden {
                        addr: first,
                        kind: forbidden_kind(first).unwrap_or("refused"),
                    }
                    .to_string());
                }
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("not a TLS server name: {e}"))?;
                (kept, name)
            }
            None => return Err("the url has no host".to_owned()),
        };
        let stream = connect(&addrs).await?;
        if url.scheme() == "https" {
            let tls = self
                .tls
                .connect(server_name, stream)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(stream), request).await
        }
    }
}

/// The first of `addrs` that accepts a connection.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = format!("connection to {addr} failed: {e}"),
        }
    }
    Err(last)
}

/// One request over a fresh HTTP/1.1 connection; the answer's head.
async fn exchange<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, HeaderMap), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let mut connection = std::pin::pin!(connection);
    let mut send = std::pin::pin!(sender.send_request(request));
    // The connection is driven until the answer's head arrives; when it
    // ends first (the receiver answered and closed), the answer is ready.
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        ended = &mut connection => {
            ended.map_err(|e| format!("connection failed: {e}"))?;
            (&mut send).await
        }
    }
    .map_err(|e| format!("request failed: {e}"))?;
    // The body is never read: dropping the response and the connection
    // closes it.
    let (head, _) = response.into_parts();
    Ok((head.status.as_u16(), head.headers))
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
