//! `fanout`: sessions with WebSocket subscribers spread over the instances,
//! switched at a fixed rate through the instances in turn. Measures, per
//! delivered update, the time from the switch being due to the
//! `STATE_UPDATE` of that version reaching a subscriber, and counts the
//! updates a subscriber never received.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use reqwest::Url;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, Recorder, ViewLite, bounded_count, bounded_secs, ensure_descriptors,
    http_client, http_targets, prepare_sessions, session_config, view_call,
};
use crate::fleet::{Fleet, Handler, Plan};

/// Arguments of `fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URLs of the instances (http://127.0.0.1:PORT); loopback only.
    #[arg(long = "target", num_args = 1.., required = true)]
    targets: Vec<String>,
    /// Sessions, each switched in turn.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// WebSocket subscribers per session, spread over the targets.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Switches per second over all sessions.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of switching.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds to wait for the last deliveries after the last switch.
    #[arg(long, default_value_t = 3.0)]
    grace: f64,
    /// Read buffer per client socket, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

/// Due instants of the switches in flight, per session and version.
type Sent = Vec<Mutex<HashMap<u64, Instant>>>;

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(&args.targets)?;
    let sessions = bounded_count("--sessions", args.sessions)?;
    let subscribers = bounded_count("--subscribers", args.subscribers)?;
    let sockets = bounded_count("sessions x subscribers", sessions * subscribers)?;
    let duration = bounded_secs("--duration", args.duration)?;
    let grace = bounded_secs("--grace", args.grace)?;
    ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be in (0, 100000], not {}",
        args.rate
    );
    ensure_descriptors(sockets)?;
    let client = http_client()?;

    eprintln!("fanout: preparing {sessions} sessions");
    let prepared = prepare_sessions(&client, &targets, sessions, true, 32, |_| {
        session_config(&[LONG_CLOCK_MS, LONG_CLOCK_MS])
    })
    .await?;

    // Deliveries: latency from the switch's due instant, sharded locks.
    let sent: Arc<Sent> = Arc::new((0..sessions).map(|_| Mutex::default()).collect());
    let shards: Arc<Vec<Mutex<Recorder>>> =
        Arc::new((0..16).map(|_| Mutex::new(Recorder::new())).collect());
    let unmatched = Arc::new(AtomicU64::new(0));
    let handler: Arc<Handler> = {
        let (sent, shards, unmatched) = (sent.clone(), shards.clone(), unmatched.clone());
        Arc::new(move |session, message, _wall, at| {
            if message.kind != "STATE_UPDATE" {
                return;
            }
            let Some(state) = &message.state else { return };
            let due = sent[session]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&state.version)
                .copied();
            match due {
                Some(due) => shards[session % 16]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(at.saturating_duration_since(due)),
                None => {
                    unmatched.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    eprintln!(
        "fanout: opening {sockets} WebSockets over {} targets",
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

    // The switches: open loop, sessions and targets in turn.
    eprintln!("fanout: {} switches/s for {duration:?}", args.rate);
    let cpu = CpuMeter::start();
    let versions: Arc<Vec<AtomicU64>> = Arc::new(
        prepared
            .iter()
            .map(|p| AtomicU64::new(p.view.version))
            .collect(),
    );
    let committed: Arc<Vec<Mutex<HashSet<u64>>>> =
        Arc::new((0..sessions).map(|_| Mutex::default()).collect());
    let switch_latency = Arc::new(Mutex::new(Recorder::new()));
    let switch_errors = Arc::new(AtomicU64::new(0));
    let switch_urls: Vec<Vec<Url>> = targets
        .iter()
        .map(|t| {
            prepared
                .iter()
                .map(|p| t.join(&format!("/v1/sessions/{}/switch", p.id)))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let in_flight = Arc::new(Semaphore::new(4096));
    let start = Instant::now();
    let sleep = precise_sleep::PreciseSleep::new()?;
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        if due >= start + duration {
            break;
        }
        sleep.until(due).await?;
        let permit = in_flight.clone().acquire_owned().await?;
        let idx = usize::try_from(i).unwrap_or(usize::MAX);
        let k = idx % sessions;
        let url = switch_urls[idx % targets.len()][k].clone();
        // Versions of one session are switched seconds apart, so the next
        // version is known before the switch is sent, and its due instant
        // is on record before its STATE_UPDATE can arrive.
        let expected = versions[k].fetch_add(1, Ordering::Relaxed) + 1;
        sent[k]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(expected, due);
        let (client, sent, versions, committed, switch_latency, switch_errors) = (
            client.clone(),
            sent.clone(),
            versions.clone(),
            committed.clone(),
            switch_latency.clone(),
            switch_errors.clone(),
        );
        tokio::spawn(async move {
            match view_call(client.post(url.clone())).await {
                Ok(view) => {
                    switch_latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(due.elapsed());
                    if view.version != expected {
                        // Someone else changed the session: re-key the due instant.
                        let mut map = sent[k].lock().unwrap_or_else(PoisonError::into_inner);
                        map.remove(&expected);
                        map.insert(view.version, due);
                        versions[k].store(view.version, Ordering::Relaxed);
                    }
                    committed[k]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(view.version);
                }
                Err(e) => {
                    if switch_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("  first failed switch: {e:#}");
                    }
                    sent[k]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&expected);
                    resync_version(&client, &versions[k], &url_of_session(&url)).await;
                }
            }
            drop(permit);
        });
        i += 1;
    }
    let switched_in = start.elapsed();
    let _ = tokio::time::timeout(
        crate::common::HTTP_TIMEOUT + Duration::from_secs(1),
        in_flight.acquire_many(4096),
    )
    .await;
    tokio::time::sleep(grace).await;
    let cpu_percent = cpu.percent();
    let failed = fleet.failed();
    let logs = fleet.stop().await;

    // Missed: committed versions a live subscriber of that session never got.
    let committed: Vec<HashSet<u64>> = committed
        .iter()
        .map(|c| std::mem::take(&mut *c.lock().unwrap_or_else(PoisonError::into_inner)))
        .collect();
    let mut expected_deliveries = 0u64;
    let mut missed = 0u64;
    let mut dropped = 0u64;
    let mut resyncs = 0u64;
    for log in logs.iter().filter(|l| l.synced) {
        let want = &committed[log.session];
        let got: HashSet<u64> = log.updates.iter().copied().collect();
        expected_deliveries += want.len() as u64;
        missed += want.difference(&got).count() as u64;
        dropped += u64::from(log.dropped);
        resyncs += log.resyncs;
    }
    let mut delivery = Recorder::new();
    for shard in shards.iter() {
        delivery.merge(&shard.lock().unwrap_or_else(PoisonError::into_inner));
    }
    let delivery = delivery.summary();
    let switches_ok: u64 = committed.iter().map(|c| c.len() as u64).sum();
    let switch_latency = switch_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    eprintln!(
        "fanout: {switches_ok} switches, {} deliveries, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, missed {missed}",
        delivery.count, delivery.p50_ms, delivery.p99_ms, delivery.p999_ms, delivery.max_ms
    );
    Ok(json!({
        "scenario": "fanout",
        "targets": targets.len(),
        "sessions": sessions,
        "subscribers": subscribers,
        "sockets": sockets,
        "sockets_ready": ready,
        "sockets_failed": failed,
        "sockets_dropped": dropped,
        "rate": args.rate,
        "duration_s": switched_in.as_secs_f64(),
        "switches_ok": switches_ok,
        "switch_errors": switch_errors.load(Ordering::Relaxed),
        "switch_latency": switch_latency,
        "expected_deliveries": expected_deliveries,
        "delivery": delivery,
        "missed": missed,
        "unmatched_updates": unmatched.load(Ordering::Relaxed),
        "resyncs": resyncs,
        "loadgen_cpu_percent": cpu_percent,
    })
    .to_string())
}

/// `/v1/sessions/{id}` from its `/switch` URL.
fn url_of_session(switch_url: &Url) -> Url {
    let mut url = switch_url.clone();
    let path = url.path().trim_end_matches("/switch").to_owned();
    url.set_path(&path);
    url
}

/// After a failed switch, takes the session's version from the store, so
/// the next switch of it is expected at the right version.
async fn resync_version(client: &reqwest::Client, version: &AtomicU64, session_url: &Url) {
    if let Ok(view) = view_call(client.get(session_url.clone())).await {
        let ViewLite { version: v, .. } = view;
        version.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_session_url_drops_the_command() {
        let u = Url::parse("http://127.0.0.1:1/v1/sessions/abc/switch").unwrap();
        assert_eq!(
            url_of_session(&u).as_str(),
            "http://127.0.0.1:1/v1/sessions/abc"
        );
    }
}
