//! `time-controls`: the deadlines of contract section 8 that nobody
//! triggers, at scale. Half the sessions are running clocks that cross a
//! `warnings_ms` threshold, the other half are pending sessions with a
//! `start_at_ms`; all their instants fall within the same window, each
//! session watched over a WebSocket. Measures, as `timeouts` does for
//! expiries, the lateness from each instant to its subscriber receiving the
//! `STATE_UPDATE` of the version that applied it, in server time:
//!
//! - a warning: the `STATE_UPDATE` of version 3 (create 1, start 2, the
//!   warning 3: a warning is a version of its own), and separately the
//!   `EVENT` `time_warning` (its `at_ms` is the instant) where the server
//!   sends one;
//! - a scheduled start: the `STATE_UPDATE` showing the session `running`,
//!   whose `session_started_at_ms` must be the `start_at_ms` asked for.
//!
//! The instants are laid out on absolute server time before any socket
//! opens: session `k` is due at `T + k / 2 * window / (N / 2)`, with `T` =
//! now + `--lead-ms` (time for the set-up and the sockets). A warned
//! session's bank is chosen when it is created so that its clock reaches
//! the threshold at its instant (its real instant comes from its start
//! answer); a scheduled session gets its instant as `start_at_ms`. If the
//! set-up runs past an instant, that session is due as soon as the config
//! allows instead (reported as `late_plans`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::common::{
    CpuMeter, Recorder, bounded_count, bounded_secs, clock_offset_ms, ensure_descriptors,
    http_client, http_targets, now_ms, prepare_sessions,
};
use crate::fleet::{Fleet, Handler, Plan};

/// The warning threshold of the warned sessions, ms.
const THRESHOLD_MS: i64 = 60_000;
/// The version a warned session's first warning takes (create, start, warning).
const WARNING_VERSION: u64 = 3;
/// The bank of the clocks that are not meant to reach anything during a run.
const IDLE_BANK_MS: i64 = 600_000;

/// Arguments of `time-controls`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URLs of the instances (http://127.0.0.1:PORT); loopback only.
    #[arg(long = "target", num_args = 1.., required = true)]
    targets: Vec<String>,
    /// Sessions in all: half warned, half scheduled.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Milliseconds over which the instants of each kind are spread.
    #[arg(long, default_value_t = 2000)]
    window_ms: u64,
    /// Milliseconds from the beginning to the first instant, for the set-up
    /// and the sockets; 0 picks 5 s + 2 ms per session.
    #[arg(long, default_value_t = 0)]
    lead_ms: u64,
    /// Seconds to wait for notifications after the last instant.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
    /// Read buffer per client socket, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

/// What session `k` is.
fn is_warned(k: usize) -> bool {
    k.is_multiple_of(2)
}

/// When session `k` of `n` is due: `first` + its share of `window_ms`.
fn due_ms(k: usize, n: usize, first: i64, window_ms: i64) -> i64 {
    let per_kind = i64::try_from(n.div_ceil(2).max(1)).unwrap_or(i64::MAX);
    let slot = i64::try_from(k / 2).unwrap_or(i64::MAX);
    first + slot * window_ms / per_kind
}

/// The config of session `k`, due at `due` (server time), created at `now`
/// (server time); and whether it was planned late (`due` too close).
fn config_of(k: usize, due: i64, now: i64) -> (Value, bool) {
    let participants = |bank: i64| {
        json!([
            {"participant_id": "p0", "total_time_ms": bank},
            {"participant_id": "p1", "total_time_ms": IDLE_BANK_MS}
        ])
    };
    if is_warned(k) {
        // Started right after the create: the clock reaches the threshold
        // `due - now` later; at least a second, the config's smallest step.
        let ahead = due - now;
        let config = json!({
            "sync_mode": "per_participant",
            "participants": participants(THRESHOLD_MS + ahead.max(1_000)),
            "warnings_ms": [THRESHOLD_MS]
        });
        (config, ahead < 1_000)
    } else {
        // A start in the past is refused: at least a second ahead.
        let start_at = due.max(now + 1_000);
        let config = json!({
            "sync_mode": "per_participant",
            "participants": participants(IDLE_BANK_MS),
            "start_at_ms": start_at
        });
        (config, start_at > due)
    }
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(&args.targets)?;
    let sessions = bounded_count("--sessions", args.sessions)?;
    ensure!(
        sessions >= 2,
        "--sessions must be at least 2 (one of each kind)"
    );
    let grace = bounded_secs("--grace", args.grace)?;
    ensure!(
        (1..=60_000).contains(&args.window_ms),
        "--window-ms must be in 1..=60000"
    );
    ensure!(args.lead_ms <= 600_000, "--lead-ms must be at most 600000");
    ensure_descriptors(sessions)?;
    let client = http_client()?;
    let lead_ms = if args.lead_ms == 0 {
        5_000 + 2 * sessions as u64
    } else {
        args.lead_ms
    };
    let window = i64::try_from(args.window_ms)?;

    let measured_offset = clock_offset_ms(&client, &targets[0]).await?;
    let server_now = move || now_ms() + measured_offset;
    #[allow(clippy::cast_possible_truncation)]
    let first = server_now().round() as i64 + i64::try_from(lead_ms)?;
    let setup_began = now_ms();
    let late_plans = AtomicU64::new(0);
    // The `start_at_ms` each scheduled session was given.
    let start_at: Vec<AtomicI64> = (0..sessions).map(|_| AtomicI64::new(0)).collect();
    eprintln!(
        "time-controls: preparing {sessions} sessions, first instant in {lead_ms} ms; \
         server clock offset {measured_offset:+.3} ms"
    );
    // Warned sessions are created and started (their clocks run from the
    // start, so the bank is chosen at the create, just before it); the
    // scheduled ones are only created. Session k is the (k / 2)-th of its kind.
    let plan = |k: usize| {
        #[allow(clippy::cast_possible_truncation)]
        let now = server_now().round() as i64;
        let (config, late) = config_of(k, due_ms(k, sessions, first, window), now);
        if late {
            late_plans.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(at) = config["start_at_ms"].as_i64() {
            start_at[k].store(at, Ordering::Relaxed);
        }
        config
    };
    let warned = sessions.div_ceil(2);
    let started = prepare_sessions(&client, &targets, warned, true, 32, |i| plan(2 * i)).await?;
    let pending = prepare_sessions(&client, &targets, sessions - warned, false, 32, |i| {
        plan(2 * i + 1)
    })
    .await?;
    let mut prepared = Vec::with_capacity(sessions);
    let mut deadlines = Vec::with_capacity(sessions);
    for k in 0..sessions {
        let p = if is_warned(k) {
            &started[k / 2]
        } else {
            &pending[k / 2]
        };
        // A warning: the first clock's expiry minus the threshold, from the
        // start answer; a scheduled start: its `start_at_ms`.
        let due = if is_warned(k) {
            p.view.deadline_ms().map_or(0, |d| d - THRESHOLD_MS)
        } else {
            start_at[k].load(Ordering::Relaxed)
        };
        prepared.push(p.id.clone());
        deadlines.push(due);
    }
    let deadlines = Arc::new(deadlines);

    let offset_us = {
        #[allow(clippy::cast_possible_truncation)]
        let us = (measured_offset * 1000.0).round() as i64;
        us
    };
    let warning_lateness = Arc::new(Mutex::new(Recorder::new()));
    let warning_event = Arc::new(Mutex::new(Recorder::new()));
    let start_lateness = Arc::new(Mutex::new(Recorder::new()));
    let warned_seen = Arc::new(AtomicU64::new(0));
    let started_seen = Arc::new(AtomicU64::new(0));
    let mismatch = Arc::new(AtomicU64::new(0));
    let handler: Arc<Handler> = {
        let (deadlines, warning_lateness, warning_event, start_lateness) = (
            deadlines.clone(),
            warning_lateness.clone(),
            warning_event.clone(),
            start_lateness.clone(),
        );
        let (warned_seen, started_seen, mismatch) =
            (warned_seen.clone(), started_seen.clone(), mismatch.clone());
        Arc::new(move |session, message, wall, _| {
            let server_at = wall + offset_us as f64 / 1000.0;
            let due = deadlines[session];
            if due <= 0 {
                return;
            }
            let lock = |r: &Arc<Mutex<Recorder>>, ms: f64| {
                r.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record_ms(ms);
            };
            match (message.kind.as_str(), &message.state, &message.event) {
                ("STATE_UPDATE", Some(state), _)
                    if is_warned(session) && state.version == WARNING_VERSION =>
                {
                    warned_seen.fetch_add(1, Ordering::Relaxed);
                    lock(&warning_lateness, server_at - due as f64);
                }
                ("STATE_UPDATE", Some(state), _)
                    if !is_warned(session) && state.status == "running" =>
                {
                    started_seen.fetch_add(1, Ordering::Relaxed);
                    if state.session_started_at_ms != Some(due) {
                        mismatch.fetch_add(1, Ordering::Relaxed);
                    }
                    lock(&start_lateness, server_at - due as f64);
                }
                ("EVENT", _, Some(event)) if event.event_type == "time_warning" => {
                    if event.at_ms != due {
                        mismatch.fetch_add(1, Ordering::Relaxed);
                    }
                    lock(&warning_event, server_at - event.at_ms as f64);
                }
                _ => {}
            }
        })
    };

    eprintln!(
        "time-controls: opening {sessions} WebSockets over {} targets",
        targets.len()
    );
    let plans = (0..sessions)
        .map(|k| Plan {
            target: targets[k % targets.len()].clone(),
            session_id: prepared[k].clone(),
            session: k,
        })
        .collect();
    let cpu = CpuMeter::start();
    let fleet = Fleet::open(plans, args.read_buffer, 64, handler);
    let ready = fleet.wait_ready(Duration::from_secs(120)).await;
    let setup_ms = now_ms() - setup_began;
    let known: Vec<i64> = deadlines.iter().copied().filter(|d| *d > 0).collect();
    let span_first = known.iter().copied().min().unwrap_or(0);
    let last = known.iter().copied().max().unwrap_or(0);
    #[allow(clippy::cast_possible_truncation)]
    let slack_ms = span_first - server_now().round() as i64;
    eprintln!(
        "time-controls: set up in {setup_ms:.0} ms, {slack_ms} ms before the first instant; \
         instants span {} ms",
        last - span_first
    );

    // Wait for every notification, or the last instant plus the grace.
    let want = (known.len()).saturating_sub(fleet.failed()) as u64;
    let give_up = now_ms() + (last as f64 - server_now()).max(0.0) + grace.as_secs_f64() * 1000.0;
    while warned_seen.load(Ordering::Relaxed) + started_seen.load(Ordering::Relaxed) < want
        && now_ms() < give_up
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the EVENTs that follow the last STATE_UPDATEs a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_percent = cpu.percent();
    let logs = fleet.stop().await;
    let dropped = logs.iter().filter(|l| l.dropped).count();

    let summary =
        |r: &Arc<Mutex<Recorder>>| r.lock().unwrap_or_else(PoisonError::into_inner).summary();
    let (warning_lateness, warning_event, start_lateness) = (
        summary(&warning_lateness),
        summary(&warning_event),
        summary(&start_lateness),
    );
    let notified = warned_seen.load(Ordering::Relaxed) + started_seen.load(Ordering::Relaxed);
    eprintln!(
        "time-controls: {notified} of {want} notified; warning p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         scheduled start p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        warning_lateness.p50_ms,
        warning_lateness.p99_ms,
        warning_lateness.max_ms,
        start_lateness.p50_ms,
        start_lateness.p99_ms,
        start_lateness.max_ms
    );
    Ok(json!({
        "scenario": "time-controls",
        "targets": targets.len(),
        "sessions": sessions,
        "warned": warned,
        "scheduled": sessions - warned,
        "sockets_ready": ready,
        "sockets_dropped": dropped,
        "sockets_failed": sessions.saturating_sub(ready),
        "window_ms": args.window_ms,
        "lead_ms": lead_ms,
        "setup_ms": setup_ms,
        "slack_ms": slack_ms,
        "late_plans": late_plans.load(Ordering::Relaxed),
        "deadline_span_ms": last - span_first,
        "clock_offset_ms": measured_offset,
        "expected_notifications": want,
        "notified": notified,
        "missing": want.saturating_sub(notified),
        "warnings_notified": warned_seen.load(Ordering::Relaxed),
        "starts_notified": started_seen.load(Ordering::Relaxed),
        "warning_lateness": warning_lateness,
        "warning_lateness_event": warning_event,
        "start_lateness": start_lateness,
        "instant_mismatch": mismatch.load(Ordering::Relaxed),
        "loadgen_cpu_percent": cpu_percent,
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_kinds_cover_the_window() {
        let (n, first, window) = (10_000usize, 1_000_000i64, 2_000i64);
        for kind in [0, 1] {
            let dues: Vec<i64> = (kind..n)
                .step_by(2)
                .map(|k| due_ms(k, n, first, window))
                .collect();
            assert_eq!(dues[0], first);
            assert!(*dues.last().unwrap() < first + window);
            assert!(*dues.last().unwrap() >= first + window - 1);
            assert!(dues.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn configs_put_the_instant_where_it_belongs() {
        let now = 5_000_000;
        let (warned, late) = config_of(0, now + 7_000, now);
        assert!(!late);
        assert_eq!(warned["warnings_ms"], json!([THRESHOLD_MS]));
        // Started at `now`, the clock reaches the threshold 7 s later.
        assert_eq!(
            warned["participants"][0]["total_time_ms"],
            json!(THRESHOLD_MS + 7_000)
        );
        let (scheduled, late) = config_of(1, now + 7_000, now);
        assert!(!late);
        assert_eq!(scheduled["start_at_ms"], json!(now + 7_000));
        assert!(scheduled.get("warnings_ms").is_none());
        // Too close: as soon as the config allows, and counted as late.
        let (scheduled, late) = config_of(1, now + 10, now);
        assert!(late);
        assert_eq!(scheduled["start_at_ms"], json!(now + 1_000));
        let (warned, late) = config_of(2, now - 50, now);
        assert!(late);
        assert_eq!(
            warned["participants"][0]["total_time_ms"],
            json!(THRESHOLD_MS + 1_000)
        );
    }
}
