//! The closed loops' HTTP client: one keep-alive HTTP/1.1 connection per
//! target, owned by one client task, sending requests built once.
//!
//! Why not the shared `reqwest` client the other scenarios use: the load
//! generator runs on the same two cores as the service it measures, and per
//! request `reqwest` parses and clones a URL, builds a header map, takes a
//! connection from a shared pool and arms a timer: 12.3 µs of the
//! generator's CPU a switch with 64 clients, against 6.9 µs on these
//! connections (`docs/performance.md`, "The load generator's client").
//! Here a request is a method, a prebuilt path and a
//! `Host` header on a connection the task already holds, so the figures
//! measure the service rather than the client, and the PING they are
//! compared with (one multiplexed `redis` connection) is taken no more
//! lightly than they are.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::net::TcpStream;

use crate::common::HTTP_TIMEOUT;

/// One request a client sends: to which target, and what.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// Index into the targets the client was built with.
    pub(crate) target: usize,
    pub(crate) method: Method,
    /// The path (and query), prebuilt: cloning a `Uri` shares its bytes.
    pub(crate) path: Uri,
}

impl Call {
    /// `method path` on `target`; `path` must be an origin form (`/...`).
    pub(crate) fn new(target: usize, method: Method, path: &str) -> Result<Self> {
        let path: Uri = path
            .parse()
            .with_context(|| format!("not a request path: {path:?}"))?;
        Ok(Self {
            target,
            method,
            path,
        })
    }
}

/// Where a target listens and what its `Host` header says.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    /// The target of a base URL (`http://127.0.0.1:PORT`, checked loopback
    /// by `common::http_targets`).
    pub(crate) fn of(url: &Url) -> Result<Self> {
        let addr = url
            .socket_addrs(|| Some(80))
            .with_context(|| format!("cannot resolve {url}"))?
            .into_iter()
            .next()
            .with_context(|| format!("{url} has no address"))?;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&host).context("a target's host is not a header value")?,
        })
    }
}

/// One client's connections, one per target, opened on first use and again
/// after a failure.
#[derive(Debug)]
pub(crate) struct Client {
    targets: Vec<Target>,
    conns: Vec<Option<SendRequest<Empty<Bytes>>>>,
}

impl Client {
    pub(crate) fn new(targets: Vec<Target>) -> Self {
        let conns = targets.iter().map(|_| None).collect();
        Self { targets, conns }
    }

    /// Sends `call` and reads the whole answer, within [`HTTP_TIMEOUT`];
    /// `Err` carries the kind of failure ("409", "timeout", "connect",
    /// "transport"), as `http_load::send` names them. A connection that
    /// failed is dropped and the next call opens another.
    pub(crate) async fn send(&mut self, call: &Call) -> Result<(), String> {
        match tokio::time::timeout(HTTP_TIMEOUT, self.exchange(call)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(status.to_string()),
            Ok(Err(kind)) => {
                self.conns[call.target] = None;
                Err(kind.to_owned())
            }
            Err(_) => {
                self.conns[call.target] = None;
                Err("timeout".to_owned())
            }
        }
    }

    async fn exchange(&mut self, call: &Call) -> Result<u16, &'static str> {
        let target = self.targets.get(call.target).ok_or("transport")?;
        let slot = &mut self.conns[call.target];
        if slot.as_ref().is_none_or(SendRequest::is_closed) {
            *slot = Some(connect(target.addr).await.map_err(|_| "connect")?);
        }
        let Some(sender) = slot.as_mut() else {
            unreachable!("a connection was just opened");
        };
        sender.ready().await.map_err(|_| "transport")?;
        let request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.clone())
            .header(HOST, target.host.clone())
            .body(Empty::new())
            .map_err(|_| "transport")?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| "transport")?;
        let status = response.status().as_u16();
        // The whole body, so that the connection is ready for the next one.
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "transport")?;
        Ok(status)
    }
}

/// A keep-alive connection to `addr` (`TCP_NODELAY`, as the service's own
/// clients and `reqwest` set it), its driver spawned on the runtime.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the client drops its sender or the peer closes.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_its_address_and_host_header() {
        let t = Target::of(&Url::parse("http://127.0.0.1:8080/").unwrap()).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
    }

    /// A loopback server that answers each connection's first request
    /// with `status` and closes it; returns its URL and the count of
    /// connections it accepted.
    fn one_answer_per_connection(
        status: &'static str,
    ) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let url = Url::parse(&format!("http://{host}")).unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                // A panic here ends the server, and the client's next call
                // fails to connect: the test sees it.
                let head = String::from_utf8_lossy(&got).to_lowercase();
                assert!(head.starts_with("post /v1/x http/1.1\r\n"), "{head}");
                assert!(head.contains(&format!("\r\nhost: {host}\r\n")), "{head}");
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    )
                    .as_bytes(),
                );
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_closed_connection_is_opened_again_and_statuses_are_reported() {
        let (url, accepted) = one_answer_per_connection("200 OK");
        let mut client = Client::new(vec![Target::of(&url).unwrap()]);
        let call = Call::new(0, Method::POST, "/v1/x").unwrap();
        for i in 0..3 {
            assert_eq!(client.send(&call).await, Ok(()), "call {i}");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);

        let (url, _) = one_answer_per_connection("409 Conflict");
        let mut client = Client::new(vec![Target::of(&url).unwrap()]);
        assert_eq!(client.send(&call).await, Err("409".to_owned()));
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_failure() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut client = Client::new(vec![Target::of(&url).unwrap()]);
        let call = Call::new(0, Method::GET, "/v1/time").unwrap();
        assert_eq!(client.send(&call).await, Err("connect".to_owned()));
    }

    #[test]
    fn a_call_keeps_its_path_and_refuses_what_is_not_one() {
        let c = Call::new(1, Method::POST, "/v1/sessions/x/switch").unwrap();
        assert_eq!(c.path.path(), "/v1/sessions/x/switch");
        assert_eq!(c.target, 1);
        assert!(Call::new(0, Method::GET, "not a path with spaces").is_err());
    }
}
