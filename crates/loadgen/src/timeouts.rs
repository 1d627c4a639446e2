//! `timeouts`: many sessions whose deadlines fall within the same second,
//! each watched over a WebSocket; nobody presses a clock. Measures the
//! lateness from each deadline to its subscriber receiving the
//! `STATE_UPDATE` that shows the session expired (and, separately, the
//! `EVENT` whose `at_ms` is the deadline), in server time.
//!
//! The deadlines are laid out before any session starts: session `i` gets
//! the clock `W + margin + i * (window - W) / N`, where `W` is the time
//! the starts take at `--start-rate`, and is started at `i * W / N`; so
//! deadline `i` lands at `W + margin + i * window / N`, all within
//! `window`. The real deadline of each comes from its start answer.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::{
    CpuMeter, Recorder, bounded_count, bounded_secs, clock_offset_ms, ensure_descriptors,
    http_client, http_targets, now_ms, prepare_sessions, session_config, view_call,
};
use crate::fleet::{Fleet, Handler, Plan};

/// Arguments of `timeouts`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URLs of the instances (http://127.0.0.1:PORT); loopback only.
    #[arg(long = "target", num_args = 1.., required = true)]
    targets: Vec<String>,
    /// Sessions timing out.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// WebSocket subscribers per session, spread over the targets.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Milliseconds over which the deadlines are spread.
    #[arg(long, default_value_t = 1000)]
    window_ms: u64,
    /// Session starts per second before the deadlines.
    #[arg(long, default_value_t = 2000.0)]
    start_rate: f64,
    /// Milliseconds between the last start and the first deadline.
    #[arg(long, default_value_t = 2000)]
    margin_ms: u64,
    /// Seconds to wait for notifications after the last deadline.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
    /// Read buffer per client socket, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

/// The clock of session `i` of `n`, in ms (see the module docs).
fn clock_ms(i: usize, n: usize, starts_ms: f64, margin_ms: f64, window_ms: f64) -> i64 {
    let t = starts_ms + margin_ms + i as f64 * (window_ms - starts_ms) / n as f64;
    // Rounded to whole ms, and never under the contract's minimum clock.
    #[allow(clippy::cast_possible_truncation)]
    (t.round() as i64).max(1000)
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(&args.targets)?;
    let sessions = bounded_count("--sessions", args.sessions)?;
    let subscribers = bounded_count("--subscribers", args.subscribers)?;
    let sockets = bounded_count("sessions x subscribers", sessions * subscribers)?;
    let grace = bounded_secs("--grace", args.grace)?;
    ensure!(
        args.start_rate.is_finite() && args.start_rate > 0.0 && args.start_rate <= 100_000.0,
        "--start-rate must be in (0, 100000]"
    );
    ensure!(
        (1..=60_000).contains(&args.window_ms),
        "--window-ms must be in 1..=60000"
    );
    ensure!(
        args.margin_ms <= 60_000,
        "--margin-ms must be at most 60000"
    );
    ensure_descriptors(sockets)?;
    let client = http_client()?;

    let starts_ms = sessions as f64 * 1000.0 / args.start_rate;
    let (margin, window) = (args.margin_ms as f64, args.window_ms as f64);
    eprintln!("timeouts: preparing {sessions} sessions");
    let prepared = prepare_sessions(&client, &targets, sessions, false, 32, |i| {
        session_config(&[clock_ms(i, sessions, starts_ms, margin, window)])
    })
    .await?;

    let deadlines: Arc<Vec<AtomicI64>> =
        Arc::new((0..sessions).map(|_| AtomicI64::new(0)).collect());
    let offset = Arc::new(AtomicI64::new(0));
    let lateness = Arc::new(Mutex::new(Recorder::new()));
    let lateness_event = Arc::new(Mutex::new(Recorder::new()));
    let notified = Arc::new(AtomicU64::new(0));
    let deadline_mismatch = Arc::new(AtomicU64::new(0));
    let handler: Arc<Handler> = {
        let (deadlines, offset, lateness, lateness_event, notified, mismatch) = (
            deadlines.clone(),
            offset.clone(),
            lateness.clone(),
            lateness_event.clone(),
            notified.clone(),
            deadline_mismatch.clone(),
        );
        Arc::new(move |session, message, wall, _| {
            // Server time of arrival; the offset is stored in µs.
            let server_now = wall + offset.load(Ordering::Relaxed) as f64 / 1000.0;
            match message.kind.as_str() {
                "STATE_UPDATE" => {
                    let expired = message
                        .state
                        .as_ref()
                        .is_some_and(|s| s.status == "expired");
                    let deadline = deadlines[session].load(Ordering::Relaxed);
                    if expired && deadline > 0 {
                        notified.fetch_add(1, Ordering::Relaxed);
                        lateness
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record_ms(server_now - deadline as f64);
                    }
                }
                "EVENT" => {
                    if let Some(event) = &message.event
                        && event.event_type == "participant_expired"
                    {
                        let deadline = deadlines[session].load(Ordering::Relaxed);
                        if deadline > 0 && deadline != event.at_ms {
                            mismatch.fetch_add(1, Ordering::Relaxed);
                        }
                        lateness_event
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record_ms(server_now - event.at_ms as f64);
                    }
                }
                _ => {}
            }
        })
    };

    eprintln!(
        "timeouts: opening {sockets} WebSockets over {} targets",
        targets.len()
    );
    let plans = (0..sessions)
        .flat_map(|k| (0..subscribers).map(move |j| (k, j)))
        .map(|(k, j)| Plan {
            target: targets[(k * subscribers + j) % targets.len()].clone(),
            session_id: prepared[k].id.clone(),
            session: k,
        })
        .collect();
    let fleet = Fleet::open(plans, args.read_buffer, 64, handler);
    let ready = fleet.wait_ready(Duration::from_secs(120)).await;

    let measured_offset = clock_offset_ms(&client, &targets[0]).await?;
    #[allow(clippy::cast_possible_truncation)]
    offset.store((measured_offset * 1000.0).round() as i64, Ordering::Relaxed);
    eprintln!(
        "timeouts: server clock offset {measured_offset:+.3} ms; starting at {}/s",
        args.start_rate
    );

    // The starts, on schedule.
    let cpu = CpuMeter::start();
    let start_latency = Arc::new(Mutex::new(Recorder::new()));
    let start_errors = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(1024));
    let begin = Instant::now() + Duration::from_millis(200);
    for (i, session) in prepared.iter().enumerate() {
        let due = begin + Duration::from_secs_f64(i as f64 * starts_ms / sessions as f64 / 1000.0);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let url = targets[i % targets.len()].join(&format!("/v1/sessions/{}/start", session.id))?;
        let (client, deadlines, start_latency, start_errors) = (
            client.clone(),
            deadlines.clone(),
            start_latency.clone(),
            start_errors.clone(),
        );
        tokio::spawn(async move {
            match view_call(client.post(url)).await {
                Ok(view) => {
                    start_latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(due.elapsed());
                    if let Some(d) = view.deadline_ms() {
                        deadlines[i].store(d, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if start_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("  first failed start: {e:#}");
                    }
                }
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(
        crate::common::HTTP_TIMEOUT + Duration::from_secs(1),
        in_flight.acquire_many(1024),
    )
    .await;
    let known: Vec<i64> = deadlines
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .filter(|d| *d > 0)
        .collect();
    let first = known.iter().copied().min().unwrap_or(0);
    let last = known.iter().copied().max().unwrap_or(0);
    eprintln!(
        "timeouts: {} started; deadlines span {} ms",
        known.len(),
        last - first
    );

    // Wait for every notification, or the last deadline plus the grace.
    // Sockets that never opened are reported as such, not as missing.
    let want = (known.len() * subscribers).saturating_sub(fleet.failed()) as u64;
    let give_up = now_ms()
        + (last as f64 - (now_ms() + measured_offset)).max(0.0)
        + grace.as_secs_f64() * 1000.0;
    while notified.load(Ordering::Relaxed) < want && now_ms() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the EVENTs that follow the last STATE_UPDATEs a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_percent = cpu.percent();
    let logs = fleet.stop().await;
    let dropped = logs.iter().filter(|l| l.dropped).count();

    let lateness = lateness
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    let lateness_event = lateness_event
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    let start_latency = start_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    let notified = notified.load(Ordering::Relaxed);
    eprintln!(
        "timeouts: {notified} of {want} notified; lateness p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        lateness.p50_ms, lateness.p99_ms, lateness.p999_ms, lateness.max_ms
    );
    Ok(json!({
        "scenario": "timeouts",
        "targets": targets.len(),
        "sessions": sessions,
        "subscribers": subscribers,
        "sockets_ready": ready,
        "sockets_dropped": dropped,
        "sockets_failed": sockets.saturating_sub(ready),
        "started": known.len(),
        "start_errors": start_errors.load(Ordering::Relaxed),
        "start_latency": start_latency,
        "deadline_span_ms": last - first,
        "window_ms": args.window_ms,
        "clock_offset_ms": measured_offset,
        "expected_notifications": want,
        "notified": notified,
        "missing": want.saturating_sub(notified),
        "lateness": lateness,
        "lateness_event": lateness_event,
        "event_deadline_mismatch": deadline_mismatch.load(Ordering::Relaxed),
        "loadgen_cpu_percent": cpu_percent,
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_land_in_the_window() {
        let (n, starts, margin, window) = (10_000usize, 5000.0, 2000.0, 1000.0);
        for i in [0, 1, n / 2, n - 1] {
            let start_at = i as f64 * starts / n as f64;
            let deadline = start_at + clock_ms(i, n, starts, margin, window) as f64;
            assert!(
                (starts + margin - 1.0..=starts + margin + window + 1.0).contains(&deadline),
                "{i}: {deadline}"
            );
        }
        assert!(clock_ms(0, 1, 0.0, 0.0, 1.0) >= 1000);
    }
}
