//! What the scenarios share: the loopback guard, latency histograms,
//! CPU and memory readings, and the HTTP and WebSocket calls against the
//! service.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use futures_util::stream;
use hdrhistogram::Histogram;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The longest any scenario may run, so a typo cannot start an endless load.
pub(crate) const MAX_DURATION_S: f64 = 1800.0;
/// The most sockets or sessions any scenario opens.
pub(crate) const MAX_COUNT: usize = 200_000;
/// Every HTTP call gives up after this.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Total time per participant for sessions that must not time out during a
/// run: the contract's maximum, 24 h.
pub(crate) const LONG_CLOCK_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------
// Loopback only.

/// Parses `raw` and refuses it unless its host is a loopback address
/// (`localhost`, 127.0.0.0/8 or `::1`): load goes nowhere else.
pub(crate) fn loopback_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw).with_context(|| format!("{raw:?} is not a URL"))?;
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(
        loopback,
        "refusing target {raw:?}: kairos-loadgen sends load to loopback addresses only \
         (localhost, 127.0.0.0/8, [::1])"
    );
    Ok(url)
}

/// The `http://` targets of a scenario, each checked by [`loopback_url`].
pub(crate) fn http_targets(raw: &[String]) -> Result<Vec<Url>> {
    ensure!(!raw.is_empty(), "give at least one --target");
    raw.iter()
        .map(|r| {
            let url = loopback_url(r)?;
            ensure!(
                url.scheme() == "http",
                "target {r:?} must be an http:// URL"
            );
            Ok(url)
        })
        .collect()
}

/// Checks a duration argument: positive and at most [`MAX_DURATION_S`].
pub(crate) fn bounded_secs(what: &str, secs: f64) -> Result<Duration> {
    ensure!(
        secs.is_finite() && secs > 0.0 && secs <= MAX_DURATION_S,
        "{what} must be in (0, {MAX_DURATION_S}] seconds, not {secs}"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Checks a count argument: at least one and at most [`MAX_COUNT`].
pub(crate) fn bounded_count(what: &str, n: usize) -> Result<usize> {
    ensure!(
        (1..=MAX_COUNT).contains(&n),
        "{what} must be in 1..={MAX_COUNT}, not {n}"
    );
    Ok(n)
}

// ---------------------------------------------------------------------------
// Latency.

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub(crate) struct Recorder(Histogram<u64>);

impl Recorder {
    pub(crate) fn new() -> Self {
        // The bounds are constants that the library accepts.
        #[allow(clippy::unwrap_used)]
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap())
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.max(1));
    }

    /// Records a latency given in (possibly fractional) milliseconds; a
    /// negative value (clock noise) counts as the smallest one.
    pub(crate) fn record_ms(&mut self, ms: f64) {
        let us = (ms * 1000.0).clamp(1.0, 600_000_000.0);
        // In range by the clamp above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.0.saturating_record(us as u64);
    }

    pub(crate) fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail; saturate anyway.
        for v in other.0.iter_recorded() {
            self.0
                .saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }

    pub(crate) fn summary(&self) -> Percentiles {
        let h = &self.0;
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

// ---------------------------------------------------------------------------
// CPU, memory, file descriptors.

/// CPU seconds (user + system, all threads) used by process `pid` so far,
/// from `/proc/<pid>/stat` (Linux's user-visible clock tick is 1/100 s).
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, i.e. the 12th and 13th here.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Our own CPU use over a scenario, as a share of one core.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    wall: Instant,
    cpu: Option<f64>,
}

impl CpuMeter {
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds("self"),
        }
    }

    /// Percent of one core used since [`CpuMeter::start`] (200 = two cores busy).
    pub(crate) fn percent(&self) -> Option<f64> {
        let used = cpu_seconds("self")? - self.cpu?;
        let wall = self.wall.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * used / wall)
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS in {path}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable VmRSS line {line:?}"))
}

/// Raises our open-file limit to at least `want` if the system lets us
/// (the hard limit too when we may, as root), and returns the soft limit
/// now in force. Each socket is a file descriptor.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    if let Ok((soft, _)) = rlimit::getrlimit(Resource::NOFILE)
        && soft >= want
    {
        return soft;
    }
    if rlimit::setrlimit(Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

/// Errors if `sockets` more descriptors (plus some slack) do not fit in our limit.
pub(crate) fn ensure_descriptors(sockets: usize) -> Result<()> {
    let want = u64::try_from(sockets).unwrap_or(u64::MAX) + 1024;
    let got = raise_nofile(want);
    ensure!(
        got >= want,
        "{sockets} sockets need an open-file limit of about {want}, and only {got} could be set: \
         raise it first (`ulimit -n {want}`, as root if the hard limit is lower)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP.

/// The HTTP client of every scenario: keep-alive, no delay, bounded calls,
/// idle connections dropped before the server's keep-alive closes them
/// (`kairos_client::POOL_IDLE_TIMEOUT`).
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(kairos_client::POOL_IDLE_TIMEOUT)
        .build()
        .context("could not build the HTTP client")
}

/// A session config: per-participant clocks with the given totals.
pub(crate) fn session_config(totals_ms: &[i64]) -> Value {
    let participants: Vec<Value> = totals_ms
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"participant_id": format!("p{i}"), "total_time_ms": t}))
        .collect();
    json!({"sync_mode": "per_participant", "participants": participants})
}

/// The fields of a session view the scenarios read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ViewLite {
    pub(crate) session_id: String,
    pub(crate) version: u64,
    #[serde(default)]
    pub(crate) server_time_ms: i64,
    #[serde(default)]
    pub(crate) participants: Vec<ParticipantLite>,
}

/// The fields of a participant's view the scenarios read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ParticipantLite {
    pub(crate) time_remaining_ms: i64,
    pub(crate) is_active: bool,
}

impl ViewLite {
    /// When the running clock runs out, in server time, if one runs.
    pub(crate) fn deadline_ms(&self) -> Option<i64> {
        self.participants
            .iter()
            .find(|p| p.is_active)
            .map(|p| self.server_time_ms + p.time_remaining_ms)
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

/// Sends a prepared request and returns the view of a `{"data": view}` answer.
pub(crate) async fn view_call(request: reqwest::RequestBuilder) -> Result<ViewLite> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let data: Data<ViewLite> =
        serde_json::from_slice(&body).context("the answer is not a session view")?;
    Ok(data.data)
}

/// A session set up on one of the targets.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) id: String,
    /// Its view after the last set-up call.
    pub(crate) view: ViewLite,
}

/// Creates `count` sessions (config `config(i)`), spread over `targets`, and
/// starts them when `start`; `parallel` calls at a time.
pub(crate) async fn prepare_sessions(
    client: &reqwest::Client,
    targets: &[Url],
    count: usize,
    start: bool,
    parallel: usize,
    config: impl Fn(usize) -> Value,
) -> Result<Vec<Prepared>> {
    let started = Instant::now();
    let results: Vec<Result<Prepared>> = stream::iter(0..count)
        .map(|i| {
            let target = &targets[i % targets.len()];
            let body = config(i);
            async move {
                let created =
                    view_call(client.post(target.join("/v1/sessions")?).json(&body)).await?;
                let view = if start {
                    let url = target.join(&format!("/v1/sessions/{}/start", created.session_id))?;
                    view_call(client.post(url)).await?
                } else {
                    created
                };
                Ok(Prepared {
                    id: view.session_id.clone(),
                    view,
                })
            }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    let sessions = results
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .context("setting up the sessions failed")?;
    eprintln!(
        "  {count} sessions {} in {:.1} s",
        if start {
            "created and started"
        } else {
            "created"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(sessions)
}

// ---------------------------------------------------------------------------
// WebSockets.

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Source addresses for client sockets, taken in turn: one loopback address
/// has about 28,000 ephemeral ports, so tens of thousands of sockets to one
/// server port need several (all of 127.0.0.0/8 is local on Linux).
#[derive(Debug)]
pub(crate) struct SourceAddrs {
    next: AtomicUsize,
    count: usize,
}

impl SourceAddrs {
    /// Enough addresses for `sockets` at 20,000 per address, at least 2.
    pub(crate) fn for_sockets(sockets: usize) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicUsize::new(0),
            count: (sockets / 20_000 + 2).min(250),
        })
    }

    pub(crate) fn take(&self) -> Ipv4Addr {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        // 127.0.0.2 ..= 127.0.0.251; `count` is at most 250.
        Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i).unwrap_or(0))
    }
}

/// Opens a WebSocket on `target` for `session_id` from `source`, with a
/// small read buffer (tungstenite allocates it eagerly; its default is
/// 128 KiB, far too much for thousands of idle sockets).
pub(crate) async fn ws_connect(
    target: &Url,
    session_id: &str,
    source: Ipv4Addr,
    read_buffer: usize,
) -> Result<Ws> {
    let addr = target
        .socket_addrs(|| Some(80))?
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .context("the target has no IPv4 address")?;
    let socket = TcpSocket::new_v4()?;
    // Reuse ports left in TIME_WAIT by an earlier scenario.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let url = format!(
        "ws://{}:{}/ws?sessionId={session_id}",
        addr.ip(),
        addr.port()
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    Ok(ws)
}

/// [`ws_connect`] with up to three attempts: a burst of connects can
/// overflow the server's accept queue, which is not what is measured.
pub(crate) async fn ws_connect_retry(
    target: &Url,
    session_id: &str,
    sources: &SourceAddrs,
    read_buffer: usize,
) -> Result<Ws> {
    let mut last = None;
    for attempt in 0..3u64 {
        match ws_connect(target, session_id, sources.take(), read_buffer).await {
            Ok(ws) => return Ok(ws),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// The fields of a server message the scenarios read.
#[derive(Debug, Deserialize)]
pub(crate) struct ServerMessage {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) state: Option<StateLite>,
    #[serde(default)]
    pub(crate) event: Option<EventLite>,
}

/// The part of a message's `state` the scenarios read.
#[derive(Debug, Deserialize)]
pub(crate) struct StateLite {
    pub(crate) version: u64,
    #[serde(default)]
    pub(crate) status: String,
    /// When the session started (`time-controls` checks scheduled starts).
    #[serde(default)]
    pub(crate) session_started_at_ms: Option<i64>,
}

/// The part of a message's `event` the scenarios read.
#[derive(Debug, Deserialize)]
pub(crate) struct EventLite {
    pub(crate) event_type: String,
    pub(crate) at_ms: i64,
}

/// Wall-clock milliseconds since the epoch, with microseconds.
pub(crate) fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The server's clock minus ours, in ms, from the `GET /v1/time` probe
/// with the shortest round trip of a few.
pub(crate) async fn clock_offset_ms(client: &reqwest::Client, target: &Url) -> Result<f64> {
    #[derive(Deserialize)]
    struct Time {
        timestamp_ms: i64,
    }
    let url = target.join("/v1/time")?;
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..20 {
        let sent = now_ms();
        let time: Time = client.get(url.clone()).send().await?.json().await?;
        let received = now_ms();
        let rtt = received - sent;
        let offset = time.timestamp_ms as f64 + 0.5 - (sent + received) / 2.0;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
    }
    best.map(|(_, o)| o).context("no clock probe answered")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.3.2.1:1/x",
            "http://localhost:9",
            "http://[::1]:80",
            "redis://127.0.0.1:6379/",
        ] {
            assert!(loopback_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://example.com",
            "http://0.0.0.0:80",
            "redis://172.16.0.1:6379/",
            "not a url",
        ] {
            assert!(loopback_url(bad).is_err(), "{bad}");
        }
        assert!(http_targets(&["redis://127.0.0.1:1/".into()]).is_err());
        assert!(http_targets(&[]).is_err());
    }

    #[test]
    fn bounds_refuse_endless_or_huge_runs() {
        assert!(bounded_secs("d", 0.0).is_err());
        assert!(bounded_secs("d", f64::INFINITY).is_err());
        assert!(bounded_secs("d", 1e9).is_err());
        assert_eq!(bounded_secs("d", 1.5).unwrap(), Duration::from_millis(1500));
        assert!(bounded_count("n", 0).is_err());
        assert!(bounded_count("n", MAX_COUNT + 1).is_err());
    }

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut r = Recorder::new();
        for us in 1..=1000u64 {
            r.record(Duration::from_micros(us * 10));
        }
        let mut other = Recorder::new();
        other.record_ms(-3.0);
        r.merge(&other);
        let s = r.summary();
        assert_eq!(s.count, 1001);
        assert!((s.p50_ms - 5.0).abs() < 0.05, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.05, "{s:?}");
        assert!(s.p99_ms <= s.p999_ms && s.p999_ms <= s.max_ms);
        assert_eq!(Recorder::new().summary(), Percentiles::default());
    }

    #[test]
    fn deadlines_come_from_the_active_clock() {
        let v: ViewLite = serde_json::from_value(json!({
            "session_id": "s", "version": 2, "status": "running", "server_time_ms": 1000,
            "participants": [
                {"time_remaining_ms": 5, "is_active": false},
                {"time_remaining_ms": 700, "is_active": true}
            ]
        }))
        .unwrap();
        assert_eq!(v.deadline_ms(), Some(1700));
    }

    #[test]
    fn source_addresses_rotate_over_loopback() {
        let s = SourceAddrs::for_sockets(50_000);
        let a: Vec<Ipv4Addr> = (0..5).map(|_| s.take()).collect();
        assert!(a.iter().all(Ipv4Addr::is_loopback));
        assert_eq!(a[0], a[4]);
        assert_ne!(a[0], a[1]);
    }
}
