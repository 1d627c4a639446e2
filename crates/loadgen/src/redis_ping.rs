//! `redis-ping`: the bare Redis round trip, the yardstick of the switch.
//! N clients send `PING` in a closed loop over multiplexed connections
//! (by default one, as the server's store uses), and the round trips go
//! into the same kind of histogram as the switches.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::common::{CpuMeter, Recorder, bounded_count, bounded_secs, loopback_url};

/// Arguments of `redis-ping`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The Redis server (redis://127.0.0.1:PORT/); loopback only.
    #[arg(long)]
    url: String,
    /// Clients sending PING, each waiting for its answer.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Multiplexed connections the clients share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let url = loopback_url(&args.url)?;
    ensure!(url.scheme() == "redis", "--url must be a redis:// URL");
    let concurrency = bounded_count("--concurrency", args.concurrency)?;
    let connections = bounded_count("--connections", args.connections)?;
    let duration = bounded_secs("--duration", args.duration)?;
    let warmup = if args.warmup > 0.0 {
        bounded_secs("--warmup", args.warmup)?
    } else {
        Duration::ZERO
    };
    // `TCP_NODELAY`, as the server's store and bus connect
    // (`redis_conn::target::tcp_settings`), so the floor is the one they stand on.
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .context("bad Redis URL")?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).context("bad Redis URL")?;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(
            client
                .get_multiplexed_async_connection()
                .await
                .context("cannot connect to Redis")?,
        );
    }
    eprintln!("redis-ping: {concurrency} clients over {connections} connection(s), {duration:?}");

    let cpu = CpuMeter::start();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let mut conn = conns[w % connections].clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Recorder::new();
            let mut errors = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let reply: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if sent >= measure_from {
                    match reply {
                        Ok(_) => latency.record(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latency, errors)
        }));
    }
    let mut latency = Recorder::new();
    let mut errors = 0u64;
    for task in tasks {
        let (l, e) = task.await.context("a client task failed")?;
        latency.merge(&l);
        errors += e;
    }
    let window = Instant::now()
        .saturating_duration_since(measure_from)
        .max(duration);
    let summary = latency.summary();
    let throughput = summary.count as f64 / window.as_secs_f64();
    eprintln!(
        "redis-ping: {throughput:.0}/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        summary.p50_ms, summary.p99_ms, summary.max_ms
    );
    Ok(json!({
        "scenario": "redis-ping",
        "concurrency": concurrency,
        "connections": connections,
        "duration_s": window.as_secs_f64(),
        "ok": summary.count,
        "errors": errors,
        "throughput_per_s": throughput,
        "latency": summary,
        "loadgen_cpu_percent": cpu.percent(),
    })
    .to_string())
}
