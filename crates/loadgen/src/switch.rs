//! `switch`: HTTP switch load. Creates and starts the sessions, then sends
//! `POST /v1/sessions/{id}/switch` round-robin over sessions and targets,
//! either closed loop (N clients, each sending its next request when the
//! last one answered) or open loop (a fixed rate, whatever the answers do).
//!
//! The open loop corrects for coordinated omission: each latency is taken
//! from the instant the request was *due*, not from when it could be sent,
//! so a stall shows in the percentiles instead of silently lowering the load.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use hyper::Method;
use reqwest::Url;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, bounded_count, bounded_secs, http_client, http_targets,
    prepare_sessions, session_config,
};
use crate::http_load::{self, Tally};
use crate::lean_http::{Call, Target};

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
    // paths[session]
    let paths: Vec<String> = prepared
        .iter()
        .map(|s| format!("/v1/sessions/{}/switch", s.id))
        .collect();

    let cpu = CpuMeter::start();
    let (mode, tally, window) = match (args.concurrency, args.rate) {
        (Some(n), None) => {
            let n = bounded_count("--concurrency", n)?;
            eprintln!("switch: closed loop, {n} clients, {duration:?} after {warmup:?} warm-up");
            let (tally, window) = closed_loop(&targets, &paths, n, warmup, duration).await?;
            (json!({"mode": "closed", "concurrency": n}), tally, window)
        }
        (None, Some(rate)) => {
            ensure!(
                rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0,
                "--rate must be in (0, 1e6], not {rate}"
            );
            eprintln!("switch: open loop, {rate}/s, {duration:?} after {warmup:?} warm-up");
            // urls[target][session]
            let urls: Arc<Vec<Vec<Url>>> = Arc::new(
                targets
                    .iter()
                    .map(|t| paths.iter().map(|path| t.join(path)).collect())
                    .collect::<Result<Vec<_>, _>>()?,
            );
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
    let mut report = tally.report("switch", window, &cpu);
    if let (Some(r), Some(m)) = (report.as_object_mut(), mode.as_object()) {
        r.extend(m.clone());
        r.insert("targets".to_owned(), json!(targets.len()));
        r.insert("sessions".to_owned(), json!(sessions));
    }
    Ok(report.to_string())
}

/// N clients, each on its own slice of the sessions (`paths`: each one's
/// switch path) and its own connections (`lean_http`), targets in turn.
/// Returns the tally of requests started in the measured window and the
/// window's length.
async fn closed_loop(
    targets: &[Url],
    paths: &[String],
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(Tally, Duration)> {
    let ends: Vec<Target> = targets.iter().map(Target::of).collect::<Result<_>>()?;
    // calls[target][session]
    let calls: Arc<Vec<Vec<Call>>> = Arc::new(
        (0..ends.len())
            .map(|t| {
                paths
                    .iter()
                    .map(|path| Call::new(t, Method::POST, path))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let sessions = paths.len();
    let targets = ends.len();
    http_load::closed_loop(&ends, clients, warmup, duration, |w| {
        // Disjoint sessions per client when there are enough of them,
        // so clients do not race each other's compare-and-set.
        let mine: Vec<usize> = if sessions >= clients {
            (w..sessions).step_by(clients).collect()
        } else {
            vec![w % sessions]
        };
        let calls = calls.clone();
        let mut i = w;
        move || {
            let call = calls[i % targets][mine[i % mine.len()]].clone();
            i += 1;
            call
        }
    })
    .await
}

/// A fixed rate: request `i` is due at `start + i / rate`, sent at once when
/// due (or as soon as fewer than `max_in_flight` are outstanding), and its
/// latency counts from when it was due. Paced by
/// [`precise_sleep::PreciseSleep`]: sent within microseconds of its due
/// instant when the machine lets the generator run.
pub(crate) async fn open_loop(
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
    let sleep = precise_sleep::PreciseSleep::new()?;
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        sleep.until(due).await?;
        let permit = in_flight.clone().acquire_owned().await?;
        let idx = usize::try_from(i).unwrap_or(usize::MAX);
        let url = urls[idx % targets][idx % sessions].clone();
        let client = client.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let outcome = http_load::send(client.post(url)).await;
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
