//! `RedisStore` as a `SessionStore` against a real Redis: round trips,
//! compare-and-set, TTLs, the deadline index, deadline claims and the walk
//! over every session (`list`).

mod common;

use std::time::Duration;

use common::{bumped, chess, claim_ids, keys_of, new_id, raw, redis_url, store, with_participants};
use kairos_domain::{Command, Commit, Session, SessionStore, StoreError, machine};
use redis::AsyncCommands;
use store_redis::RedisStore;

#[tokio::test]
async fn create_then_load_returns_the_same_state() {
    let (store, _) = store().await;
    for n in [2, 1000] {
        let (session, created) = with_participants(n, 60_000, 1_000);

        store.create(&session, &[created]).await.expect("created");
        let loaded = store.load(session.id).await.expect("loads");

        assert_eq!(loaded.as_ref(), Some(&session));
    }
    assert_eq!(store.load(new_id()).await, Ok(None));
}

#[tokio::test]
async fn create_refuses_a_taken_id_and_writes_nothing() {
    let (store, config) = store().await;
    let (session, created) = chess(60_000, 1_000);
    store
        .create(&session, std::slice::from_ref(&created))
        .await
        .expect("created");
    let mut other = bumped(&session);
    other.metadata.insert("intruder".into(), true.into());

    let second = store.create(&other, &[created]).await;

    assert_eq!(second, Err(StoreError::AlreadyExists));
    assert_eq!(store.load(session.id).await, Ok(Some(session.clone())));
    let mut conn = raw(&redis_url()).await;
    let len: u64 = conn
        .xlen(keys_of(&config, &session.id).outbox)
        .await
        .expect("XLEN");
    assert_eq!(len, 1, "only the first create's event is in the outbox");
}

#[tokio::test]
async fn commit_applies_on_the_expected_version_only() {
    let (store, config) = store().await;
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");
    let decision = machine::decide(&session, &Command::Start, None, 2_000).expect("starts");
    let started = Commit {
        rate: None,
        deadline: machine::next_deadline(&decision.state),
        expected_version: session.version,
        events: decision.events,
        state: decision.state,
        publish: Vec::new(),
    };

    store.commit(&started).await.expect("first commit applies");

    assert_eq!(
        store.load(session.id).await,
        Ok(Some(started.state.clone()))
    );
    let keys = keys_of(&config, &session.id);
    let mut conn = raw(&redis_url()).await;
    let score: Option<f64> = conn
        .zscore(&keys.deadlines, session.id.to_string())
        .await
        .expect("ZSCORE");
    assert_eq!(score, Some(62_000.0), "started at 2 s with a 60 s bank");
    let len_before: u64 = conn.xlen(&keys.outbox).await.expect("XLEN");
    assert_eq!(len_before, 2, "created + started");

    // The same commit again: the stored version is no longer the expected one.
    let mut stale = started.clone();
    stale.state = bumped(&started.state);
    stale.deadline = Some(99_000);
    let replay = store.commit(&stale).await;

    // The conflict carries the state stored now, so the caller needs no load.
    assert_eq!(
        replay,
        Err(StoreError::VersionConflict(Some(Box::new(
            started.state.clone()
        ))))
    );
    assert_eq!(
        store.load(session.id).await,
        Ok(Some(started.state.clone()))
    );
    let score: Option<f64> = conn
        .zscore(&keys.deadlines, session.id.to_string())
        .await
        .expect("ZSCORE");
    assert_eq!(
        score,
        Some(62_000.0),
        "deadline untouched by the lost commit"
    );
    let len_after: u64 = conn.xlen(&keys.outbox).await.expect("XLEN");
    assert_eq!(len_after, len_before, "no event from the lost commit");
}

#[tokio::test]
async fn commit_on_a_missing_session_is_a_conflict_and_writes_nothing() {
    let (store, config) = store().await;
    let (session, created) = chess(60_000, 1_000);
    let commit = Commit {
        rate: None,
        state: bumped(&session),
        expected_version: session.version,
        deadline: Some(5_000),
        events: vec![created],
        publish: Vec::new(),
    };

    assert_eq!(
        store.commit(&commit).await,
        Err(StoreError::VersionConflict(None))
    );

    let keys = keys_of(&config, &session.id);
    let mut conn = raw(&redis_url()).await;
    let exists: bool = conn.exists(&keys.state).await.expect("EXISTS");
    let score: Option<f64> = conn
        .zscore(&keys.deadlines, session.id.to_string())
        .await
        .expect("ZSCORE");
    let len: u64 = conn.xlen(&keys.outbox).await.expect("XLEN");
    assert_eq!((exists, score, len), (false, None, 0));
}

#[tokio::test]
async fn ttl_is_set_on_create_renewed_on_commit_and_expiry_removes_the_session() {
    let mut config = common::config();
    config.session_ttl = Duration::from_millis(1_500);
    let store = RedisStore::connect(&config).await.expect("connects");
    let (session, created) = chess(60_000, 1_000);
    let keys = keys_of(&config, &session.id);
    let mut conn = raw(&redis_url()).await;

    store.create(&session, &[created]).await.expect("created");
    let pttl: i64 = conn.pttl(&keys.state).await.expect("PTTL");
    assert!((1_000..=1_500).contains(&pttl), "PTTL after create: {pttl}");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let aged: i64 = conn.pttl(&keys.state).await.expect("PTTL");
    assert!(aged <= 950, "PTTL counts down: {aged}");
    let next = bumped(&session);
    store
        .commit(&Commit {
            rate: None,
            state: next.clone(),
            expected_version: 1,
            deadline: None,
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("commits");
    let renewed: i64 = conn.pttl(&keys.state).await.expect("PTTL");
    assert!(
        renewed > aged + 300,
        "PTTL renewed by the commit: {aged} -> {renewed}"
    );

    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert_eq!(store.load(session.id).await, Ok(None), "expired by its TTL");
    let again = Commit {
        rate: None,
        state: bumped(&next),
        expected_version: next.version,
        deadline: None,
        events: vec![],
        publish: Vec::new(),
    };
    assert_eq!(
        store.commit(&again).await,
        Err(StoreError::VersionConflict(None))
    );
}

#[tokio::test]
async fn deadline_index_follows_commits_and_delete() {
    let (store, config) = store().await;
    let (session, created) = chess(60_000, 1_000);
    let keys = keys_of(&config, &session.id);
    let member = session.id.to_string();
    let mut conn = raw(&redis_url()).await;
    store.create(&session, &[created]).await.expect("created");
    let pending: Option<f64> = conn.zscore(&keys.deadlines, &member).await.expect("ZSCORE");
    assert_eq!(pending, None, "a pending session has no deadline");

    let v2 = bumped(&session);
    store
        .commit(&Commit {
            rate: None,
            state: v2.clone(),
            expected_version: 1,
            deadline: Some(10_000),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("adds");
    let added: Option<f64> = conn.zscore(&keys.deadlines, &member).await.expect("ZSCORE");
    let v3 = bumped(&v2);
    store
        .commit(&Commit {
            rate: None,
            state: v3.clone(),
            expected_version: 2,
            deadline: Some(25_000),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("moves");
    let moved: Option<f64> = conn.zscore(&keys.deadlines, &member).await.expect("ZSCORE");
    let v4 = bumped(&v3);
    store
        .commit(&Commit {
            rate: None,
            state: v4.clone(),
            expected_version: 3,
            deadline: None,
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("removes");
    let removed: Option<f64> = conn.zscore(&keys.deadlines, &member).await.expect("ZSCORE");
    assert_eq!(
        (added, moved, removed),
        (Some(10_000.0), Some(25_000.0), None)
    );

    store
        .commit(&Commit {
            rate: None,
            state: bumped(&v4),
            expected_version: 4,
            deadline: Some(30_000),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("adds again");
    assert_eq!(store.delete(session.id).await, Ok(true));
    let after_delete: Option<f64> = conn.zscore(&keys.deadlines, &member).await.expect("ZSCORE");
    let exists: bool = conn.exists(&keys.state).await.expect("EXISTS");
    assert_eq!((after_delete, exists), (None, false));
    assert_eq!(store.delete(session.id).await, Ok(false));
    assert_eq!(store.load(session.id).await, Ok(None));
}

/// Creates a session and commits it with `deadline`.
async fn with_deadline(store: &RedisStore, deadline: i64) -> kairos_domain::SessionId {
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");
    store
        .commit(&Commit {
            rate: None,
            state: bumped(&session),
            expected_version: 1,
            deadline: Some(deadline),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("commits");
    session.id
}

#[tokio::test]
async fn claim_due_returns_due_sessions_only_and_hides_them_for_the_lease() {
    let (store, _) = store().await;
    let mut due = Vec::new();
    for d in [1_000, 2_000, 3_000, 5_000] {
        due.push(with_deadline(&store, d).await);
    }
    let later = with_deadline(&store, 9_000).await;

    let mut claimed = claim_ids(&store, 5_000, 100, 1_000).await.expect("claims");

    claimed.sort();
    due.sort();
    assert_eq!(claimed, due, "everything at or before now, nothing after");
    assert!(!claimed.contains(&later));
    // Leased until 6 s: another instance at 5.5 s sees nothing (the 9 s one is not due).
    assert_eq!(claim_ids(&store, 5_500, 100, 1_000).await, Ok(vec![]));
    // The claimer died: at 6 s the lease is over and they are due again.
    let mut again = claim_ids(&store, 6_000, 100, 1_000).await.expect("claims");
    again.sort();
    assert_eq!(again, due);
}

#[tokio::test]
async fn claim_due_respects_the_limit_and_leaves_the_rest_due() {
    let (store, _) = store().await;
    let mut all = Vec::new();
    for i in 0..150 {
        all.push(with_deadline(&store, 1_000 + i).await);
    }

    for limit in [1, 7, 100] {
        let claimed = store
            .claim_due(10_000, limit, 60_000)
            .await
            .expect("claims");
        assert_eq!(claimed.len(), limit, "limit {limit}");
    }
    // 108 claimed so far (hidden by their lease); the 42 others are still due.
    let rest = store
        .claim_due(10_000, 1_000, 60_000)
        .await
        .expect("claims");
    assert_eq!(rest.len(), 150 - 108);
    assert_eq!(claim_ids(&store, 10_000, 1_000, 60_000).await, Ok(vec![]));
}

#[tokio::test]
async fn claim_due_returns_every_due_session_even_past_one_reply_budget() {
    // Sessions of 1,000 participants: together more than one claim reply
    // may carry (4 MiB), so the claim must call again to reach the limit.
    let (store, config) = store().await;
    let mut conn = raw(&redis_url()).await;
    let mut due = Vec::new();
    let mut bytes = 0;
    while bytes <= 5 << 20 {
        let (session, created) = with_participants(1_000, 60_000, 1_000);
        store.create(&session, &[created]).await.expect("created");
        store
            .commit(&Commit {
                rate: None,
                state: bumped(&session),
                expected_version: 1,
                deadline: Some(2_000),
                events: vec![],
                publish: Vec::new(),
            })
            .await
            .expect("commits");
        let len: usize = redis::cmd("HSTRLEN")
            .arg(&keys_of(&config, &session.id).state)
            .arg("s")
            .query_async(&mut conn)
            .await
            .expect("HSTRLEN");
        bytes += len;
        due.push(session.id);
    }
    due.sort();

    let claimed = claim_ids(&store, 3_000, 10_000, 60_000)
        .await
        .expect("claims");

    assert_eq!(
        claimed,
        due,
        "{} sessions, {bytes} bytes of state",
        due.len()
    );
}

#[tokio::test]
async fn claim_due_purges_entries_whose_session_is_gone() {
    let (store, config) = store().await;
    let live = with_deadline(&store, 1_000).await;
    let gone = with_deadline(&store, 1_000).await;
    let keys = keys_of(&config, &gone);
    let mut conn = raw(&redis_url()).await;
    // As if the TTL had expired: the state key vanishes, the index entry stays.
    let _: i64 = conn.del(&keys.state).await.expect("DEL");

    let claimed = claim_ids(&store, 2_000, 10, 1_000).await.expect("claims");

    assert_eq!(claimed, vec![live]);
    let score: Option<f64> = conn
        .zscore(&keys.deadlines, gone.to_string())
        .await
        .expect("ZSCORE");
    assert_eq!(score, None, "the orphan entry is removed");
}

#[tokio::test]
async fn a_commit_after_a_claim_replaces_the_lease_with_the_true_deadline() {
    let (store, config) = store().await;
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");
    let v2 = bumped(&session);
    store
        .commit(&Commit {
            rate: None,
            state: v2.clone(),
            expected_version: 1,
            deadline: Some(1_000),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("commits");
    assert_eq!(
        claim_ids(&store, 1_000, 10, 60_000).await,
        Ok(vec![session.id])
    );

    store
        .commit(&Commit {
            rate: None,
            state: bumped(&v2),
            expected_version: 2,
            deadline: Some(3_000),
            events: vec![],
            publish: Vec::new(),
        })
        .await
        .expect("the claimer commits");

    let mut conn = raw(&redis_url()).await;
    let score: Option<f64> = conn
        .zscore(
            keys_of(&config, &session.id).deadlines,
            session.id.to_string(),
        )
        .await
        .expect("ZSCORE");
    assert_eq!(score, Some(3_000.0));
    assert_eq!(
        claim_ids(&store, 3_000, 10, 60_000).await,
        Ok(vec![session.id])
    );
}

#[tokio::test]
async fn ping_answers() {
    let (store, _) = store().await;
    assert_eq!(store.ping().await, Ok(()));
}

/// Every session id a whole walk returns, pages of `limit`.
async fn walk(store: &RedisStore, limit: usize) -> Vec<kairos_domain::SessionId> {
    let mut ids = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = store.list(cursor, limit).await.expect("lists");
        assert!(page.sessions.len() <= limit + 100, "one SCAN batch over");
        ids.extend(page.sessions.iter().map(|s| s.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
    panic!("the walk never ended");
}

#[tokio::test]
async fn a_walk_returns_every_session_of_its_prefix_once() {
    // Another deployment on the same server, under a key prefix of its own.
    let (other, _) = store().await;
    let (store, _) = store().await;
    let mut ids = Vec::new();
    for _ in 0..150 {
        let (session, created) = chess(60_000, 1_000);
        store.create(&session, &[created]).await.expect("created");
        ids.push(session.id);
    }
    let (stranger, created) = chess(60_000, 1_000);
    other.create(&stranger, &[created]).await.expect("created");

    let mut seen = walk(&store, 7).await;

    seen.sort_by_key(|id| *id.as_uuid());
    seen.dedup();
    ids.sort_by_key(|id| *id.as_uuid());
    assert_eq!(seen, ids, "every session once, none of another prefix");
    // `limit` plus what one SCAN batch adds (two sessions of one partition
    // may come in the same batch), each as `load` reads it.
    let first = store.list(None, 1).await.expect("lists");
    assert!((1..=1 + 100).contains(&first.sessions.len()), "{first:?}");
    for session in &first.sessions {
        let loaded = store.load(session.id).await.expect("loads");
        assert_eq!(loaded.as_ref(), Some(session));
    }
    for bad in ["", "x", "64-0", "3-", "-1", "3-abc"] {
        assert_eq!(
            store.list(Some(bad.to_owned()), 5).await,
            Err(StoreError::InvalidCursor),
            "{bad:?}"
        );
    }
}

/// The bus messages a commit carries are published by the commit script,
/// in order, if and only if the commit applies: a lost compare-and-set, a
/// commit on a session that is gone and a refused rate check publish
/// nothing. The messages and the events travel side by side in the
/// script's arguments: the outbox gets the events and only them.
#[tokio::test]
async fn a_commit_publishes_its_messages_only_when_it_applies() {
    use futures_util::StreamExt;
    use kairos_domain::{EncodedMessage, Limit, RateCheck};

    let (store, config) = store().await;
    assert!(
        store.publishes_commits(),
        "one server: the script publishes"
    );
    let (session, created) = chess(60_000, 1_000);
    let channel = format!("test:{}:bus", session.id);
    let client = redis::Client::open(redis_url()).expect("a valid URL");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("SUBSCRIBE");
    let mut messages = pubsub.into_on_message();
    let message = |payload: &[u8]| EncodedMessage {
        channel: channel.clone(),
        payload: payload.to_vec(),
    };
    store
        .create(&session, std::slice::from_ref(&created))
        .await
        .expect("created");
    let v2 = bumped(&session);
    let events: Vec<_> = (0..2)
        .map(|_| {
            let mut e = created.clone();
            e.event_id = uuid::Uuid::new_v4();
            e.version = v2.version;
            e
        })
        .collect();
    let commit = |expected: &Session, state: &Session, payloads: &[&[u8]], rate| Commit {
        rate,
        deadline: None,
        expected_version: expected.version,
        events: vec![],
        state: state.clone(),
        publish: payloads.iter().map(|p| message(p)).collect(),
    };

    // Applied: both messages, in order, each once, and both events.
    let mut first = commit(&session, &v2, &[b"first\x00\xff", b"second"], None);
    first.events = events.clone();
    store.commit(&first).await.expect("applies");
    // Gone: no such session.
    let (absent, _) = chess(60_000, 1_000);
    let gone = store
        .commit(&commit(&absent, &bumped(&absent), &[b"gone"], None))
        .await;
    assert_eq!(gone, Err(StoreError::VersionConflict(None)));
    // Lost: the stored version is v2 now.
    let lost = store
        .commit(&commit(&session, &bumped(&v2), &[b"lost"], None))
        .await;
    assert!(
        matches!(lost, Err(StoreError::VersionConflict(Some(_)))),
        "{lost:?}"
    );
    // Refused by the rate check: a limit of one, counted twice at once.
    let limit = Limit::per_minute(1);
    let v3 = bumped(&v2);
    let check = Some(RateCheck {
        limit,
        now_ms: 1_765_000_000_000,
    });
    store
        .commit(&commit(&v2, &v3, &[b"third"], check))
        .await
        .expect("the first switch is within the limit");
    let refused = store
        .commit(&commit(&v3, &bumped(&v3), &[b"refused"], check))
        .await;
    assert!(
        matches!(refused, Err(StoreError::RateLimited(_))),
        "{refused:?}"
    );
    // A marker from outside, to know that nothing else is on its way.
    let mut conn = raw(&redis_url()).await;
    let _: i64 = conn.publish(&channel, "marker").await.expect("PUBLISH");

    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(b"marker".as_slice()) {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open");
        got.push(next.get_payload_bytes().to_vec());
    }
    let want: Vec<&[u8]> = vec![b"first\x00\xff", b"second", b"third", b"marker"];
    assert_eq!(got, want);

    // The outbox: the create's event, then the two events, and nothing of
    // the messages.
    let entries: redis::streams::StreamRangeReply = conn
        .xrange_all(keys_of(&config, &session.id).outbox)
        .await
        .expect("XRANGE");
    let ids: Vec<uuid::Uuid> = entries
        .ids
        .iter()
        .map(|entry| {
            let bytes: Vec<u8> = entry.get("e").expect("field e");
            serde_json::from_slice::<kairos_domain::Event>(&bytes)
                .expect("an event")
                .event_id
        })
        .collect();
    assert_eq!(
        ids,
        [created.event_id, events[0].event_id, events[1].event_id]
    );
}
