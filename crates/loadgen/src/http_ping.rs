//! `http-ping`: the bare HTTP round trip to the service, the floor under
//! every switch. N clients send `GET /v1/time` in a closed loop, through the
//! same client (`lean_http`), driver and histogram as `switch`'s closed
//! loop, so the two compare directly.
//!
//! `/v1/time` goes through the same middleware and JSON response path as a
//! switch but does no I/O of its own: the Redis clock answers from an offset
//! refreshed in the background, and with `RATE_LIMITS=off` (as the bench
//! runs) no rate-limit call to Redis is made. (With rate limits on, each
//! request would add a Redis round trip.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hyper::Method;
use serde_json::json;

use crate::common::{CpuMeter, bounded_count, bounded_secs, http_targets};
use crate::http_load;
use crate::lean_http::{Call, Target};

/// The endpoint measured.
pub(crate) const PATH: &str = "/v1/time";

/// Arguments of `http-ping`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URLs of the instances (http://127.0.0.1:PORT); loopback only.
    #[arg(long = "target", num_args = 1.., required = true)]
    targets: Vec<String>,
    /// Clients, each waiting for its answer before sending the next request.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring (connections opened).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(&args.targets)?;
    let concurrency = bounded_count("--concurrency", args.concurrency)?;
    let duration = bounded_secs("--duration", args.duration)?;
    let warmup = if args.warmup > 0.0 {
        bounded_secs("--warmup", args.warmup)?
    } else {
        Duration::ZERO
    };
    let ends: Vec<Target> = targets.iter().map(Target::of).collect::<Result<_>>()?;
    let calls: Arc<Vec<Call>> = Arc::new(
        (0..ends.len())
            .map(|t| Call::new(t, Method::GET, PATH))
            .collect::<Result<_>>()?,
    );
    eprintln!(
        "http-ping: GET {PATH}, closed loop, {concurrency} clients, {duration:?} after {warmup:?} warm-up"
    );

    let cpu = CpuMeter::start();
    let (tally, window) = http_load::closed_loop(&ends, concurrency, warmup, duration, |w| {
        let calls = calls.clone();
        let mut i = w;
        move || {
            let call = calls[i % calls.len()].clone();
            i += 1;
            call
        }
    })
    .await?;
    let mut report = tally.report("http-ping", window, &cpu);
    if let Some(r) = report.as_object_mut() {
        r.extend([
            ("mode".to_owned(), json!("closed")),
            ("concurrency".to_owned(), json!(concurrency)),
            ("targets".to_owned(), json!(ends.len())),
            ("path".to_owned(), json!(PATH)),
        ]);
    }
    Ok(report.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use serde_json::Value;

    use super::*;

    /// A keep-alive HTTP/1.1 server on loopback answering every request
    /// with `status` (requests have no body: each ends at a blank line).
    /// Its threads end with the test process.
    fn fake_server(status: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream, status));
            }
        });
        format!("http://{addr}")
    }

    fn serve(mut stream: TcpStream, status: &str) {
        let body = r#"{"timestamp_ms":1}"#;
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(pending.starts_with(b"GET /v1/time HTTP/1.1\r\n"));
                pending.drain(..end + 4);
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }

    fn args(target: String, concurrency: usize) -> Args {
        Args {
            targets: vec![target],
            concurrency,
            duration: 0.3,
            warmup: 0.1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_the_round_trips_in_the_bench_shape() {
        let report: Value =
            serde_json::from_str(&run(args(fake_server("200 OK"), 4)).await.unwrap()).unwrap();
        assert_eq!(report["scenario"], "http-ping");
        assert_eq!(report["concurrency"], 4);
        assert_eq!(report["path"], "/v1/time");
        assert_eq!(report["errors"], json!({}));
        let ok = report["ok"].as_u64().unwrap();
        assert!(ok > 0, "{report}");
        assert_eq!(report["latency"]["count"], ok);
        let l = &report["latency"];
        let p = |k: &str| l[k].as_f64().unwrap();
        assert!(p("p50_ms") <= p("p90_ms") && p("p99_ms") <= p("p999_ms"));
        assert!(p("p999_ms") <= p("max_ms"));
        // Only what was started in the 0.3 s window counts.
        assert!(report["duration_s"].as_f64().unwrap() >= 0.3);
        let rate = report["throughput_per_s"].as_f64().unwrap();
        assert!((rate - ok as f64 / report["duration_s"].as_f64().unwrap()).abs() < 1e-6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_answers_are_errors_by_status() {
        let report: Value = serde_json::from_str(
            &run(args(fake_server("503 Service Unavailable"), 2))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(report["ok"], 0);
        assert!(report["errors"]["503"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["latency"]["count"], 0);
    }

    #[tokio::test]
    async fn refuses_targets_off_loopback() {
        let err = run(args("http://10.1.2.3:80".into(), 1)).await.unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
