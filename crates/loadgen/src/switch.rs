//! `switch`: HTTP switch load. Creates and starts the sessions, then sends
//! `POST /v1/sessions/{id}/switch` round-robin over sessions and targets,
//! either closed loop (N clients, each sending its next request when the
//! last one answered) or open loop (a fixed rate, whatever the answers do).
//!
//! The open loop corrects for coordinated omission: each latency is taken
//! from the instant the request was *due*, not from when it could be sent,
//! so a stall shows in the percentiles instead of silently lowering the load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::Url;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, Recorder, bounded_count, bounded_secs, http_client, http_targets,
    prepare_sessions, session_config,
};

/// Arguments of `switch`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("load").required(true).args(["concurrency", "rate"])))]
pub(crate) struct Args {
    /// Base URLs of the instances (http://127.0.0.1:PORT); loopback only.
    #[arg(long = "target", num_args = 1.., required = true)]
    targets: Vec<String>,
    /// Closed loop: this many clients, each waiting for its answer.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: this many switches per second, answers or not.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Sessions to switch, created and started first.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds of load before measuring (connections opened, caches warm).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: most requests outstanding at once (memory bound).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
}

/// What the measured window produced.
#[derive(Debug, Default)]
struct Tally {
    latency: Recorder,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, outcome: Result<(), String>, latency: Duration) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                self.latency.record(latency);
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn absorb(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latency.merge(&other.latency);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// One switch; `Err` carries the kind of failure ("409", "timeout", ...).
async fn switch(client: &reqwest::Client, url: Url) -> Result<(), String> {
    let response = client.post(url).send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }
    })?;
    let status = response.status();
    // Read the body so the connection goes back to the pool.
    let _ = response.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(status.as_u16().to_string())
    }
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(&args.targets)?;
    let duration = bounded_secs("--duration", args.duration)?;
    let warmup = if args.warmup > 0.0 {
        bounded_secs("--warmup", args.warmup)?
    } else {
        Duration::ZERO
    };
    let sessions = bounded_count("--sessions", args.sessions)?;
    let client = http_client()?;

    eprintln!("switch: preparing {sessions} sessions");
    let prepared = prepare_sessions(&client, &targets, sessions, true, 32, |_| {
        session_config(&[LONG_CLOCK_MS, LONG_CLOCK_MS])
    })
    .await?;
    // urls[target][session]
    let urls: Arc<Vec<Vec<Url>>> = Arc::new(
        targets
            .iter()
            .map(|t| {
                prepared
                    .iter()
                    .map(|s| t.join(&format!("/v1/sessions/{}/switch", s.id)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?,
    );

    let cpu = CpuMeter::start();
    let (mode, tally, window) = match (args.concurrency, args.rate) {
        (Some(n), None) => {
            let n = bounded_count("--concurrency", n)?;
            eprintln!("switch: closed loop, {n} clients, {duration:?} after {warmup:?} warm-up");
            let (tally, window) = closed_loop(&client, &urls, n, warmup, duration).await?;
            (json!({"mode": "closed", "concurrency": n}), tally, window)
        }
        (None, Some(rate)) => {
            ensure!(
                rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0,
                "--rate must be in (0, 1e6], not {rate}"
            );
            eprintln!("switch: open loop, {rate}/s, {duration:?} after {warmup:?} warm-up");
            let tally = open_loop(
                &client,
                &urls,
                rate,
                args.max_in_flight.max(1),
                warmup,
                duration,
            )
            .await?;
            (json!({"mode": "open", "rate": rate}), tally, duration)
        }
        _ => anyhow::bail!("give exactly one of --concurrency and --rate"),
    };
    let throughput = tally.ok as f64 / window.as_secs_f64();
    let latency = tally.latency.summary();
    eprintln!(
        "switch: {throughput:.0}/s ok, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, errors {:?}",
        latency.p50_ms, latency.p99_ms, latency.p999_ms, latency.max_ms, tally.errors
    );
    let mut report = json!({
        "scenario": "switch",
        "targets": targets.len(),
        "sessions": sessions,
        "duration_s": window.as_secs_f64(),
        "ok": tally.ok,
        "errors": tally.errors,
        "throughput_per_s": throughput,
        "latency": latency,
        "loadgen_cpu_percent": cpu.percent(),
    });
    if let (Some(r), Some(m)) = (report.as_object_mut(), mode.as_object()) {
        r.extend(m.clone());
    }
    Ok(report.to_string())
}

/// N clients, each on its own slice of the sessions, targets in turn.
/// Returns the tally of requests started in the measured window and the
/// window's length.
async fn closed_loop(
    client: &reqwest::Client,
    urls: &Arc<Vec<Vec<Url>>>,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(Tally, Duration)> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let sessions = urls.first().map_or(0, Vec::len);
    let targets = urls.len();
    let mut tasks = Vec::with_capacity(clients);
    for w in 0..clients {
        let client = client.clone();
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            // Disjoint sessions per client when there are enough of them,
            // so clients do not race each other's compare-and-set.
            let mine: Vec<usize> = if sessions >= clients {
                (w..sessions).step_by(clients).collect()
            } else {
                vec![w % sessions]
            };
            let mut tally = Tally::default();
            let mut i = w;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let url = urls[i % targets][mine[i % mine.len()]].clone();
                let outcome = switch(&client, url).await;
                if sent >= measure_from {
                    tally.add(outcome, sent.elapsed());
                }
                i += 1;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.absorb(task.await.context("a client task failed")?);
    }
    let window = Instant::now().saturating_duration_since(measure_from);
    Ok((total, window.max(duration)))
}

/// A fixed rate: request `i` is due at `start + i / rate`, sent at once when
/// due (or as soon as fewer than `max_in_flight` are outstanding), and its
/// latency counts from when it was due.
async fn open_loop(
    client: &reqwest::Client,
    urls: &Arc<Vec<Vec<Url>>>,
    rate: f64,
    max_in_flight: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Tally> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let sessions = urls.first().map_or(0, Vec::len);
    let targets = urls.len();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let idx = usize::try_from(i).unwrap_or(usize::MAX);
        let url = urls[idx % targets][idx % sessions].clone();
        let client = client.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let outcome = switch(&client, url).await;
            let latency = due.elapsed();
            if due >= measure_from {
                tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(outcome, latency);
            }
            drop(permit);
        });
        i += 1;
    }
    // Wait for the outstanding requests (each is bounded by the HTTP timeout).
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        crate::common::HTTP_TIMEOUT + Duration::from_secs(1),
        in_flight.acquire_many(all),
    )
    .await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(tally)
}
