//! What the HTTP request-load scenarios (`switch`, `http-ping`) share, so
//! that their figures are taken the same way and stay comparable: the
//! outcome of one request, the tally of a measured window, the closed-loop
//! driver (on [`lean_http`] connections) and the fields of the JSON report
//! that `cargo xtask bench` reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::common::{CpuMeter, Recorder};
use crate::lean_http::{self, Call, Target};

/// What the measured window produced: latencies of the successes, and the
/// failures counted by kind (kept out of the percentiles).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) latency: Recorder,
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn add(&mut self, outcome: Result<(), String>, latency: Duration) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                self.latency.record(latency);
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    pub(crate) fn absorb(&mut self, other: Tally) {
        self.ok += other.ok;
        self.latency.merge(&other.latency);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    /// The report fields every HTTP load scenario has (`duration_s`, `ok`,
    /// `errors`, `throughput_per_s`, `latency`, `loadgen_cpu_percent`) for a
    /// measured `window`, with `scenario`; prints a summary line to stderr.
    pub(crate) fn report(&self, scenario: &str, window: Duration, cpu: &CpuMeter) -> Value {
        let secs = window.as_secs_f64();
        let throughput = if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        };
        let latency = self.latency.summary();
        eprintln!(
            "{scenario}: {throughput:.0}/s ok, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, errors {:?}",
            latency.p50_ms, latency.p99_ms, latency.p999_ms, latency.max_ms, self.errors
        );
        json!({
            "scenario": scenario,
            "duration_s": secs,
            "ok": self.ok,
            "errors": self.errors,
            "throughput_per_s": throughput,
            "latency": latency,
            "loadgen_cpu_percent": cpu.percent(),
        })
    }
}

/// Sends one request and reads its body (so the connection goes back to
/// the pool); `Err` carries the kind of failure ("409", "timeout", ...).
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }
    })?;
    let status = response.status();
    let _ = response.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(status.as_u16().to_string())
    }
}

/// `clients` clients in a closed loop: each sends its next request when the
/// last one answered, until `warmup + duration` has passed, on connections
/// of its own to `targets` ([`lean_http::Client`]). Client `w` takes its
/// requests from `requests(w)`, called once per request. Returns the tally
/// of the requests started in the measured window (after `warmup`) and the
/// window's length.
pub(crate) async fn closed_loop<F>(
    targets: &[Target],
    clients: usize,
    warmup: Duration,
    duration: Duration,
    mut requests: impl FnMut(usize) -> F,
) -> Result<(Tally, Duration)>
where
    F: FnMut() -> Call + Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for w in 0..clients {
        let mut next = requests(w);
        let mut client = lean_http::Client::new(targets.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let call = next();
                let outcome = client.send(&call).await;
                if sent >= measure_from {
                    tally.add(outcome, sent.elapsed());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_kind_and_kept_out_of_the_percentiles() {
        let mut a = Tally::default();
        a.add(Ok(()), Duration::from_millis(1));
        a.add(Err("503".into()), Duration::from_secs(9));
        let mut b = Tally::default();
        b.add(Ok(()), Duration::from_millis(3));
        b.add(Err("503".into()), Duration::from_secs(9));
        b.add(Err("timeout".into()), Duration::from_secs(9));
        a.absorb(b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors.get("503"), Some(&2));
        assert_eq!(a.errors.get("timeout"), Some(&1));

        let report = a.report("x", Duration::from_millis(500), &CpuMeter::start());
        assert_eq!(report["scenario"], "x");
        assert_eq!(report["ok"], 2);
        assert_eq!(report["errors"]["503"], 2);
        // Successes per second of the window; errors do not count.
        assert!((report["throughput_per_s"].as_f64().unwrap() - 4.0).abs() < 1e-9);
        let latency = &report["latency"];
        assert_eq!(latency["count"], 2);
        assert!(latency["max_ms"].as_f64().unwrap() < 3.1, "{latency}");
        for key in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms"] {
            assert!(latency[key].is_f64(), "{key} in {latency}");
        }
    }

    #[test]
    fn an_empty_window_reports_zero_not_nan() {
        let report = Tally::default().report("x", Duration::ZERO, &CpuMeter::start());
        assert_eq!(report["throughput_per_s"], 0.0);
        assert_eq!(report["latency"]["count"], 0);
    }
}
