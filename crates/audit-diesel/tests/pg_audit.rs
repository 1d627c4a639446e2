//! `PgAudit` against a real PostgreSQL: migrations, idempotent batched writes,
//! history paging, the `sync_sessions` summary, partitions, and failure when
//! the database is unreachable. Tests share one database and run
//! concurrently, so each works on fresh random session ids.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use audit_diesel::{DEFAULT_MONTHS_AHEAD, PgAudit};
use common::*;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::RunQueryDsl;
use kairos_domain::{AuditError, AuditSink, Command, Event, EventType, SessionConfig, machine};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_idempotently_even_when_run_concurrently() {
    let url = database_url();
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        runs.spawn(async move { audit_diesel::run_migrations(url).await });
    }
    let mut applied = Vec::new();
    while let Some(run) = runs.join_next().await {
        applied.extend(run.unwrap().unwrap());
    }
    // Whoever came first applied them (here or in a concurrent test), and
    // nobody applied one twice.
    let unique: HashSet<_> = applied.iter().collect();
    assert_eq!(
        unique.len(),
        applied.len(),
        "a migration ran twice: {applied:?}"
    );

    let again = audit_diesel::run_migrations(url.as_str()).await.unwrap();
    assert!(
        again.is_empty(),
        "nothing is pending after a run: {again:?}"
    );

    #[derive(QueryableByName)]
    struct Schema {
        #[diesel(sql_type = Bool)]
        events: bool,
        #[diesel(sql_type = Bool)]
        sessions: bool,
        #[diesel(sql_type = Bool)]
        function: bool,
        #[diesel(sql_type = Bool)]
        partitioned: bool,
    }
    let schema = diesel::sql_query(
        "SELECT to_regclass('sync_events') IS NOT NULL AS events,
                to_regclass('sync_sessions') IS NOT NULL AS sessions,
                to_regprocedure('kairos_ensure_event_partitions(timestamptz, int)') IS NOT NULL AS function,
                EXISTS (SELECT 1 FROM pg_partitioned_table p
                        WHERE p.partrelid = 'sync_events'::regclass) AS partitioned",
    )
    .get_result::<Schema>(&mut conn().await)
    .await
    .unwrap();
    assert!(schema.events && schema.sessions && schema.function && schema.partitioned);
}

#[tokio::test]
async fn partitions_exist_for_the_current_month_and_those_ahead() {
    let audit = audit().await;
    // A second call finds everything in place.
    assert_eq!(
        audit.ensure_partitions(DEFAULT_MONTHS_AHEAD).await.unwrap(),
        0
    );

    #[derive(QueryableByName)]
    struct Part {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Bool)]
        attached: bool,
    }
    let parts = diesel::sql_query(
        "SELECT m.name, EXISTS (SELECT 1 FROM pg_inherits i
                                WHERE i.inhparent = 'sync_events'::regclass
                                  AND i.inhrelid = to_regclass(m.name)) AS attached
         FROM (SELECT 'sync_events_p' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC')
                                                 + make_interval(months => n), 'YYYY_MM') AS name
               FROM generate_series(0, $1) AS n
               UNION ALL SELECT 'sync_events_default') m",
    )
    .bind::<diesel::sql_types::Integer, _>(i32::try_from(DEFAULT_MONTHS_AHEAD).unwrap())
    .load::<Part>(&mut conn().await)
    .await
    .unwrap();
    assert_eq!(parts.len(), DEFAULT_MONTHS_AHEAD as usize + 2);
    for part in parts {
        assert!(
            part.attached,
            "{} is not a partition of sync_events",
            part.name
        );
    }
}

#[tokio::test]
async fn a_scripted_session_is_stored_once_with_every_field() {
    let audit = audit().await;
    let t0 = now_ms();
    let (chess, chess_deadline) = chess_with_timeout(new_session_id(), t0);
    let (teams, teams_deadline) = teams_with_auto_action(new_session_id(), t0);
    let batch: Vec<Event> = chess.iter().chain(&teams).cloned().collect();

    audit.write(&batch).await.unwrap();

    let mut db = conn().await;
    for script in [&chess, &teams] {
        let id = script[0].session_id;
        assert_eq!(count_session_rows(&mut db, id).await, script.len() as i64);
        // history gives back the domain events: every contract field
        // (ids, version, type, participant, group, at_ms, remaining,
        // elapsed, action, metadata) survived the round trip.
        let stored = audit.history(id, 500, None).await.unwrap();
        assert_eq!(stored, newest_first(script));
    }
    // The stored `at` is at_ms, to the millisecond, and sits in this month's partition.
    for event in &batch {
        let rows = placement(&mut db, event.event_id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].at_epoch_ms, event.at_ms);
        assert!(
            rows[0].partition.starts_with("sync_events_p"),
            "{}",
            rows[0].partition
        );
    }
    // Timeout rows carry the deadline, not the moment the scheduler noticed.
    let timeouts: Vec<&Event> = batch.iter().filter(|e| e.event_type.is_timeout()).collect();
    assert_eq!(
        timeouts.len(),
        3,
        "participant + session expired, and red's expiry"
    );
    for e in timeouts {
        let deadline = if e.session_id == chess[0].session_id {
            chess_deadline
        } else {
            teams_deadline
        };
        assert_eq!(e.at_ms, deadline);
    }
    // The team timeout carries its group and the client's action.
    let red = teams
        .iter()
        .find(|e| e.event_type == EventType::ParticipantExpired)
        .unwrap();
    assert_eq!(red.group_id.as_ref().unwrap().as_str(), "red");
    assert_eq!(red.action.as_deref(), Some("fold"));
}

#[tokio::test]
async fn writing_the_same_events_again_stores_them_once() {
    let audit = audit().await;
    let events = interleaved_games(10, 30, now_ms());
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();

    audit.write(&events).await.unwrap();
    audit.write(&events).await.unwrap();
    // A redelivered part, and overlapping batches from two consumers at once.
    audit.write(&events[100..150]).await.unwrap();
    let (a, b) = (audit.clone(), audit.clone());
    let (first, second) = (events[..200].to_vec(), events[150..].to_vec());
    let (ra, rb) = tokio::join!(a.write(&first), b.write(&second));
    ra.unwrap();
    rb.unwrap();

    assert_eq!(count_rows_with_ids(&mut conn().await, &ids).await, 300);
}

#[tokio::test]
async fn a_batch_of_5000_events_is_written_whole() {
    let audit = audit().await;
    let events = interleaved_games(50, 100, now_ms());
    assert_eq!(events.len(), 5_000);

    audit.write(&events).await.unwrap();

    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(count_rows_with_ids(&mut conn().await, &ids).await, 5_000);
    // Larger than one statement allows (65,535 parameters / 12 columns):
    // split into several statements of one transaction.
    let big = interleaved_games(60, 100, now_ms());
    assert!(big.len() > audit_diesel::MAX_ROWS_PER_INSERT);
    audit.write(&big).await.unwrap();
    let ids: Vec<Uuid> = big.iter().map(|e| e.event_id).collect();
    assert_eq!(count_rows_with_ids(&mut conn().await, &ids).await, 6_000);
}

#[tokio::test]
async fn history_is_newest_first_with_limit_and_before_ms_paging() {
    let audit = audit().await;
    let id = new_session_id();
    let t0 = now_ms();
    let events = long_game(id, t0, 48);
    // Another session's events must never show up.
    let other = long_game(new_session_id(), t0, 10);
    // Written out of order and in pieces, as a redelivering outbox might.
    audit.write(&events[25..]).await.unwrap();
    audit.write(&other).await.unwrap();
    audit.write(&events[..25]).await.unwrap();
    let expected = newest_first(&events);

    assert_eq!(audit.history(id, 500, None).await.unwrap(), expected);
    assert_eq!(audit.history(id, 7, None).await.unwrap(), expected[..7]);
    assert!(audit.history(id, 0, None).await.unwrap().is_empty());

    // Page through with before_ms = the oldest at_ms seen so far.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = audit.history(id, 10, before).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        if let Some(b) = before {
            assert!(page.iter().all(|e| e.at_ms < b), "before_ms is exclusive");
        }
        before = page.last().map(|e| e.at_ms);
        paged.extend(page);
    }
    assert_eq!(paged, expected);

    let cut = events[20].at_ms;
    let older = audit.history(id, 500, Some(cut)).await.unwrap();
    let want: Vec<Event> = expected.iter().filter(|e| e.at_ms < cut).cloned().collect();
    assert_eq!(older, want);
    assert_eq!(older.len(), 20);

    assert!(
        audit
            .history(new_session_id(), 10, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sync_sessions_follows_the_lifecycle_whatever_the_batch_order() {
    let audit = audit().await;
    let mut db = conn().await;
    let t0 = now_ms();

    // In order, one event per batch, as a live session is drained.
    let (chess, deadline) = chess_with_timeout(new_session_id(), t0);
    let id = chess[0].session_id;
    for (i, event) in chess.iter().enumerate() {
        audit.write(std::slice::from_ref(event)).await.unwrap();
        let row = session_row(&mut db, id).await.unwrap();
        assert_eq!(row.last_version, i64::try_from(event.version).unwrap());
        if i == 0 {
            assert_eq!(row.started_ms, None);
            assert_eq!(row.final_status, None);
        }
    }
    let want = SessionRow {
        sync_mode: Some("per_participant".into()),
        final_status: Some("expired".into()),
        created_ms: Some(t0),
        started_ms: Some(t0 + 1_000),
        completed_ms: Some(deadline),
        last_version: 5,
        updated_ms: deadline,
    };
    assert_eq!(session_row(&mut db, id).await.unwrap(), want);

    // Backwards, one event per batch (a redelivering outbox): same row.
    let (teams, _) = teams_with_auto_action(new_session_id(), t0);
    let id = teams[0].session_id;
    for event in teams.iter().rev() {
        audit.write(std::slice::from_ref(event)).await.unwrap();
    }
    let row = session_row(&mut db, id).await.unwrap();
    let last = teams.last().unwrap();
    assert_eq!(
        row,
        SessionRow {
            sync_mode: Some("per_group".into()),
            final_status: Some("cancelled".into()),
            created_ms: Some(t0),
            started_ms: Some(t0 + 500),
            completed_ms: Some(last.at_ms),
            last_version: i64::try_from(last.version).unwrap(),
            updated_ms: last.at_ms,
        }
    );

    // Completed: the third way a session ends (a global countdown).
    let id = new_session_id();
    let config =
        SessionConfig::parse(&json!({"sync_mode": "global", "total_time_ms": 60000})).unwrap();
    let (mut s, created) = machine::create(config, id, None, t0);
    let mut complete = vec![created];
    apply(&mut s, &mut complete, Command::Start, t0 + 10);
    apply(&mut s, &mut complete, Command::Complete, t0 + 20);
    audit.write(&complete).await.unwrap();
    let row = session_row(&mut db, id).await.unwrap();
    assert_eq!(row.final_status.as_deref(), Some("completed"));
    assert_eq!(row.sync_mode.as_deref(), Some("global"));
    assert_eq!(row.completed_ms, Some(t0 + 20));
}

#[tokio::test]
async fn a_reused_session_id_starts_its_summary_over() {
    let audit = audit().await;
    let mut db = conn().await;
    let id = new_session_id();
    let t0 = now_ms();
    let (first_life, _) = chess_with_timeout(id, t0);
    audit.write(&first_life).await.unwrap();

    // Deleted, then created again under the same id a minute later.
    let second_life = long_game(id, t0 + 120_000, 1);
    audit.write(&second_life).await.unwrap();
    let row = session_row(&mut db, id).await.unwrap();
    assert_eq!(row.created_ms, Some(t0 + 120_000));
    assert_eq!(row.final_status, None);
    assert_eq!(row.completed_ms, None);
    assert_eq!(row.last_version, 3);

    // A straggler of the first life, redelivered late, changes nothing.
    audit.write(&first_life[3..]).await.unwrap();
    assert_eq!(session_row(&mut db, id).await.unwrap(), row);
    // Both lives stay in the trail (their event ids differ).
    assert_eq!(
        count_session_rows(&mut db, id).await,
        (first_life.len() + second_life.len()) as i64
    );
}

#[tokio::test]
async fn an_event_far_outside_the_partitions_lands_in_the_default_partition() {
    let audit = audit().await;
    // 2200-06-15: no partition covers it, and no test creates one.
    let far = 7_272_374_400_000;
    let events = long_game(new_session_id(), far, 2);

    audit.write(&events).await.unwrap();
    audit.write(&events).await.unwrap();

    let mut db = conn().await;
    for e in &events {
        let rows = placement(&mut db, e.event_id).await;
        assert_eq!(rows.len(), 1, "stored once");
        assert_eq!(rows[0].partition, "sync_events_default");
        assert_eq!(rows[0].at_epoch_ms, e.at_ms);
    }
    assert_eq!(
        audit.history(events[0].session_id, 10, None).await.unwrap(),
        newest_first(&events)
    );
}

#[tokio::test]
async fn creating_a_month_moves_its_rows_out_of_the_default_partition() {
    let audit = audit().await;
    let mut db = conn().await;
    // A random month between 2300 and 2999, so that reruns on the same
    // database start from a month without a partition (the event lands in
    // the default partition first).
    let r = Uuid::new_v4().as_u128();
    let (year, month) = (2300 + (r % 700) as i32, 1 + ((r >> 16) % 12) as i32);
    #[derive(QueryableByName)]
    struct Ms {
        #[diesel(sql_type = BigInt)]
        ms: i64,
    }
    let t = diesel::sql_query(
        "SELECT (extract(epoch FROM make_timestamptz($1, $2, 10, 0, 0, 0, 'UTC')) * 1000)::bigint AS ms",
    )
    .bind::<diesel::sql_types::Integer, _>(year)
    .bind::<diesel::sql_types::Integer, _>(month)
    .get_result::<Ms>(&mut db)
    .await
    .unwrap()
    .ms;
    let partition = format!("sync_events_p{year}_{month:02}");
    let events = long_game(new_session_id(), t, 1);
    audit.write(&events).await.unwrap();
    assert_eq!(
        placement(&mut db, events[0].event_id).await[0].partition,
        "sync_events_default"
    );

    #[derive(QueryableByName)]
    struct Created {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        n: i32,
    }
    // Several callers at once: the advisory lock serializes them.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..3 {
        calls.spawn(async move {
            diesel::sql_query(
                "SELECT kairos_ensure_event_partitions(to_timestamp($1 / 1000.0), 0) AS n",
            )
            .bind::<BigInt, _>(t)
            .get_result::<Created>(&mut conn().await)
            .await
            .unwrap()
            .n
        });
    }
    let mut created = 0;
    while let Some(n) = calls.join_next().await {
        created += n.unwrap();
    }
    assert_eq!(created, 1, "exactly one caller created {partition}");

    for e in &events {
        let rows = placement(&mut db, e.event_id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].partition, partition);
    }
    // Rewriting after the move still finds them: same (event_id, at) key.
    audit.write(&events).await.unwrap();
    assert_eq!(count_session_rows(&mut db, events[0].session_id).await, 3);
}

#[tokio::test]
async fn a_closed_port_is_unavailable_and_the_password_never_shows() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://kairos:hunter2@127.0.0.1:{port}/kairos");

    let audit = PgAudit::connect(url.as_str(), 2).unwrap();
    assert!(!format!("{audit:?}").contains("hunter2"));
    let events = long_game(new_session_id(), now_ms(), 1);

    let errors = [
        audit.write(&events).await.unwrap_err(),
        audit
            .history(events[0].session_id, 10, None)
            .await
            .unwrap_err(),
        audit.ping().await.unwrap_err(),
        audit.ensure_partitions(1).await.unwrap_err(),
        audit_diesel::run_migrations(url.as_str())
            .await
            .unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, AuditError::Unavailable(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[tokio::test]
async fn ping_succeeds_on_a_live_database() {
    audit().await.ping().await.unwrap();
}

/// The drain's shape: 20,000 events from many sessions, written in batches
/// of 500 (the server's `AUDIT_BATCH`), each stored exactly once and in
/// order. The speed is measured by `cargo bench -p audit-diesel --bench drain`.
#[tokio::test]
async fn a_drain_of_20000_events_in_batches_of_500_stores_each_once() {
    let audit = audit().await;
    let events = interleaved_games(200, 100, now_ms());
    for batch in events.chunks(500) {
        audit.write(batch).await.unwrap();
    }

    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut db = conn().await;
    assert_eq!(count_rows_with_ids(&mut db, &ids).await, 20_000);

    #[derive(QueryableByName)]
    struct Summary {
        #[diesel(sql_type = BigInt)]
        sessions: i64,
        #[diesel(sql_type = BigInt)]
        complete: i64,
    }
    let sessions: Vec<Uuid> = events
        .iter()
        .map(|e| *e.session_id.as_uuid())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let summary = diesel::sql_query(
        "SELECT count(*) AS sessions,
                count(*) FILTER (WHERE last_version = 100 AND started_at IS NOT NULL) AS complete
         FROM sync_sessions WHERE session_id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&sessions)
    .get_result::<Summary>(&mut db)
    .await
    .unwrap();
    assert_eq!((summary.sessions, summary.complete), (200, 200));
}
