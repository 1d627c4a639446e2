//! Smoke tests of the Cluster and Sentinel modes on servers of the test's
//! own: the same scripts (the session store's, the outboxes' and the webhook
//! store's) run through each kind of connection, and a failover to a
//! promoted replica in both (Sentinel, Cluster).

mod common;

use std::time::{Duration, Instant};

use common::{OwnRedis, bumped, chess, claim_ids};
use kairos_domain::webhook::{Delivery, DeliveryRecord, Endpoint, WebhookId, new_secret};
use kairos_domain::{Clock, Commit, Outbox, SessionStore, StoreError, WebhookStore};
use store_redis::{PARTITIONS, RedisClock, RedisConfig, RedisMode, RedisStore};

/// A new enabled endpoint wanting every event, at `url`.
fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        webhook_id: WebhookId::from_uuid(uuid::Uuid::new_v4()),
        url: url.into(),
        event_types: None,
        description: None,
        secret: new_secret([1; 32]),
        created_at_ms: 1_000,
        disabled: false,
        disabled_reason: None,
    }
}

/// Create, commit, CAS conflict, claim, outbox and webhook feed round trips,
/// the webhook store's scripts, a walk over every session and the clock on
/// `store` (built with the webhook feed on).
async fn exercise(store: &RedisStore) {
    // An endpoint exists while the sessions below commit: with one server
    // the feed is written only then (Cluster writes it regardless).
    let listener = endpoint("https://receiver.example/feed");
    store
        .webhook_store()
        .create_endpoint(&listener)
        .await
        .expect("creates");
    let mut ids = Vec::new();
    // Enough sessions to land in many partitions (and so on every cluster node).
    for _ in 0..(PARTITIONS * 2) {
        let (session, created) = chess(60_000, 1_000);
        store.create(&session, &[created]).await.expect("created");
        let next = bumped(&session);
        let commit = Commit {
            rate: None,
            state: next.clone(),
            expected_version: 1,
            deadline: Some(2_000),
            events: vec![],
            publish: Vec::new(),
        };
        store.commit(&commit).await.expect("commits");
        assert_eq!(
            store.commit(&commit).await,
            Err(StoreError::VersionConflict(Some(Box::new(next.clone()))))
        );
        assert_eq!(store.load(session.id).await, Ok(Some(next)));
        ids.push(session.id);
    }
    let mut claimed = claim_ids(store, 2_000, 1_000, 60_000)
        .await
        .expect("claims");
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids);
    let entries = store.read("worker", 1_000, 60_000).await.expect("reads");
    assert_eq!(entries.len(), ids.len());
    store
        .ack(&entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    assert_eq!(store.backlog(0).await.map(|(n, _)| n), Ok(0));
    let hooks = store.webhook_outbox();
    let entries = hooks.read("fanout", 1_000, 60_000).await.expect("reads");
    assert_eq!(entries.len(), ids.len());
    hooks
        .ack(&entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
        .await
        .expect("acks");
    assert_eq!(hooks.backlog(0).await.map(|(n, _)| n), Ok(0));
    assert_eq!(
        store
            .webhook_store()
            .delete_endpoint(listener.webhook_id)
            .await,
        Ok(true)
    );
    exercise_webhooks(store).await;
    assert_eq!(store.delete(ids[0]).await, Ok(true));
    assert_eq!(store.ping().await, Ok(()));
    // A walk over every session: each partition's SCAN reaches its node.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(cursor, 50).await.expect("lists");
        listed.extend(page.sessions.iter().map(|s| s.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    listed.sort();
    listed.dedup();
    assert_eq!(listed, ids[1..], "every session but the deleted one");

    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let (clock, _task) = RedisClock::connect(store.connection(), Duration::from_secs(60), stopped)
        .await
        .expect("clock");
    assert!(clock.now_ms() > 1_577_836_800_000, "epoch milliseconds");
}

/// Every webhook store operation once (their keys share the `{wh}` slot).
async fn exercise_webhooks(store: &RedisStore) {
    let w = store.webhook_store();
    let e = endpoint("https://receiver.example/hook");
    w.create_endpoint(&e).await.expect("creates");
    assert_eq!(w.list_endpoints().await, Ok(vec![e.clone()]));
    let d = Delivery {
        webhook_id: e.webhook_id,
        event_id: uuid::Uuid::new_v4(),
        body: "{}".into(),
        attempt: 1,
        due_at_ms: 1_000,
        first_enqueued_at_ms: 1_000,
    };
    w.enqueue(&[d.clone(), d.clone()]).await.expect("enqueues");
    assert_eq!(w.claim_due(1_000, 10, 1_000).await, Ok(vec![d.clone()]));
    w.reschedule(e.webhook_id, d.event_id, 2, 5_000)
        .await
        .expect("reschedules");
    assert_eq!(w.queue_stats(6_000).await, Ok((1, 5_000)));
    assert_eq!(w.claim_due(5_000, 10, 1_000).await.map(|c| c.len()), Ok(1));
    w.finish(e.webhook_id, d.event_id).await.expect("finishes");
    assert_eq!(w.queue_stats(6_000).await, Ok((0, 0)));
    let rec = DeliveryRecord {
        event_id: d.event_id,
        attempt: 2,
        status_code: Some(204),
        error: None,
        sent_at_ms: 5_000,
        latency_ms: 3,
    };
    w.record_delivery(e.webhook_id, &rec)
        .await
        .expect("records");
    assert_eq!(w.deliveries(e.webhook_id, 10).await, Ok(vec![rec]));
    w.enqueue(std::slice::from_ref(&d)).await.expect("enqueues");
    w.disable_endpoint(e.webhook_id, "gone")
        .await
        .expect("disables");
    assert_eq!(w.claim_due(i64::MAX / 2, 10, 1).await, Ok(vec![]));
    assert_eq!(w.delete_endpoint(e.webhook_id).await, Ok(true));
    assert_eq!(w.get_endpoint(e.webhook_id).await, Ok(None));
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    let mut conn = client.get_connection().expect("connects");
    cmd.query(&mut conn).expect("query")
}

const CLUSTER_NODE: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "500",
    "--appendonly",
    "no",
];

/// Three primaries, slots split in thirds, introduced to each other.
async fn three_primaries() -> Vec<OwnRedis> {
    let nodes: Vec<OwnRedis> = (0..3)
        .map(|_| OwnRedis::start_with(&CLUSTER_NODE))
        .collect();
    let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
    for (node, (from, to)) in nodes.iter().zip(ranges) {
        let _: String = query(
            node.port,
            redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(from).arg(to),
        );
    }
    for other in &nodes[1..] {
        let _: String = query(
            nodes[0].port,
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(other.port),
        );
    }
    wait_until("the cluster forms", || {
        nodes.iter().all(|n| {
            let info: String = query(n.port, redis::cmd("CLUSTER").arg("INFO"));
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        })
    })
    .await;
    nodes
}

/// Polls `ready` every 100 ms, for at most 30 s.
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_runs_every_operation() {
    let nodes = three_primaries().await;

    let mut config = RedisConfig::new(nodes[0].url());
    config.redis.mode = RedisMode::Cluster {
        nodes: nodes.iter().map(OwnRedis::url).collect(),
    };
    let store = RedisStore::connect(&config)
        .await
        .expect("connects to the cluster")
        .with_webhook_feed(true);

    exercise(&store).await;

    // The partitions really are spread: every node holds some deadline index.
    for node in &nodes {
        let keys: Vec<String> = query(node.port, redis::cmd("KEYS").arg("kairos:*:deadlines"));
        assert!(!keys.is_empty(), "node {} holds no partition", node.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_finds_the_primary_and_runs_every_operation() {
    let primary = OwnRedis::start_with(&["--appendonly", "no"]);
    let sentinel = OwnRedis::start_sentinel("kairos-primary", primary.port);
    let mut config = RedisConfig::new("redis://ignored-host:1/");
    config.redis.mode = RedisMode::Sentinel {
        master_name: "kairos-primary".into(),
        sentinels: vec![sentinel.url()],
    };

    let store = RedisStore::connect(&config)
        .await
        .expect("connects through Sentinel")
        .with_webhook_feed(true);

    exercise(&store).await;
    let sessions: Vec<String> = query(primary.port, redis::cmd("KEYS").arg("kairos:*:s:*"));
    assert_eq!(
        sessions.len(),
        PARTITIONS * 2 - 1,
        "the data is on the primary"
    );
}

/// Loads `id` until the store answers, for at most 30 s after `died`: a
/// failover may refuse calls with `Unavailable` meanwhile, nothing else.
/// Returns the state and how many calls were refused.
async fn load_through_failover(
    store: &RedisStore,
    id: kairos_domain::SessionId,
    died: Instant,
) -> (Option<kairos_domain::Session>, usize) {
    let mut refused = 0;
    loop {
        match store.load(id).await {
            Ok(found) => return (found, refused),
            Err(StoreError::Unavailable(_)) => refused += 1,
            Err(other) => panic!("a failover is not a fault: {other:?}"),
        }
        assert!(
            died.elapsed() < Duration::from_secs(30),
            "no new primary within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sentinel promotes the replica when the primary dies: the same store
/// finds the new primary by itself, with every state that was replicated,
/// and commits there. Until then calls fail fast with `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_follows_a_failover_to_the_promoted_replica() {
    let mut primary = OwnRedis::start_with(&["--appendonly", "no"]);
    let primary_port = primary.port.to_string();
    let replica = OwnRedis::start_with(&[
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &primary_port,
    ]);
    let sentinel = OwnRedis::start_sentinel_with(
        "kairos-failover",
        primary.port,
        &[
            ("down-after-milliseconds", "500"),
            ("failover-timeout", "5000"),
        ],
    );
    let mut config = RedisConfig::new("redis://ignored-host:1/");
    config.redis.mode = RedisMode::Sentinel {
        master_name: "kairos-failover".into(),
        sentinels: vec![sentinel.url()],
    };
    // Attached before the write (on a loaded machine the first sync can
    // take longer than the WAIT below allows).
    wait_until("the replica is in sync", || {
        let info: String = query(replica.port, redis::cmd("INFO").arg("replication"));
        info.contains("master_link_status:up")
    })
    .await;
    let store = RedisStore::connect(&config)
        .await
        .expect("connects through Sentinel");
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");
    // The replica has everything before the primary dies (WAIT: one
    // replica acknowledged the writes, or 5 s passed).
    let acked: i64 = query(primary.port, redis::cmd("WAIT").arg(1).arg(5_000));
    assert_eq!(acked, 1, "the replica is attached");

    primary.stop();
    let failed_at = Instant::now();
    let (stored, unavailable) = load_through_failover(&store, session.id, failed_at).await;
    eprintln!(
        "served again {:?} after the primary died ({unavailable} calls refused meanwhile)",
        failed_at.elapsed()
    );
    if stored.as_ref() != Some(&session) {
        // Which server answered: what the Sentinel names as primary now,
        // and what the replica holds.
        let master: Vec<String> = query(
            sentinel.port,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("kairos-failover"),
        );
        let keys: i64 = query(replica.port, &mut redis::cmd("DBSIZE"));
        let role: Vec<redis::Value> = query(replica.port, &mut redis::cmd("ROLE"));
        panic!(
            "the replicated state did not survive: loaded {stored:?}; the Sentinel names {master:?} \
             (the old primary was on {primary_port}, the replica is on {}); the replica holds {keys} \
             keys, role {role:?}",
            replica.port
        );
    }
    let next = bumped(&session);
    store
        .commit(&Commit {
            rate: None,
            state: next.clone(),
            expected_version: session.version,
            deadline: None,
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("commits on the new primary");
    assert_eq!(store.load(session.id).await, Ok(Some(next)));
    let role: Vec<redis::Value> = query(replica.port, &mut redis::cmd("ROLE"));
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
}

/// A Cluster primary dies: its replica is promoted, and the same store
/// finds it by itself, with every replicated state, and commits there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_follows_a_failover_to_the_promoted_replica() {
    let mut nodes = three_primaries().await;
    let replica = OwnRedis::start_with(&CLUSTER_NODE);
    let primary_id: String = query(nodes[0].port, redis::cmd("CLUSTER").arg("MYID"));
    let _: String = query(
        replica.port,
        redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(nodes[0].port),
    );
    wait_until("the replica is known to the primary", || {
        let known: String = query(replica.port, redis::cmd("CLUSTER").arg("NODES"));
        known.contains(&primary_id)
    })
    .await;
    let _: String = query(
        replica.port,
        redis::cmd("CLUSTER").arg("REPLICATE").arg(&primary_id),
    );
    wait_until("the replica is in sync", || {
        let info: String = query(replica.port, redis::cmd("INFO").arg("replication"));
        info.contains("master_link_status:up")
    })
    .await;

    let mut config = RedisConfig::new(nodes[0].url());
    config.redis.mode = RedisMode::Cluster {
        nodes: nodes
            .iter()
            .chain(std::iter::once(&replica))
            .map(OwnRedis::url)
            .collect(),
    };
    let store = RedisStore::connect(&config)
        .await
        .expect("connects to the cluster");
    // Enough sessions for a third of them to live on the first primary.
    let mut sessions = Vec::new();
    for _ in 0..PARTITIONS {
        let (session, created) = chess(60_000, 1_000);
        store.create(&session, &[created]).await.expect("created");
        sessions.push(session);
    }
    let on_first: Vec<String> = query(nodes[0].port, redis::cmd("KEYS").arg("kairos:*:s:*"));
    assert!(!on_first.is_empty(), "no session on the first primary");
    let acked: i64 = query(nodes[0].port, redis::cmd("WAIT").arg(1).arg(5_000));
    assert_eq!(acked, 1, "the replica acknowledged the writes");

    nodes[0].stop();
    let died = Instant::now();
    let mut refused = 0;
    for session in &sessions {
        let (found, unavailable) = load_through_failover(&store, session.id, died).await;
        assert_eq!(found.as_ref(), Some(session), "a replicated state survived");
        refused += unavailable;
    }
    eprintln!(
        "every session readable {:?} after the primary died ({refused} calls refused meanwhile)",
        died.elapsed()
    );
    // Each session commits, those of the dead primary's slots on the replica.
    for session in &sessions {
        let next = bumped(session);
        store
            .commit(&Commit {
                rate: None,
                state: next.clone(),
                expected_version: session.version,
                deadline: None,
                events: vec![],
                publish: Vec::new(),
            })
            .await
            .expect("commits after the failover");
    }
    let role: Vec<redis::Value> = query(replica.port, &mut redis::cmd("ROLE"));
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
}
