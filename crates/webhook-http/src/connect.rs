//! The connector behind the sender's connection pool: hyper-util's pooled
//! client asks it for a new connection to an origin (scheme, host, port)
//! only when no idle one is left, and it opens that connection the way the
//! SSRF guard allows: the host resolved here, the addresses the
//! [`UrlPolicy`] refuses dropped, TCP to the first allowed address that
//! answers, then TLS (rustls on ring) for `https`. The guard therefore runs
//! for every new connection, so a name re-pointed at an internal address
//! (DNS rebinding) reaches nothing; a pooled connection stays bound to the
//! address that was checked when it was opened.
//!
//! Each connection carries a use counter ([`Uses`]) so that the sender can
//! tell a failure on a reused connection (the receiver closed it while it
//! sat idle) from one on a fresh connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::guard::{self, UrlPolicy, allowed, forbidden_kind};

/// Why no connection could be opened; the message names an address at
/// most, never a URL's path or query.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// How many requests a connection has carried; shared by the clones the
/// pool hands out.
#[derive(Debug, Clone, Default)]
pub struct Uses(Arc<AtomicU64>);

impl Uses {
    /// Counts one more request; how many the connection carried before it.
    pub fn mark(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Opens guarded connections; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    pub(crate) policy: UrlPolicy,
    pub(crate) tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.open(uri).await })
    }
}

impl Connector {
    /// A connection to `uri`'s origin, at an address the policy allows.
    async fn open(self, uri: Uri) -> Result<Stream, ConnectError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.policy.allow_http => false,
            _ => return Err(ConnectError("scheme refused".to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError("the url has no host".to_owned()))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let (addrs, server_name) = if let Ok(ip) = bare.parse::<IpAddr>() {
            if let Some(kind) = forbidden_kind(ip).filter(|_| !allowed(ip, self.policy)) {
                return Err(ConnectError(
                    guard::UrlError::Forbidden { addr: ip, kind }.to_string(),
                ));
            }
            (
                vec![SocketAddr::new(ip, port)],
                ServerName::IpAddress(ip.into()),
            )
        } else {
            let resolved = guard::resolve(bare, port)
                .await
                .map_err(|e| ConnectError(e.to_string()))?;
            let kept: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| allowed(a.ip(), self.policy))
                .collect();
            if kept.is_empty() {
                let first = resolved
                    .first()
                    .map(SocketAddr::ip)
                    .ok_or_else(|| ConnectError(format!("host {bare} does not resolve")))?;
                return Err(ConnectError(
                    guard::UrlError::Forbidden {
                        addr: first,
                        kind: forbidden_kind(first).unwrap_or("refused"),
                    }
                    .to_string(),
                ));
            }
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|e| ConnectError(format!("not a TLS server name: {e}")))?;
            (kept, name)
        };
        let stream = tcp(&addrs).await?;
        let io = if tls {
            let stream = self
                .tls
                .connect(server_name, stream)
                .await
                .map_err(|e| ConnectError(format!("TLS handshake failed: {e}")))?;
            Io::Tls(Box::new(TokioIo::new(stream)))
        } else {
            Io::Plain(TokioIo::new(stream))
        };
        Ok(Stream {
            io,
            uses: Uses::default(),
        })
    }
}

/// The first of `addrs` that accepts a connection.
async fn tcp(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
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
    Err(ConnectError(last))
}

enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// One open connection, plain or TLS, with its use counter.
pub struct Stream {
    io: Io,
    uses: Uses,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.io, Io::Tls(_));
        f.debug_struct("Stream")
            .field("tls", &tls)
            .field("uses", &self.uses)
            .finish()
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.uses.clone())
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tower_service::Service;

    use super::*;

    fn connector(policy: UrlPolicy) -> Connector {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Connector {
            policy,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// The connector checks on its own, whatever the sender checked before:
    /// a literal or a name resolving to loopback is refused without a
    /// connection unless private addresses are allowed.
    #[tokio::test]
    async fn every_new_connection_is_guarded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut strict = connector(UrlPolicy {
            allow_http: true,
            allow_private: false,
        });
        for uri in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::1]:{port}/"),
        ] {
            let error = strict.call(uri.parse().unwrap()).await.unwrap_err();
            assert!(error.0.contains("loopback"), "{uri}: {error}");
        }
        let mut no_http = connector(UrlPolicy {
            allow_http: false,
            allow_private: true,
        });
        let error = no_http
            .call(format!("http://127.0.0.1:{port}/").parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.0, "scheme refused");
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "nothing connected");

        let mut local = connector(UrlPolicy {
            allow_http: true,
            allow_private: true,
        });
        let stream = local
            .call(format!("http://127.0.0.1:{port}/").parse().unwrap())
            .await
            .unwrap();
        let uses = {
            let mut extras = hyper::http::Extensions::new();
            stream.connected().get_extras(&mut extras);
            extras.get::<Uses>().cloned().unwrap()
        };
        assert_eq!(uses.mark(), 0);
        assert_eq!(uses.mark(), 1);
        assert!(listener.accept().await.is_ok());
    }
}
