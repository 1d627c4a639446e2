//! The audit trail end to end on real Redis and PostgreSQL: every committed
//! change lands in `sync_events` exactly once, through a PostgreSQL outage
//! in the middle of 5,000 switches on two instances, and when an instance
//! dies between reading a batch and acknowledging it.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::procs::{
    self, Instance, OwnPostgres, database_url, post, prefix, psql, redis_url,
};
use crate::common::{chess, create_session};
use serde_json::Value;

/// Polls until `sql` returns `want` (as text), for at most `secs`.
async fn wait_for(url: &str, sql: &str, want: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = psql(url, sql);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_committed_change_appears_exactly_once_with_the_contract_fields() {
    let db = database_url();
    let node = Instance::start(&[
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", prefix()),
        ("DATABASE_URL", db.clone()),
    ])
    .await;
    let http = reqwest::Client::new();
    let id = create_session(&http, node.url("/v1/sessions"), None, chess(3_000, 500)).await;
    for cmd in ["start", "switch", "pause", "resume"] {
        let (status, body) = post(&http, node.url(&format!("/v1/sessions/{id}/{cmd}")), None).await;
        assert_eq!(status, 200, "{cmd}: {body}");
    }
    // Black's three seconds run out with nobody calling: the worker commits it.
    let sql = format!("SELECT count(*) FROM sync_events WHERE session_id = '{id}'");
    assert_eq!(wait_for(&db, &sql, "7", 30).await, "7");
    let rows = psql(
        &db,
        &format!(
            "SELECT version, event_type, coalesce(participant_id, ''), at_ms, coalesce(time_remaining_ms::text, ''), \
             coalesce(action, ''), count(*) OVER (PARTITION BY event_id) \
             FROM sync_events WHERE session_id = '{id}' ORDER BY version, write_seq"
        ),
    );
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    let kinds: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        kinds,
        [
            ("1", "session_created"),
            ("2", "session_started"),
            ("3", "cycle_switched"),
            ("4", "session_paused"),
            ("5", "session_resumed"),
            ("6", "participant_expired"),
            ("6", "session_expired"),
        ]
    );
    assert!(
        rows.iter().all(|r| r[6] == "1"),
        "an event was stored twice"
    );
    assert_eq!(rows[2][2], "white");
    assert_eq!(rows[5][2], "black");
    assert_eq!(rows[5][4], "0");
    // The timeout rows carry the deadline, which the session view reports as its end.
    let view: Value = http
        .get(node.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let end = view["data"]["session_completed_at_ms"]
        .as_i64()
        .unwrap()
        .to_string();
    assert_eq!(rows[5][3], end);
    assert_eq!(rows[6][3], end);
    // The history endpoint serves the same rows, newest first, with paging.
    let page: Value = http
        .get(node.url(&format!("/v1/sessions/{id}/events?limit=3")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [6, 6, 5]);
    let before = page["data"][2]["at_ms"].as_i64().unwrap();
    let older: Value = http
        .get(node.url(&format!("/v1/sessions/{id}/events?before_ms={before}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        older["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["at_ms"].as_i64().unwrap() < before)
    );
    let sessions = psql(
        &db,
        &format!("SELECT final_status, last_version FROM sync_sessions WHERE session_id = '{id}'"),
    );
    assert_eq!(sessions, "expired|6");
    let health: Value = http
        .get(node.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["audit"], "ok");
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

// Several threads: `pg.stop()` blocks its thread until PostgreSQL is down
// (seconds on a loaded machine); on a single-threaded runtime every switch
// task would stand still meanwhile, and pooled connections idle past the
// server's keep-alive would be closed under the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_in_the_middle_of_5000_switches_loses_nothing() {
    let pg = OwnPostgres::start();
    let key_prefix = prefix();
    let env = [
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", key_prefix),
        ("DATABASE_URL", pg.url()),
    ];
    let nodes = Arc::new(vec![
        Instance::start(&env).await,
        Instance::start(&env).await,
    ]);
    let http = reqwest::Client::new();
    const SESSIONS: usize = 10;
    const SWITCHES: usize = 500;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let id = create_session(
            &http,
            nodes[0].url("/v1/sessions"),
            None,
            chess(86_400_000, 500),
        )
        .await;
        let (status, _) = post(
            &http,
            nodes[1].url(&format!("/v1/sessions/{id}/start")),
            None,
        )
        .await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (s, id) in ids.iter().enumerate() {
        let (nodes, http, id, done) = (nodes.clone(), http.clone(), id.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for k in 0..SWITCHES {
                let node = &nodes[(s + k) % 2];
                let t = Instant::now();
                let (status, body) =
                    post(&http, node.url(&format!("/v1/sessions/{id}/switch")), None).await;
                assert_eq!(status, 200, "{body}");
                latencies.push((
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    t.elapsed().as_micros(),
                ));
            }
            latencies
        }));
    }
    // PostgreSQL goes away for the middle third of the run.
    let total = SESSIONS * SWITCHES;
    while done.load(std::sync::atomic::Ordering::SeqCst) < total / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.stop();
    let stopped_at = done.load(std::sync::atomic::Ordering::SeqCst);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 2 * total / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarted_at = done.load(std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    pg.restart();
    let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (n, us) in all {
        if n < stopped_at {
            before.push(us);
        } else if n < restarted_at {
            during.push(us);
        } else {
            after.push(us);
        }
    }
    assert!(!during.is_empty());
    // Reported, not asserted (timings on a shared machine are for benchmarks):
    eprintln!(
        "switch latency median (us): PostgreSQL up {}, down {}, back {}",
        median(&mut before),
        median(&mut during),
        median(&mut after)
    );
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let expected = (total + 2 * SESSIONS).to_string();
    let sql = format!("SELECT count(*) FROM sync_events WHERE session_id IN ({list})");
    assert_eq!(
        wait_for(&pg.url(), &sql, &expected, 90).await,
        expected,
        "events missing after the outage"
    );
    let dupes = psql(
        &pg.url(),
        &format!(
            "SELECT count(*) - count(DISTINCT event_id) FROM sync_events WHERE session_id IN ({list})"
        ),
    );
    assert_eq!(dupes, "0");
    let switched = psql(
        &pg.url(),
        &format!(
            "SELECT count(*) FROM sync_events WHERE event_type = 'cycle_switched' AND session_id IN ({list})"
        ),
    );
    assert_eq!(switched, total.to_string());
    // Versions of each session are contiguous: nothing lost in between.
    let gaps = psql(
        &pg.url(),
        &format!(
            "SELECT count(*) FROM (SELECT session_id, max(version) - min(version) + 1 AS span, count(DISTINCT version) AS n \
             FROM sync_events WHERE session_id IN ({list}) GROUP BY session_id) s WHERE span <> n"
        ),
    );
    assert_eq!(gaps, "0");
}

#[tokio::test]
async fn an_instance_killed_between_reading_and_acknowledging_is_covered_by_another() {
    let db = database_url();
    let key_prefix = prefix();
    // Instance A's audit database is a closed port: it reads batches from the
    // outbox and can never write them, so it never acknowledges them.
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/kairos",
        procs::free_port()
    );
    let mut a = Instance::start(&[
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", key_prefix.clone()),
        ("DATABASE_URL", closed),
    ])
    .await;
    let http = reqwest::Client::new();
    let id = create_session(&http, a.url("/v1/sessions"), None, chess(600_000, 500)).await;
    post(&http, a.url(&format!("/v1/sessions/{id}/start")), None).await;
    for _ in 0..20 {
        let (status, _) = post(&http, a.url(&format!("/v1/sessions/{id}/switch")), None).await;
        assert_eq!(status, 200);
    }
    // Let A's worker read (and fail to write) the batch, then kill it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    a.kill();
    // B writes to the real database and takes over leases idle for 500 ms.
    let b = Instance::start(&[
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", key_prefix),
        ("DATABASE_URL", db.clone()),
        ("AUDIT_RECLAIM_MS", "500".into()),
    ])
    .await;
    let sql = format!(
        "SELECT count(*), count(DISTINCT event_id), min(version), max(version) FROM sync_events WHERE session_id = '{id}'"
    );
    assert_eq!(wait_for(&db, &sql, "22|22|1|22", 30).await, "22|22|1|22");
    // And B keeps working for new events.
    post(&http, b.url(&format!("/v1/sessions/{id}/pause")), None).await;
    assert_eq!(wait_for(&db, &sql, "23|23|1|23", 30).await, "23|23|1|23");
}

/// `DATABASE_URL=...?sslmode=verify-full&sslrootcert=...`: migrations and
/// the audit writes reach a PostgreSQL with `ssl=on` over verified TLS,
/// every connection of the instance is encrypted, and a certificate the
/// client cannot verify is refused instead of used.
#[tokio::test]
async fn the_audit_trail_reaches_postgres_over_verified_tls() {
    let pg = OwnPostgres::start_tls();
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        pg.certificate().display()
    );
    let node = Instance::start(&[
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", prefix()),
        ("DATABASE_URL", verified),
    ])
    .await;
    let http = reqwest::Client::new();
    let id = create_session(&http, node.url("/v1/sessions"), None, chess(600_000, 500)).await;
    let (status, _) = post(&http, node.url(&format!("/v1/sessions/{id}/start")), None).await;
    assert_eq!(status, 200);
    let count = format!("SELECT count(*) FROM sync_events WHERE session_id = '{id}'");
    assert_eq!(wait_for(&pg.url(), &count, "2", 30).await, "2");
    // Every connection of the instance (the pool's) is encrypted.
    let plain = "SELECT count(*) FILTER (WHERE NOT s.ssl) || '/' || count(*) \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = 'kairos' AND a.backend_type = 'client backend' \
                 AND a.pid <> pg_backend_pid() AND a.application_name <> 'psql'";
    let seen = psql(&pg.url(), plain);
    assert!(
        seen.starts_with("0/") && seen != "0/0",
        "unencrypted/all connections of the instance: {seen}"
    );

    // Without the CA the self-signed certificate cannot be verified.
    let unverifiable = format!("{}?sslmode=verify-full", pg.url());
    let audit = audit_diesel::PgAudit::connect(unverifiable, 1).unwrap();
    let refused = audit.ping().await.unwrap_err().to_string();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    // `require` encrypts without verifying, as libpq's does.
    let require =
        audit_diesel::PgAudit::connect(format!("{}?sslmode=require", pg.url()), 1).unwrap();
    require.ping().await.expect("require connects");
}
