//! Shared helpers for the PostgreSQL tests and the drain benchmark: where the
//! database is, a migrated [`PgAudit`], sessions scripted through the real
//! state machine, and raw SQL probes of what was stored.
#![allow(dead_code, unreachable_pub)] // Each test binary uses a different subset.
#![allow(clippy::unwrap_used)] // Test helpers: a failure should stop the test loudly.

use std::time::{SystemTime, UNIX_EPOCH};

use audit_diesel::{DEFAULT_MONTHS_AHEAD, PgAudit};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use kairos_domain::{Command, Event, Session, SessionConfig, SessionId, machine};
use serde_json::json;
use uuid::Uuid;

/// The throwaway database `cargo xtask test` starts for us.
pub fn database_url() -> String {
    match std::env::var("KAIROS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "KAIROS_TEST_DATABASE_URL is not set: run these tests with \
             `cargo xtask test -p audit-diesel`, which starts a throwaway PostgreSQL"
        ),
    }
}

/// A migrated audit store with this month's partitions and those ahead.
/// Every test builds its own: a pool's connections belong to the Tokio
/// runtime that opened them, and each test has its own runtime.
pub async fn audit() -> PgAudit {
    let url = database_url();
    audit_diesel::run_migrations(url.as_str()).await.unwrap();
    let audit = PgAudit::connect(url.as_str(), 4).unwrap();
    audit.ensure_partitions(DEFAULT_MONTHS_AHEAD).await.unwrap();
    audit
}

/// A direct connection for probing the tables.
pub async fn conn() -> AsyncPgConnection {
    AsyncPgConnection::establish(&database_url()).await.unwrap()
}

/// Wall-clock now in ms, so events land in the current month's partition.
pub fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

pub fn new_session_id() -> SessionId {
    SessionId::from_uuid(Uuid::new_v4())
}

/// Applies `command` at `now` and appends its events.
pub fn apply(state: &mut Session, events: &mut Vec<Event>, command: Command, now: i64) {
    let decision = machine::decide(state, &command, None, now).unwrap();
    events.extend(decision.events);
    *state = decision.state;
}

/// A chess game (`per_participant`, 60 s each, no increment) created at
/// `t0`: create, start, two switches, then white's clock runs out and the
/// scheduler's `Timeout` expires the session as of the deadline. Returns the
/// events and that deadline.
pub fn chess_with_timeout(id: SessionId, t0: i64) -> (Vec<Event>, i64) {
    let config = SessionConfig::parse(&test_support::chess(60_000, 0)).unwrap();
    let (mut s, created) = machine::create(config, id, Some("host".into()), t0);
    let mut events = vec![created];
    apply(&mut s, &mut events, Command::Start, t0 + 1_000);
    apply(
        &mut s,
        &mut events,
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        t0 + 3_000,
    );
    apply(
        &mut s,
        &mut events,
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        t0 + 6_000,
    );
    let deadline = machine::next_deadline(&s).unwrap();
    // The scheduler notices late; the events still say "as of the deadline".
    apply(&mut s, &mut events, Command::Timeout, deadline + 750);
    (events, deadline)
}

/// Team play (`per_group`, `auto_action` "fold", `auto_advance`): red's bank
/// runs out (the timeout event carries the group and the action), blue plays
/// on, then the host cancels.
pub fn teams_with_auto_action(id: SessionId, t0: i64) -> (Vec<Event>, i64) {
    let config = SessionConfig::parse(&json!({
        "sync_mode": "per_group",
        "groups": [
            {"group_id": "red", "total_time_ms": 5000},
            {"group_id": "blue", "total_time_ms": 5000}
        ],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"}
        ],
        "action_on_timeout": {"type": "auto_action", "action": "fold"},
        "auto_advance": true,
        "metadata": {"table": 7}
    }))
    .unwrap();
    let (mut s, created) = machine::create(config, id, None, t0);
    let mut events = vec![created];
    apply(&mut s, &mut events, Command::Start, t0 + 500);
    let deadline = machine::next_deadline(&s).unwrap();
    apply(&mut s, &mut events, Command::Timeout, deadline + 20);
    apply(&mut s, &mut events, Command::Pause, deadline + 1_000);
    apply(&mut s, &mut events, Command::Resume, deadline + 2_000);
    apply(&mut s, &mut events, Command::Cancel, deadline + 3_000);
    (events, deadline)
}

/// A long game: create, start, then `switches` switches 100 ms apart (each
/// player has an hour), so `2 + switches` events.
pub fn long_game(id: SessionId, t0: i64, switches: usize) -> Vec<Event> {
    let config = SessionConfig::parse(&json!({
        "sync_mode": "per_participant",
        "increment_ms": 100,
        "participants": [
            {"participant_id": "white", "total_time_ms": 3600000},
            {"participant_id": "black", "total_time_ms": 3600000}
        ]
    }))
    .unwrap();
    let (mut s, created) = machine::create(config, id, None, t0);
    let mut events = Vec::with_capacity(switches + 2);
    events.push(created);
    apply(&mut s, &mut events, Command::Start, t0 + 100);
    let mut now = t0 + 100;
    for _ in 0..switches {
        now += 100;
        apply(
            &mut s,
            &mut events,
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            now,
        );
    }
    events
}

/// `sessions` long games of `per_session` events each, interleaved the way an
/// outbox fed by many sessions at once delivers them.
pub fn interleaved_games(sessions: usize, per_session: usize, t0: i64) -> Vec<Event> {
    let games: Vec<Vec<Event>> = (0..sessions)
        .map(|_| long_game(new_session_id(), t0, per_session - 2))
        .collect();
    let mut out = Vec::with_capacity(sessions * per_session);
    for i in 0..per_session {
        out.extend(games.iter().map(|g| g[i].clone()));
    }
    out
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Rows stored for a session.
pub async fn count_session_rows(conn: &mut AsyncPgConnection, id: SessionId) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM sync_events WHERE session_id = $1")
        .bind::<diesel::sql_types::Uuid, _>(*id.as_uuid())
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

/// Rows stored with any of these event ids (a duplicate would count twice).
pub async fn count_rows_with_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM sync_events WHERE event_id = ANY($1)")
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

#[derive(QueryableByName)]
pub struct Placement {
    /// The partition the row sits in.
    #[diesel(sql_type = Text)]
    pub partition: String,
    /// `at` in Unix ms, as PostgreSQL reads the stored timestamptz.
    #[diesel(sql_type = BigInt)]
    pub at_epoch_ms: i64,
}

/// Where an event's row is, and its `at` column.
pub async fn placement(conn: &mut AsyncPgConnection, event_id: Uuid) -> Vec<Placement> {
    diesel::sql_query(
        "SELECT tableoid::regclass::text AS partition,
                (extract(epoch FROM at) * 1000)::bigint AS at_epoch_ms
         FROM sync_events WHERE event_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(event_id)
    .load::<Placement>(conn)
    .await
    .unwrap()
}

/// A `sync_sessions` row, instants in Unix ms.
#[derive(Debug, PartialEq, QueryableByName)]
pub struct SessionRow {
    #[diesel(sql_type = Nullable<Text>)]
    pub sync_mode: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub final_status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub created_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub started_ms: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub completed_ms: Option<i64>,
    #[diesel(sql_type = BigInt)]
    pub last_version: i64,
    #[diesel(sql_type = BigInt)]
    pub updated_ms: i64,
}

pub async fn session_row(conn: &mut AsyncPgConnection, id: SessionId) -> Option<SessionRow> {
    diesel::sql_query(
        "SELECT sync_mode, final_status,
                (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
                (extract(epoch FROM started_at) * 1000)::bigint AS started_ms,
                (extract(epoch FROM completed_at) * 1000)::bigint AS completed_ms,
                last_version,
                (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms
         FROM sync_sessions WHERE session_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(*id.as_uuid())
    .load::<SessionRow>(conn)
    .await
    .unwrap()
    .pop()
}

/// The order `history` promises: newest version first, and within a version
/// the later event (in commit order) first.
pub fn newest_first(events: &[Event]) -> Vec<Event> {
    let mut out: Vec<Event> = events.iter().rev().cloned().collect();
    out.sort_by(|a, b| b.version.cmp(&a.version).then(b.at_ms.cmp(&a.at_ms)));
    out
}
