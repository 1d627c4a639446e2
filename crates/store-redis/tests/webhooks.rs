//! The `WebhookStore` port and the webhook feed, one suite run against both
//! implementations: `adapter-memory` (the embedded default) and Redis (the
//! test Redis of `cargo xtask test`). Enqueue is idempotent, concurrent
//! claims from two instances never share a job, a claim hides a
//! job for its lease and gives it back after it, finish and reschedule,
//! removed and disabled endpoints take their jobs with them, the delivery
//! log is newest first and bounded, the queue stats; and the webhook
//! outbox gets every event of a commit and a create (and pushed presence
//! events) while the audit outbox is unaffected.
//!
//! Times are explicit `now_ms` values, so no test sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use adapter_memory::{MemoryStore, MemoryWebhookStore};
use common::{chess, raw, redis_url};
use kairos_domain::webhook::{Delivery, DeliveryRecord, Endpoint, WebhookId, body, new_secret};
use kairos_domain::{
    Command, Commit, Event, EventType, Outbox, SessionStore, WebhookStore, machine,
};
use redis::AsyncCommands;
use store_redis::{DELIVERY_LOG_LEN, RedisStore};
use uuid::Uuid;

/// One implementation: its session store, audit outbox, webhook outbox
/// and webhook store, built together as the server would.
struct Harness {
    name: &'static str,
    sessions: Arc<dyn SessionStore>,
    audit: Arc<dyn Outbox>,
    hooks: Arc<dyn Outbox>,
    webhooks: Arc<dyn WebhookStore>,
    /// The same webhook store as another instance sees it (for memory, the
    /// one process's store again; for Redis, a store of its own connection).
    twin: Arc<dyn WebhookStore>,
}

fn memory(feed: bool) -> Harness {
    let store = Arc::new(MemoryStore::new(Duration::from_secs(3600)).with_webhook_feed(feed));
    let webhooks = Arc::new(MemoryWebhookStore::with_feed(store.webhook_outbox()));
    Harness {
        name: "memory",
        hooks: Arc::new(store.webhook_outbox()),
        twin: webhooks.clone(),
        webhooks,
        sessions: store.clone(),
        audit: store,
    }
}

async fn redis(feed: bool) -> Harness {
    let config = common::config();
    let store = Arc::new(
        RedisStore::connect(&config)
            .await
            .expect("connects to the test Redis")
            .with_webhook_feed(feed),
    );
    let other = RedisStore::connect(&config)
        .await
        .expect("connects to the test Redis");
    Harness {
        name: "redis",
        twin: Arc::new(other.webhook_store()),
        hooks: Arc::new(store.webhook_outbox()),
        webhooks: Arc::new(store.webhook_store()),
        sessions: store.clone(),
        audit: store,
    }
}

/// Both implementations, webhook feed on.
async fn both() -> [Harness; 2] {
    [memory(true), redis(true).await]
}

fn endpoint(n: u128) -> Endpoint {
    Endpoint {
        webhook_id: WebhookId::from_uuid(Uuid::from_u128(n)),
        url: format!("https://receiver.example/{n}"),
        event_types: Some(vec![EventType::SessionExpired, EventType::PresenceJoined]),
        description: Some(format!("receiver {n}")),
        secret: new_secret([n as u8; 32]),
        created_at_ms: 1_760_970_600_000 + n as i64,
        disabled: false,
        disabled_reason: None,
    }
}

fn delivery(endpoint: &Endpoint, event: u128, due_at_ms: i64, first: i64) -> Delivery {
    Delivery {
        webhook_id: endpoint.webhook_id,
        event_id: Uuid::from_u128(event),
        body: format!(r#"{{"type":"session_expired","data":{{"n":{event}}}}}"#),
        attempt: 1,
        due_at_ms,
        first_enqueued_at_ms: first,
    }
}

/// The (endpoint, event, attempt) of each claimed job, sorted.
fn keys(claimed: &[Delivery]) -> Vec<(WebhookId, Uuid, u32)> {
    let mut out: Vec<_> = claimed
        .iter()
        .map(|d| (d.webhook_id, d.event_id, d.attempt))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn endpoints_are_created_listed_disabled_and_deleted() {
    for h in both().await {
        let (a, b) = (endpoint(1), endpoint(2));
        let w = &h.webhooks;
        assert_eq!(w.list_endpoints().await, Ok(vec![]), "{}", h.name);
        w.create_endpoint(&a).await.expect("creates");
        w.create_endpoint(&b).await.expect("creates");

        assert_eq!(
            w.get_endpoint(a.webhook_id).await,
            Ok(Some(a.clone())),
            "{}",
            h.name
        );
        let mut listed = w.list_endpoints().await.expect("lists");
        listed.sort_by_key(|e| e.webhook_id);
        assert_eq!(listed, vec![a.clone(), b.clone()], "{}", h.name);

        w.disable_endpoint(b.webhook_id, "the receiver answered 410 Gone")
            .await
            .expect("disables");
        let disabled = w.get_endpoint(b.webhook_id).await.expect("gets");
        assert_eq!(
            disabled,
            Some(Endpoint {
                disabled: true,
                disabled_reason: Some("the receiver answered 410 Gone".to_owned()),
                ..b.clone()
            }),
            "{}",
            h.name
        );

        assert_eq!(
            w.delete_endpoint(a.webhook_id).await,
            Ok(true),
            "{}",
            h.name
        );
        assert_eq!(
            w.delete_endpoint(a.webhook_id).await,
            Ok(false),
            "{}",
            h.name
        );
        assert_eq!(w.get_endpoint(a.webhook_id).await, Ok(None), "{}", h.name);
        // Disabling an endpoint that is gone does not bring it back.
        w.disable_endpoint(a.webhook_id, "late")
            .await
            .expect("no-op");
        assert_eq!(w.get_endpoint(a.webhook_id).await, Ok(None), "{}", h.name);
        assert_eq!(
            w.list_endpoints().await.map(|l| l.len()),
            Ok(1),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn enqueue_is_idempotent_per_endpoint_and_event() {
    for h in both().await {
        let e = endpoint(1);
        let w = &h.webhooks;
        w.create_endpoint(&e).await.expect("creates");
        let first = delivery(&e, 7, 1_000, 900);
        w.enqueue(std::slice::from_ref(&first))
            .await
            .expect("enqueues");

        // The same pair again, even with another attempt, due time and body: a no-op.
        let again = Delivery {
            attempt: 5,
            due_at_ms: 0,
            body: "other".to_owned(),
            ..first.clone()
        };
        w.enqueue(&[again.clone(), again]).await.expect("enqueues");

        assert_eq!(w.queue_stats(1_000).await, Ok((1, 100)), "{}", h.name);
        assert_eq!(w.claim_due(999, 10, 5_000).await, Ok(vec![]), "{}", h.name);
        assert_eq!(
            w.claim_due(1_000, 10, 5_000).await,
            Ok(vec![first]),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn a_claim_hides_a_job_for_its_lease_and_returns_it_after() {
    for h in both().await {
        let e = endpoint(1);
        let w = &h.webhooks;
        w.create_endpoint(&e).await.expect("creates");
        let d = delivery(&e, 1, 1_000, 1_000);
        w.enqueue(std::slice::from_ref(&d)).await.expect("enqueues");

        assert_eq!(
            w.claim_due(1_000, 10, 5_000).await,
            Ok(vec![d.clone()]),
            "{}",
            h.name
        );
        // Hidden from every caller until the lease ends at 6,000.
        assert_eq!(
            w.claim_due(1_001, 10, 5_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        assert_eq!(
            w.claim_due(5_999, 10, 5_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        // The claimer died without finishing: the job is due again, unchanged.
        assert_eq!(
            w.claim_due(6_000, 10, 5_000).await,
            Ok(vec![d.clone()]),
            "{}",
            h.name
        );
        assert_eq!(
            w.claim_due(6_001, 10, 5_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        // Still queued throughout.
        assert_eq!(w.queue_stats(6_001).await, Ok((1, 5_001)), "{}", h.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_two_instances_never_share_a_job() {
    for h in both().await {
        let e = endpoint(1);
        h.webhooks.create_endpoint(&e).await.expect("creates");
        let jobs: Vec<Delivery> = (1..=60).map(|n| delivery(&e, n, 1_000, 1_000)).collect();
        h.webhooks.enqueue(&jobs).await.expect("enqueues");

        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..4 {
            let (a, b) = tokio::join!(
                h.webhooks.claim_due(2_000, 10, 60_000),
                h.twin.claim_due(2_000, 10, 60_000)
            );
            mine.extend(a.expect("claims"));
            theirs.extend(b.expect("claims"));
        }
        let mut all = keys(&mine);
        all.extend(keys(&theirs));
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(all.len(), before, "{}: a job was claimed twice", h.name);
        assert_eq!(all, keys(&jobs), "{}", h.name);
        assert_eq!(
            h.twin.claim_due(2_000, 100, 60_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn claims_take_the_earliest_due_up_to_the_limit() {
    for h in both().await {
        let e = endpoint(1);
        let w = &h.webhooks;
        w.create_endpoint(&e).await.expect("creates");
        let jobs: Vec<Delivery> = (1..=5)
            .map(|n| delivery(&e, n, 1_000 * n as i64, 500))
            .collect();
        w.enqueue(&jobs).await.expect("enqueues");

        let first = w.claim_due(10_000, 2, 60_000).await.expect("claims");
        assert_eq!(keys(&first), keys(&jobs[..2]), "{}", h.name);
        let due_by_3500 = w.claim_due(3_500, 10, 60_000).await.expect("claims");
        assert_eq!(keys(&due_by_3500), keys(&jobs[2..3]), "{}", h.name);
        let rest = w.claim_due(10_000, 10, 60_000).await.expect("claims");
        assert_eq!(keys(&rest), keys(&jobs[3..]), "{}", h.name);
        assert_eq!(
            w.claim_due(10_000, 0, 60_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn reschedule_sets_the_next_attempt_and_finish_removes_the_job() {
    for h in both().await {
        let e = endpoint(1);
        let w = &h.webhooks;
        w.create_endpoint(&e).await.expect("creates");
        let d = delivery(&e, 1, 1_000, 1_000);
        w.enqueue(std::slice::from_ref(&d)).await.expect("enqueues");
        assert_eq!(w.claim_due(1_000, 10, 60_000).await.map(|c| c.len()), Ok(1));

        // The attempt failed: retry at 9,000, before the lease would end.
        w.reschedule(e.webhook_id, d.event_id, 2, 9_000)
            .await
            .expect("reschedules");
        assert_eq!(
            w.claim_due(8_999, 10, 60_000).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        let retried = Delivery {
            attempt: 2,
            due_at_ms: 9_000,
            ..d.clone()
        };
        assert_eq!(
            w.claim_due(9_000, 10, 60_000).await,
            Ok(vec![retried]),
            "{}",
            h.name
        );

        // Delivered: gone for good.
        w.finish(e.webhook_id, d.event_id).await.expect("finishes");
        assert_eq!(w.queue_stats(100_000).await, Ok((0, 0)), "{}", h.name);
        assert_eq!(
            w.claim_due(i64::MAX / 2, 10, 1).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        // Finishing or rescheduling what is not queued changes nothing.
        w.finish(e.webhook_id, d.event_id).await.expect("no-op");
        w.reschedule(e.webhook_id, Uuid::from_u128(99), 3, 0)
            .await
            .expect("no-op");
        assert_eq!(w.queue_stats(100_000).await, Ok((0, 0)), "{}", h.name);
        assert_eq!(
            w.claim_due(i64::MAX / 2, 10, 1).await,
            Ok(vec![]),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn deleted_and_disabled_endpoints_take_their_jobs_with_them() {
    for h in both().await {
        let (a, b, c) = (endpoint(1), endpoint(2), endpoint(3));
        let w = &h.webhooks;
        for e in [&a, &b, &c] {
            w.create_endpoint(e).await.expect("creates");
        }
        let mut jobs: Vec<Delivery> = (1..=3).map(|n| delivery(&a, n, 1_000, 1_000)).collect();
        jobs.push(delivery(&b, 4, 1_000, 1_000));
        jobs.push(delivery(&c, 5, 1_000, 2_000));
        w.enqueue(&jobs).await.expect("enqueues");
        assert_eq!(w.queue_stats(3_000).await, Ok((5, 2_000)), "{}", h.name);

        assert_eq!(w.delete_endpoint(a.webhook_id).await, Ok(true));
        w.disable_endpoint(b.webhook_id, "retry schedule exhausted")
            .await
            .expect("disables");
        assert_eq!(w.queue_stats(3_000).await, Ok((1, 1_000)), "{}", h.name);

        // Neither can be queued for again.
        w.enqueue(&[delivery(&a, 6, 1_000, 1_000), delivery(&b, 7, 1_000, 1_000)])
            .await
            .expect("enqueues");
        assert_eq!(w.queue_stats(3_000).await, Ok((1, 1_000)), "{}", h.name);
        assert_eq!(
            w.claim_due(3_000, 10, 60_000).await,
            Ok(vec![jobs[4].clone()]),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn queue_stats_count_every_queued_job_and_age_the_oldest() {
    for h in both().await {
        let e = endpoint(1);
        let w = &h.webhooks;
        assert_eq!(w.queue_stats(5_000).await, Ok((0, 0)), "{}", h.name);
        w.create_endpoint(&e).await.expect("creates");
        w.enqueue(&[
            delivery(&e, 1, 50_000, 3_000),
            delivery(&e, 2, 1_000, 1_000),
            delivery(&e, 3, 20_000, 2_000),
        ])
        .await
        .expect("enqueues");
        // Claimed (in flight) jobs are still undelivered.
        assert_eq!(w.claim_due(1_000, 10, 60_000).await.map(|c| c.len()), Ok(1));
        assert_eq!(w.queue_stats(10_000).await, Ok((3, 9_000)), "{}", h.name);
        w.finish(e.webhook_id, Uuid::from_u128(2))
            .await
            .expect("finishes");
        assert_eq!(w.queue_stats(10_000).await, Ok((2, 8_000)), "{}", h.name);
        // A clock behind the oldest never reports a negative age.
        assert_eq!(w.queue_stats(0).await, Ok((2, 0)), "{}", h.name);
    }
}

fn record(n: u32) -> DeliveryRecord {
    DeliveryRecord {
        event_id: Uuid::from_u128(u128::from(n)),
        attempt: n,
        status_code: if n.is_multiple_of(2) { Some(200) } else { None },
        error: if n.is_multiple_of(2) {
            None
        } else {
            Some("connection refused".to_owned())
        },
        sent_at_ms: 1_760_970_600_000 + i64::from(n),
        latency_ms: i64::from(n % 50),
    }
}

#[tokio::test]
async fn the_delivery_log_is_newest_first_and_keeps_the_newest_thousand() {
    for h in both().await {
        let (a, b) = (endpoint(1), endpoint(2));
        let w = &h.webhooks;
        w.create_endpoint(&a).await.expect("creates");
        w.create_endpoint(&b).await.expect("creates");
        assert_eq!(
            w.deliveries(a.webhook_id, 10).await,
            Ok(vec![]),
            "{}",
            h.name
        );

        let total = DELIVERY_LOG_LEN as u32 + 5;
        for n in 0..total {
            w.record_delivery(a.webhook_id, &record(n))
                .await
                .expect("records");
        }
        w.record_delivery(b.webhook_id, &record(7))
            .await
            .expect("records");

        let newest: Vec<DeliveryRecord> = (total - 3..total).rev().map(record).collect();
        assert_eq!(
            w.deliveries(a.webhook_id, 3).await,
            Ok(newest),
            "{}",
            h.name
        );
        let all = w.deliveries(a.webhook_id, 5_000).await.expect("lists");
        assert_eq!(all.len(), DELIVERY_LOG_LEN, "{}", h.name);
        assert_eq!(
            all.last(),
            Some(&record(5)),
            "{}: the oldest five are gone",
            h.name
        );
        assert_eq!(
            w.deliveries(a.webhook_id, 0).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        assert_eq!(
            w.deliveries(b.webhook_id, 10).await,
            Ok(vec![record(7)]),
            "{}",
            h.name
        );

        // The log goes with its endpoint.
        w.delete_endpoint(a.webhook_id).await.expect("deletes");
        assert_eq!(
            w.deliveries(a.webhook_id, 10).await,
            Ok(vec![]),
            "{}",
            h.name
        );
    }
}

/// Creates a chess session and starts it: the events of a create and of a commit.
async fn create_and_start(sessions: &dyn SessionStore) -> Vec<Event> {
    let (session, created) = chess(60_000, 1_000);
    sessions
        .create(&session, std::slice::from_ref(&created))
        .await
        .expect("creates");
    let decision = machine::decide(&session, &Command::Start, None, 2_000).expect("starts");
    let mut events = vec![created];
    events.extend(decision.events.iter().cloned());
    sessions
        .commit(&Commit {
            deadline: machine::next_deadline(&decision.state),
            expected_version: session.version,
            events: decision.events,
            state: decision.state,
            rate: None,
            publish: Vec::new(),
        })
        .await
        .expect("commits");
    events
}

fn presence(session: &Event) -> Event {
    let mut metadata = serde_json::Map::new();
    metadata.insert("sub".to_owned(), "alice".into());
    Event {
        event_id: Uuid::new_v4(),
        session_id: session.session_id,
        version: 0,
        event_type: EventType::PresenceJoined,
        participant_id: None,
        group_id: None,
        at_ms: 3_000,
        time_remaining_ms: None,
        time_elapsed_ms: None,
        action: None,
        metadata,
    }
}

fn ids(entries: &[kairos_domain::OutboxEntry]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = entries.iter().map(|e| e.event.event_id).collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_webhook_outbox_gets_every_committed_event_and_the_audit_outbox_is_unaffected() {
    for h in both().await {
        // An endpoint exists: with one Redis server, commits feed the
        // webhook streams only then (see the test of the gate below).
        h.webhooks
            .create_endpoint(&endpoint(41))
            .await
            .expect("creates");
        let mut events = create_and_start(h.sessions.as_ref()).await;
        events.extend(create_and_start(h.sessions.as_ref()).await);
        let pushed = presence(&events[0]);
        h.webhooks.push_event(&pushed).await.expect("pushes");

        // The webhook feed: every event of both creates and commits, and the
        // presence event, whole.
        let hooks = h.hooks.read("fanout-a", 100, 60_000).await.expect("reads");
        let mut expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        expected.push(pushed.event_id);
        expected.sort();
        assert_eq!(ids(&hooks), expected, "{}", h.name);
        for entry in &hooks {
            let original = events
                .iter()
                .chain([&pushed])
                .find(|e| e.event_id == entry.event.event_id);
            assert_eq!(original, Some(&entry.event), "{}", h.name);
        }
        assert_eq!(
            h.hooks.backlog(0).await.map(|(n, _)| n),
            Ok(5),
            "{}",
            h.name
        );

        // Acknowledged webhook entries never return; the audit outbox still
        // holds every committed event (and no presence event).
        h.hooks
            .ack(&hooks.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
            .await
            .expect("acks");
        assert_eq!(
            h.hooks.read("fanout-b", 100, 0).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        assert_eq!(h.hooks.backlog(0).await, Ok((0, 0)), "{}", h.name);
        let audit = h.audit.read("audit", 100, 60_000).await.expect("reads");
        let mut committed: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        committed.sort();
        assert_eq!(ids(&audit), committed, "{}", h.name);

        // And the other way round: acknowledging audit entries leaves the
        // webhook feed alone.
        create_and_start(h.sessions.as_ref()).await;
        let audit = h.audit.read("audit", 100, 60_000).await.expect("reads");
        h.audit
            .ack(&audit.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
            .await
            .expect("acks");
        assert_eq!(
            h.hooks.backlog(0).await.map(|(n, _)| n),
            Ok(2),
            "{}",
            h.name
        );
    }
}

#[tokio::test]
async fn without_the_webhook_feed_nothing_reaches_the_webhook_streams() {
    for h in [memory(false), redis(false).await] {
        let events = create_and_start(h.sessions.as_ref()).await;
        h.webhooks
            .push_event(&presence(&events[0]))
            .await
            .expect("no-op");
        assert_eq!(
            h.hooks.read("fanout", 100, 0).await,
            Ok(vec![]),
            "{}",
            h.name
        );
        assert_eq!(h.hooks.backlog(0).await, Ok((0, 0)), "{}", h.name);
        let audit = h.audit.read("audit", 100, 60_000).await.expect("reads");
        assert_eq!(audit.len(), events.len(), "{}", h.name);
    }
}

#[tokio::test]
async fn redis_keeps_the_feed_in_the_partition_and_the_queue_in_one_slot() {
    let mut config = common::config();
    // The audit trail off, the webhooks on: events still go to the feed only.
    config.outbox_enabled = false;
    let store = RedisStore::connect(&config)
        .await
        .expect("connects")
        .with_webhook_feed(true);
    let e = endpoint(1);
    let w = store.webhook_store();
    w.create_endpoint(&e).await.expect("creates");
    let events = create_and_start(&store).await;
    w.enqueue(&[delivery(&e, 1, 1_000, 1_000)])
        .await
        .expect("enqueues");
    w.record_delivery(e.webhook_id, &record(1))
        .await
        .expect("records");

    let mut conn = raw(&redis_url()).await;
    let part = store_redis::partition_of(&events[0].session_id);
    let tag = format!("{}{{p{part:02}}}", config.key_prefix);
    let hooks_len: usize = conn.xlen(format!("{tag}:hooks")).await.expect("XLEN");
    assert_eq!(hooks_len, events.len());
    let outbox: bool = conn.exists(format!("{tag}:outbox")).await.expect("EXISTS");
    assert!(!outbox, "no audit outbox without an audit trail");

    let mut found: Vec<String> = conn
        .keys(format!("{}*", config.key_prefix))
        .await
        .expect("KEYS");
    found.retain(|k| !k.contains("{p"));
    found.sort();
    let wh = format!("{}{{wh}}", config.key_prefix);
    let id = e.webhook_id;
    let mut expected = vec![
        format!("{wh}:age"),
        format!("{wh}:due"),
        format!("{wh}:endpoints"),
        format!("{wh}:job:{id}:{}", Uuid::from_u128(1)),
        format!("{wh}:jobs:{id}"),
        format!("{wh}:log:{id}"),
    ];
    expected.sort();
    assert_eq!(found, expected);
    // The secret is stored (the sender signs with it) as the endpoint's JSON.
    let stored: String = conn
        .hget(format!("{wh}:endpoints"), id.to_string())
        .await
        .expect("HGET");
    assert_eq!(serde_json::from_str::<Endpoint>(&stored).ok(), Some(e));
}

#[test]
fn the_body_a_delivery_carries_is_the_domain_body() {
    // A reminder of where `Delivery::body` comes from: the fan-out builds it
    // once with `kairos_domain::webhook::body`, so every retry sends the same bytes.
    let (_, created) = chess(60_000, 1_000);
    let text = body(&created);
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(value["type"], "session_created");
    assert_eq!(value["timestamp"], "1970-01-01T00:00:01.000Z");
    assert_eq!(value["data"]["event_id"], created.event_id.to_string());
}

/// With one Redis server, a commit writes the webhook feed only while an
/// endpoint exists (checked in the commit's own atomic step): none, no
/// entry to write, read and acknowledge; one, every event; deleted again,
/// none. The audit outbox gets every event throughout.
#[tokio::test]
async fn redis_writes_the_feed_only_while_an_endpoint_exists() {
    let h = redis(true).await;
    let feed = |h: &Harness| {
        let hooks = h.hooks.clone();
        async move { hooks.backlog(0).await.map(|(n, _)| n) }
    };
    create_and_start(h.sessions.as_ref()).await;
    assert_eq!(feed(&h).await, Ok(0), "no endpoint: nothing fed");

    let e = endpoint(42);
    h.webhooks.create_endpoint(&e).await.expect("creates");
    let events = create_and_start(h.sessions.as_ref()).await;
    let fed = h.hooks.read("fanout", 100, 60_000).await.expect("reads");
    let mut expected: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    expected.sort();
    assert_eq!(ids(&fed), expected, "an endpoint: every event fed");
    h.hooks
        .ack(&fed.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");

    assert!(
        h.webhooks
            .delete_endpoint(e.webhook_id)
            .await
            .expect("deletes")
    );
    create_and_start(h.sessions.as_ref()).await;
    assert_eq!(feed(&h).await, Ok(0), "deleted: nothing fed");
    // Three creates and three starts, all in the audit outbox.
    assert_eq!(h.audit.backlog(0).await.map(|(n, _)| n), Ok(6));
}
