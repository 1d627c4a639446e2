//! How fast the audit drain empties the outbox into PostgreSQL: 20,000 events
//! from 200 interleaved sessions, written in batches of 500 (the server's
//! `AUDIT_BATCH`) by one consumer, as `audit_worker` does. Prints events/s.
//!
//! Needs a PostgreSQL it may write to, named by `KAIROS_TEST_DATABASE_URL`.
//! `cargo xtask test` provisions a throwaway one and runs this program once
//! (a `harness = false` target runs its `main` under `cargo test` too):
//!
//! ```text
//! cargo xtask test -p audit-diesel --release --bench drain
//! KAIROS_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/kairos \
//!     cargo bench -p audit-diesel --bench drain
//! ```
//!
//! Also measured: replaying the same events (every row a duplicate, the
//! cost of a redelivery) and four consumers draining at once (four instances).
#![allow(clippy::print_stdout)] // Printing the figures is this program's job.

#[path = "../tests/common/mod.rs"]
mod common;

use std::error::Error;
use std::time::{Duration, Instant};

use audit_diesel::{DEFAULT_MONTHS_AHEAD, PgAudit};
use kairos_domain::{AuditError, AuditSink, Event};

const EVENTS: usize = 20_000;
const SESSIONS: usize = 200;
const BATCH: usize = 500;
const ROUNDS: usize = 5;

fn main() -> Result<(), Box<dyn Error>> {
    if std::env::var_os("KAIROS_TEST_DATABASE_URL").is_none_or(|v| v.is_empty()) {
        return Err(
            "the drain benchmark needs KAIROS_TEST_DATABASE_URL (a PostgreSQL it may write to)"
                .into(),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn Error>> {
    let url = common::database_url();
    audit_diesel::run_migrations(url.as_str()).await?;
    let audit = PgAudit::connect(url.as_str(), 4)?;
    audit.ensure_partitions(DEFAULT_MONTHS_AHEAD).await?;
    // Warm the pool and the statement caches.
    audit
        .write(&common::interleaved_games(10, 50, common::now_ms()))
        .await?;

    println!("audit drain: {EVENTS} events, {SESSIONS} sessions, batches of {BATCH}");
    let mut fresh = Vec::new();
    for round in 1..=ROUNDS {
        let events = common::interleaved_games(SESSIONS, EVENTS / SESSIONS, common::now_ms());
        let (rate, batches) = drain(&audit, &events).await?;
        println!(
            "  round {round}: {rate:>8.0} events/s   batch p50 {:>6.1} ms  max {:>6.1} ms",
            ms(percentile(&batches, 0.5)),
            ms(percentile(&batches, 1.0)),
        );
        fresh.push(rate);

        if round == ROUNDS {
            let (replay, _) = drain(&audit, &events).await?;
            println!("  replay of the same events (all duplicates): {replay:>8.0} events/s");
        }
    }
    fresh.sort_by(f64::total_cmp);
    println!(
        "  median: {:.0} events/s (one consumer)",
        fresh[fresh.len() / 2]
    );

    let events = common::interleaved_games(SESSIONS, EVENTS / SESSIONS, common::now_ms());
    let started = Instant::now();
    let mut consumers = tokio::task::JoinSet::new();
    for part in events.chunks(EVENTS / 4) {
        let (audit, part) = (audit.clone(), part.to_vec());
        consumers.spawn(async move { drain(&audit, &part).await.map(|_| ()) });
    }
    while let Some(done) = consumers.join_next().await {
        done??;
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    println!("  four consumers at once: {rate:.0} events/s");
    Ok(())
}

/// Writes `events` batch by batch; returns events/s and each batch's time.
async fn drain(audit: &PgAudit, events: &[Event]) -> Result<(f64, Vec<Duration>), AuditError> {
    let mut batches = Vec::with_capacity(events.len() / BATCH + 1);
    let started = Instant::now();
    for batch in events.chunks(BATCH) {
        let t = Instant::now();
        audit.write(batch).await?;
        batches.push(t.elapsed());
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, batches))
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
