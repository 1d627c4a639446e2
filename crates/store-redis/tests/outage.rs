//! Redis unreachable: calls fail fast with `Unavailable`, and the same store
//! works again (with its committed state, AOF on) once Redis is back.

mod common;

use std::time::{Duration, Instant};

use common::{OwnRedis, bumped, chess, claim_ids, free_port};
use kairos_domain::{Commit, SessionStore, StoreError};
use store_redis::{RedisConfig, RedisStore};

/// Runs `call` and checks it failed with `Unavailable`, bounded: the
/// 250 ms command timeout plus slack for a loaded shared machine (the point
/// is "fails instead of hanging"; typical figures are printed, and measured
/// in the benchmarks, not asserted to the millisecond).
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{what}: {result:?}"
    );
    assert!(took < Duration::from_millis(2_000), "{what} took {took:?}");
    eprintln!("{what}: unavailable after {took:?}");
}

#[tokio::test]
async fn a_closed_port_is_unavailable_at_once() {
    let config = RedisConfig::new(format!("redis://127.0.0.1:{}/", free_port()));
    fails_fast("connect", RedisStore::connect(&config)).await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_within_the_timeout() {
    // Accepts connections and reads nothing, like a hung or black-holed server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let port = listener.local_addr().expect("has an address").port();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}/"));

    fails_fast("connect", RedisStore::connect(&config)).await;

    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_unavailable_meanwhile_and_serves_again_when_it_resumes() {
    let mut server = OwnRedis::start();
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = "hung:".into();
    let store = RedisStore::connect(&config).await.expect("connects");
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");

    server.signal("STOP");
    let next = bumped(&session);
    let commit = Commit {
        rate: None,
        state: next.clone(),
        expected_version: 1,
        deadline: None,
        events: vec![],
        publish: Vec::new(),
    };
    fails_fast("load", store.load(session.id)).await;
    fails_fast("commit", store.commit(&commit)).await;
    fails_fast("ping", store.ping()).await;
    server.signal("CONT");

    // Replies to the timed-out requests may still arrive; none may be
    // mistaken for the answer to a later request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The timed-out commit was already in the server's socket buffer: it is
    // applied when the server resumes (a timeout never means "not done").
    // Either way the state is one of the two versions, whole.
    let stored = store
        .load(session.id)
        .await
        .expect("loads")
        .expect("exists");
    assert!(stored == session || stored == next);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_unavailable_meanwhile_then_serves_the_same_store_again() {
    let mut server = OwnRedis::start();
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = "outage:".into();
    let store = RedisStore::connect(&config).await.expect("connects");
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");

    server.stop();
    let next = bumped(&session);
    let commit = Commit {
        rate: None,
        state: next.clone(),
        expected_version: 1,
        deadline: Some(5_000),
        events: vec![],
        publish: Vec::new(),
    };
    for _ in 0..3 {
        fails_fast("load", store.load(session.id)).await;
        fails_fast("commit", store.commit(&commit)).await;
        fails_fast("claim_due", claim_ids(&store, 10_000, 100, 1_000)).await;
        fails_fast("ping", store.ping()).await;
    }

    server.restart();
    let back = Instant::now();
    // The very first call after the restart already succeeds.
    assert_eq!(store.ping().await, Ok(()), "ping right after the restart");
    assert_eq!(
        store.load(session.id).await,
        Ok(Some(session.clone())),
        "state survived (AOF)"
    );
    store.commit(&commit).await.expect("commits again");
    assert_eq!(store.load(session.id).await, Ok(Some(next)));
    assert_eq!(
        claim_ids(&store, 10_000, 100, 1_000).await,
        Ok(vec![session.id])
    );
    eprintln!("recovered within {:?} of the restart", back.elapsed());
}
