//! `connections`: many idle WebSockets on one instance, and what they cost
//! it in resident memory: `VmRSS` of the server process (`--server-pid`)
//! before the sockets, once they are all open and synchronised, and after
//! holding them, divided by the sockets held.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, bounded_count, bounded_secs, ensure_descriptors, http_client,
    http_targets, prepare_sessions, rss_kib, session_config,
};
use crate::fleet::{Fleet, Handler, Plan};

/// Arguments of `connections`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URL of the one instance (http://127.0.0.1:PORT); loopback only.
    #[arg(long)]
    target: String,
    /// WebSockets to open and hold.
    #[arg(long)]
    count: usize,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// The server's process id, whose memory is read from /proc.
    #[arg(long)]
    server_pid: u32,
    /// Sessions the sockets watch (in turn).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Read buffer per client socket, bytes (tungstenite allocates it eagerly).
    #[arg(long, default_value_t = 1024)]
    read_buffer: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(std::slice::from_ref(&args.target))?;
    let count = bounded_count("--count", args.count)?;
    let hold = bounded_secs("--hold", args.hold)?;
    let sessions = bounded_count("--sessions", args.sessions)?;
    let pid = args.server_pid.to_string();
    ensure_descriptors(count)?;
    let client = http_client()?;

    eprintln!("connections: preparing {sessions} sessions");
    let prepared = prepare_sessions(&client, &targets, sessions, false, 32, |_| {
        session_config(&[LONG_CLOCK_MS, LONG_CLOCK_MS])
    })
    .await?;
    // Let the allocations of the set-up settle before the first reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(&pid)?;

    eprintln!("connections: opening {count} WebSockets");
    let cpu = CpuMeter::start();
    let opening = Instant::now();
    let plans = (0..count)
        .map(|i| Plan {
            target: targets[0].clone(),
            session_id: prepared[i % sessions].id.clone(),
            session: i % sessions,
        })
        .collect();
    let idle: Arc<Handler> = Arc::new(|_, _, _, _| {});
    let fleet = Fleet::open(plans, args.read_buffer, args.parallel, idle);
    let ready = fleet.wait_ready(Duration::from_secs(300)).await;
    let open_s = opening.elapsed().as_secs_f64();
    ensure!(ready > 0, "no WebSocket could be opened");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_rss = rss_kib(&pid)?;
    let own_rss = rss_kib("self").ok();

    eprintln!("connections: holding {ready} sockets for {hold:?}");
    let mut peak = open_rss;
    let held_from = Instant::now();
    while held_from.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(&pid)?);
    }
    let after = rss_kib(&pid)?;
    let failed = fleet.failed();
    let logs = fleet.stop().await;
    let dropped = logs.iter().filter(|l| l.dropped).count();
    let held = ready.saturating_sub(dropped).max(1);
    let per_socket = |rss: u64| rss.saturating_sub(before) as f64 / held as f64;
    eprintln!(
        "connections: {ready} open ({failed} failed, {dropped} dropped while held); server RSS {before} KiB -> {after} KiB, {:.2} KiB per socket",
        per_socket(after)
    );
    Ok(json!({
        "scenario": "connections",
        "requested": count,
        "open": ready,
        "failed": failed,
        "dropped": dropped,
        "open_seconds": open_s,
        "hold_s": hold.as_secs_f64(),
        "sessions": sessions,
        "rss_before_kib": before,
        "rss_open_kib": open_rss,
        "rss_after_kib": after,
        "rss_peak_kib": peak,
        "kib_per_socket": per_socket(after),
        "kib_per_socket_peak": per_socket(peak),
        "loadgen_rss_kib": own_rss,
        "loadgen_cpu_percent": cpu.percent(),
    })
    .to_string())
}
