//! The deadlines of contract section 8 across instances: time warnings and
//! scheduled starts go through the same deadline index and claims as
//! timeouts, so with three real `kairos-server` processes on one Redis (audit
//! trail on PostgreSQL), nobody connected, and one instance SIGKILLed in the
//! middle of them, each one still happens exactly once (issue 14, "done
//! when"). Values are asserted, not timings.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::procs::{Instance, database_url, post, prefix, psql, redis_url};
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Value, json};

/// Sessions whose running clock crosses warning thresholds.
const WARNED: usize = 500;
/// Sessions that start by themselves at `start_at_ms`.
const SCHEDULED: usize = 500;
/// The deadlines of each kind are spread over this window.
const SPREAD_MS: i64 = 2_000;
/// From the first create to the start of the window: room for the set-up
/// (1,500 requests), so that every deadline is still ahead when planned.
const LEAD_MS: i64 = 6_000;
/// The warned participant's thresholds: the first two are crossed 500 ms
/// apart; the third is above the clock when the turn starts, so it never
/// fires (contract: none for a threshold the turn started at or below).
const FIRST: i64 = 60_000;
const SECOND: i64 = 59_500;
const ABOVE: i64 = 120_000;

fn wall_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// What the test planned for one session.
#[derive(Debug, Clone)]
enum Plan {
    /// Started at `started_at` with `bank` ms on participant `a`'s clock.
    Warned { started_at: i64, bank: i64 },
    /// Created pending with `start_at_ms` = `start_at`.
    Scheduled { start_at: i64 },
}

/// Sets up session `k` on `node` so that its deadline falls at `due`
/// (or, if the set-up ran late, as soon after as the config allows).
async fn set_up(http: &reqwest::Client, node: &Instance, k: usize, due: i64) -> (String, Plan) {
    if k.is_multiple_of(2) {
        // Participant a's clock reaches FIRST at `due` if started now.
        let bank = FIRST + (due - wall_ms()).max(1_000);
        let config = json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "a", "total_time_ms": bank},
                {"participant_id": "b", "total_time_ms": 600_000}
            ],
            "warnings_ms": [ABOVE, FIRST, SECOND]
        });
        let (status, body) = post(http, node.url("/v1/sessions"), Some(config)).await;
        assert_eq!(status, 201, "create: {body}");
        let id = body["data"]["session_id"].as_str().unwrap().to_owned();
        let (status, body) = post(http, node.url(&format!("/v1/sessions/{id}/start")), None).await;
        assert_eq!(status, 200, "start: {body}");
        assert_eq!(body["data"]["version"], 2, "{body}");
        let started_at = body["data"]["session_started_at_ms"].as_i64().unwrap();
        (id, Plan::Warned { started_at, bank })
    } else {
        let start_at = due.max(wall_ms() + 1_000);
        let config = json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "a", "total_time_ms": 600_000},
                {"participant_id": "b", "total_time_ms": 600_000}
            ],
            "start_at_ms": start_at
        });
        let (status, body) = post(http, node.url("/v1/sessions"), Some(config)).await;
        assert_eq!(status, 201, "create: {body}");
        assert_eq!(body["data"]["status"], "pending", "{body}");
        let id = body["data"]["session_id"].as_str().unwrap().to_owned();
        (id, Plan::Scheduled { start_at })
    }
}

/// One row of `sync_events`.
#[derive(Debug)]
struct Row {
    version: i64,
    event_type: String,
    participant: String,
    at_ms: i64,
    remaining: Option<i64>,
    threshold: Option<i64>,
    scheduled: bool,
}

/// Every audited event of `ids`, by session, in version order.
fn audit_rows(db: &str, list: &str) -> BTreeMap<String, Vec<Row>> {
    let out = psql(
        db,
        &format!(
            "SELECT session_id, version, event_type, coalesce(participant_id, ''), at_ms, \
             coalesce(time_remaining_ms::text, ''), coalesce(metadata->>'threshold_ms', ''), \
             coalesce(metadata->>'scheduled', '') \
             FROM sync_events WHERE session_id IN ({list}) ORDER BY session_id, version, write_seq"
        ),
    );
    let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        rows.entry(f[0].to_owned()).or_default().push(Row {
            version: f[1].parse().unwrap(),
            event_type: f[2].to_owned(),
            participant: f[3].to_owned(),
            at_ms: f[4].parse().unwrap(),
            remaining: f[5].parse().ok(),
            threshold: f[6].parse().ok(),
            scheduled: f[7] == "true",
        });
    }
    rows
}

#[tokio::test]
async fn warnings_and_scheduled_starts_fire_exactly_once_across_instances_through_a_kill() {
    let db = database_url();
    let env = [
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", prefix()),
        ("DATABASE_URL", db.clone()),
        // Outbox entries the killed instance read and never acknowledged
        // are taken over soon, not after the default 30 s.
        ("AUDIT_RECLAIM_MS", "1000".into()),
    ];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Instance::start(&env).await);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Session k's deadline: window start + its share of the spread. Even k
    // are warned sessions, odd k scheduled ones; both kinds cover the window.
    let began = Instant::now();
    let window = wall_ms() + LEAD_MS;
    let total = WARNED + SCHEDULED;
    let per_kind = i64::try_from(WARNED.max(SCHEDULED)).unwrap();
    let nodes_ref = &nodes;
    let http_ref = &http;
    let sessions: Vec<(String, Plan)> = stream::iter(0..total)
        .map(|k| {
            let due = window + i64::try_from(k / 2).unwrap() * SPREAD_MS / per_kind;
            set_up(http_ref, &nodes_ref[k % 3], k, due)
        })
        .buffer_unordered(24)
        .collect()
        .await;
    let set_up_ms = began.elapsed().as_millis();
    let late = wall_ms() > window;

    // SIGKILL one instance in the middle of the window, whatever it holds:
    // claims it took are fired by the others after their lease, outbox
    // entries it read are audited by the others after the reclaim time.
    let middle = window + SPREAD_MS / 2;
    let wait = (middle - wall_ms()).max(0);
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap())).await;
    nodes[1].kill();
    let killed_at = wall_ms();
    let mut dues: Vec<i64> = sessions
        .iter()
        .map(|(_, p)| match p {
            Plan::Warned { started_at, bank } => started_at + bank - FIRST,
            Plan::Scheduled { start_at } => *start_at,
        })
        .collect();
    dues.sort_unstable();
    let after_kill = dues.iter().filter(|d| **d > killed_at).count();
    eprintln!(
        "time_controls: set up {total} sessions in {set_up_ms} ms (late: {late}); \
         killed an instance with {after_kill} first deadlines still ahead"
    );

    // Four versions per warned session (create, start, two warnings), two
    // per scheduled one (create, scheduled start).
    let list = sessions
        .iter()
        .map(|(id, _)| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let expected = 4 * WARNED + 2 * SCHEDULED;
    let count_sql = format!("SELECT count(*) FROM sync_events WHERE session_id IN ({list})");
    let give_up = Instant::now() + Duration::from_secs(45);
    loop {
        let n: usize = psql(&db, &count_sql).parse().unwrap();
        if n >= expected || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A second firing would come after the lease of a claim (5 s) at the
    // latest: by now every claim of the window has long expired, and the
    // audit had a moment more to bring in anything extra.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = audit_rows(&db, &list);
    eprintln!(
        "time_controls: audit complete {} s after the set-up began",
        began.elapsed().as_secs()
    );

    let mut warnings = 0;
    let mut starts = 0;
    for (id, plan) in &sessions {
        let got = rows
            .get(id)
            .unwrap_or_else(|| panic!("{id}: nothing audited"));
        let versions: Vec<i64> = got.iter().map(|r| r.version).collect();
        let kinds: Vec<&str> = got.iter().map(|r| r.event_type.as_str()).collect();
        match plan {
            Plan::Warned { started_at, bank } => {
                assert_eq!(
                    kinds,
                    [
                        "session_created",
                        "session_started",
                        "time_warning",
                        "time_warning"
                    ],
                    "{id}"
                );
                assert_eq!(versions, [1, 2, 3, 4], "{id}");
                assert!(!got[1].scheduled, "{id}: a manual start");
                // Highest threshold first, each once, as of its instant,
                // for the participant whose clock reached it.
                let mut seen = BTreeSet::new();
                for (row, threshold) in got[2..].iter().zip([FIRST, SECOND]) {
                    assert_eq!(row.threshold, Some(threshold), "{id}: {row:?}");
                    assert_eq!(row.remaining, Some(threshold), "{id}: {row:?}");
                    assert_eq!(row.participant, "a", "{id}: {row:?}");
                    assert_eq!(row.at_ms, started_at + bank - threshold, "{id}: {row:?}");
                    assert!(seen.insert((row.participant.clone(), threshold)));
                    warnings += 1;
                }
            }
            Plan::Scheduled { start_at } => {
                assert_eq!(kinds, ["session_created", "session_started"], "{id}");
                assert_eq!(versions, [1, 2], "{id}");
                let started = &got[1];
                assert!(started.scheduled, "{id}: {started:?}");
                assert_eq!(started.at_ms, *start_at, "{id}: {started:?}");
                assert_eq!(started.participant, "a", "{id}: {started:?}");
                starts += 1;
            }
        }
    }
    assert_eq!((warnings, starts), (2 * WARNED, SCHEDULED));
    let dupes = psql(
        &db,
        &format!(
            "SELECT count(*) - count(DISTINCT event_id) FROM sync_events WHERE session_id IN ({list})"
        ),
    );
    assert_eq!(dupes, "0");

    // The views on the instances still up agree with the trail. A fresh
    // client: the set-up's pooled connections idled past the server's
    // keep-alive, and reusing one the server is closing fails the request.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let alive = [&nodes[0], &nodes[2]];
    let views: Vec<(String, Plan, Value)> = stream::iter(sessions.iter().enumerate())
        .map(|(k, (id, plan))| {
            let url = alive[k % 2].url(&format!("/v1/sessions/{id}"));
            let http = &http;
            async move {
                let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                (id.clone(), plan.clone(), v["data"].clone())
            }
        })
        .buffer_unordered(24)
        .collect()
        .await;
    for (id, plan, v) in views {
        assert_eq!(v["status"], "running", "{id}: {v}");
        assert_eq!(v["active_participant_id"], "a", "{id}: {v}");
        match plan {
            Plan::Warned { started_at, .. } => {
                assert_eq!(v["version"], 4, "{id}: {v}");
                assert_eq!(v["session_started_at_ms"], started_at, "{id}: {v}");
            }
            Plan::Scheduled { start_at } => {
                assert_eq!(v["version"], 2, "{id}: {v}");
                assert_eq!(v["session_started_at_ms"], start_at, "{id}: {v}");
                // The view carries `start_at_ms` once the wire has it.
                if let Some(shown) = v.get("start_at_ms") {
                    assert_eq!(shown, &json!(start_at), "{id}: {v}");
                }
            }
        }
    }
}
