//! `webhooks`: what signed webhook delivery costs and how fast it is.
//!
//! Starts a receiver (a real HTTP server on loopback that verifies every
//! signature with `kairos_client`'s verifier), registers it as an endpoint
//! for `cycle_switched` through the admin API, runs the same open-loop
//! switch load as `switch --rate`, and reports the switch latency beside the
//! delivery latency: from the event's `at_ms` (the instant the switch
//! committed, on the server's clock; one machine, one clock) to the instant
//! the receiver got the request. Every switch of the run must arrive (at
//! least once; duplicates counted apart). The endpoint is deleted at the end.
//!
//! The target must allow `http://` and private addresses for webhooks
//! (`WEBHOOK_ALLOW_HTTP=true`, `WEBHOOK_ALLOW_PRIVATE=true`): the receiver
//! is on loopback.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context, Result, ensure};
use kairos_client::{Client, NewWebhook, WebhookVerifier};
use reqwest::Url;
use serde_json::{Value, json};

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, Recorder, bounded_count, bounded_secs, http_client, http_targets,
    now_ms, prepare_sessions, session_config,
};

/// Arguments of `webhooks`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URL of the instance (http://127.0.0.1:PORT); loopback only.
    #[arg(long)]
    target: String,
    /// Switches per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Sessions to switch, created and started first.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds to wait, after the load, for the last deliveries.
    #[arg(long, default_value_t = 60.0)]
    drain: f64,
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Received {
    latency: Recorder,
    ids: HashSet<String>,
    duplicates: u64,
    bad_signatures: u64,
    unreadable: u64,
}

struct Receiver {
    verifier: Mutex<Option<WebhookVerifier>>,
    seen: Mutex<Received>,
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<Receiver>) -> HttpResponse {
    let got_ms = now_ms();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let verified = state
        .verifier
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|v| v.verify(&id, &ts, &sig, &body).is_ok());
    let at_ms = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["data"]["at_ms"].as_f64());
    let mut seen = state.seen.lock().unwrap_or_else(PoisonError::into_inner);
    if !verified {
        seen.bad_signatures += 1;
    }
    match at_ms {
        Some(at) if seen.ids.insert(id) => seen.latency.record_ms((got_ms - at).max(0.0)),
        Some(_) => seen.duplicates += 1,
        None => seen.unreadable += 1,
    }
    HttpResponse::NoContent().finish()
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(std::slice::from_ref(&args.target))?;
    let target = targets[0].clone();
    let duration = bounded_secs("--duration", args.duration)?;
    let drain = bounded_secs("--drain", args.drain)?;
    let sessions = bounded_count("--sessions", args.sessions)?;
    ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be in (0, 100000], not {}",
        args.rate
    );
    let http = http_client()?;

    eprintln!("webhooks: preparing {sessions} sessions");
    let prepared = prepare_sessions(&http, &targets, sessions, true, 32, |_| {
        session_config(&[LONG_CLOCK_MS, LONG_CLOCK_MS])
    })
    .await?;
    let urls: Vec<Url> = prepared
        .iter()
        .map(|s| target.join(&format!("/v1/sessions/{}/switch", s.id)))
        .collect::<Result<_, _>>()?;

    // The receiver, on a free loopback port.
    let state = web::Data::new(Receiver {
        verifier: Mutex::new(None),
        seen: Mutex::new(Received::default()),
    });
    let data = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/hook", web::post().to(hook))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .context("cannot bind the receiver")?;
    let port = server
        .addrs()
        .first()
        .map(|a| a.port())
        .context("the receiver has no address")?;
    let server = server.run();
    let handle = server.handle();
    let receiver = tokio::spawn(server);

    let client = Client::builder(target.as_str())
        .http_client(http.clone())
        .build()?;
    let endpoint = client
        .create_webhook(
            &NewWebhook::new(format!("http://127.0.0.1:{port}/hook"))
                .event_types(["cycle_switched"])
                .description("kairos-loadgen webhooks scenario"),
        )
        .await
        .context("cannot register the receiver (does the target allow http:// and private addresses for webhooks?)")?;
    let secret = endpoint
        .secret
        .clone()
        .context("no secret in the create answer")?;
    *state
        .verifier
        .lock()
        .unwrap_or_else(PoisonError::into_inner) =
        Some(WebhookVerifier::new(&secret).context("the secret is not whsec_ base64")?);

    eprintln!("webhooks: open loop, {}/s for {duration:?}", args.rate);
    let cpu = CpuMeter::start();
    let urls = Arc::new(vec![urls]);
    let tally =
        crate::switch::open_loop(&http, &urls, args.rate, 4096, Duration::ZERO, duration).await?;
    let expected = tally.ok;
    let drain_start = Instant::now();
    loop {
        let got = state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .len() as u64;
        if got >= expected || drain_start.elapsed() > drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_s = drain_start.elapsed().as_secs_f64();
    let mut report = tally.report("webhooks", duration, &cpu);
    let _ = client.delete_webhook(endpoint.webhook_id).await;
    handle.stop(true).await;
    let _ = receiver.await;

    let seen = state.seen.lock().unwrap_or_else(PoisonError::into_inner);
    let delivered = seen.ids.len() as u64;
    let delivery = seen.latency.summary();
    eprintln!(
        "webhooks: {delivered} of {expected} delivered, p50 {:.1} ms, p99 {:.1} ms; {} duplicates, {} bad signatures",
        delivery.p50_ms, delivery.p99_ms, seen.duplicates, seen.bad_signatures
    );
    if let Some(r) = report.as_object_mut() {
        r.insert("rate".to_owned(), json!(args.rate));
        r.insert("sessions".to_owned(), json!(sessions));
        r.insert("expected_deliveries".to_owned(), json!(expected));
        r.insert("delivered".to_owned(), json!(delivered));
        r.insert(
            "missing".to_owned(),
            json!(expected.saturating_sub(delivered)),
        );
        r.insert("duplicates".to_owned(), json!(seen.duplicates));
        r.insert("bad_signatures".to_owned(), json!(seen.bad_signatures));
        r.insert("unreadable".to_owned(), json!(seen.unreadable));
        r.insert("delivery".to_owned(), json!(delivery));
        r.insert("drain_s".to_owned(), json!(drained_s));
    }
    Ok(report.to_string())
}
