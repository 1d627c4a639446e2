//! The application service on the Redis store: concurrent commands from many
//! tasks lose no update (compare-and-set with the service's retry loop).

mod common;

use std::sync::Arc;
use std::time::Duration;

use adapter_memory::MemoryBus;
use common::{keys_of, raw, redis_url};
use kairos_domain::{
    Actor, Command, ServiceError, SessionConfig, SessionId, SessionService, SessionStore,
};
use redis::AsyncCommands;
use store_redis::{RedisClock, RedisStore};

const TASKS: usize = 50;
const SWITCHES_PER_TASK: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_switches_lose_no_update() {
    let mut config = common::config();
    // This test is about correctness under contention, not latency: on a
    // loaded 2-core machine 50 tasks can push a call past the 250 ms default,
    // and a timed-out commit may still have been applied.
    config.command_timeout = Duration::from_secs(5);
    let store = Arc::new(RedisStore::connect(&config).await.expect("connects"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (clock, clock_task) =
        RedisClock::connect(store.connection(), Duration::from_secs(1), stopped)
            .await
            .expect("clock");
    let service = SessionService::new(store.clone(), Arc::new(MemoryBus::new()), clock);
    let admin = Actor::anonymous_admin();
    let id = SessionId::from_uuid(uuid::Uuid::new_v4());
    let session_config = SessionConfig::parse(&serde_json::json!({
        "session_id": id.to_string(),
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 86_400_000},
            {"participant_id": "black", "total_time_ms": 86_400_000}
        ]
    }))
    .expect("a valid config");
    service
        .create(&admin, session_config, id)
        .await
        .expect("created");
    service
        .execute(&admin, id, Command::Start, None)
        .await
        .expect("started");

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let service = service.clone();
            let admin = admin.clone();
            tokio::spawn(async move {
                let (mut ok, mut gave_up) = (0u64, 0u64);
                for _ in 0..SWITCHES_PER_TASK {
                    match service
                        .execute(
                            &admin,
                            id,
                            Command::Switch {
                                next: None,
                                lag_ms: None,
                            },
                            None,
                        )
                        .await
                    {
                        Ok(_) => ok += 1,
                        // Under 50-way contention a command may lose more
                        // races than the service retries; it then changed nothing.
                        Err(ServiceError::Internal(m)) if m.contains("compare-and-set") => {
                            gave_up += 1
                        }
                        Err(e) => panic!("unexpected failure: {e}"),
                    }
                }
                (ok, gave_up)
            })
        })
        .collect();
    let (mut successes, mut gave_up) = (0, 0);
    for task in tasks {
        let (ok, failed) = task.await.expect("task finished");
        successes += ok;
        gave_up += failed;
    }

    let stored = store.load(id).await.expect("loads").expect("exists");
    assert_eq!(successes + gave_up, (TASKS * SWITCHES_PER_TASK) as u64);
    assert!(successes > 0);
    assert_eq!(
        stored.version,
        2 + successes,
        "{successes} switches applied, {gave_up} gave up"
    );
    // One event per applied change: created, started, and one per switch.
    let mut conn = raw(&redis_url()).await;
    let events: u64 = conn.xlen(keys_of(&config, &id).outbox).await.expect("XLEN");
    assert_eq!(events, 2 + successes);
    eprintln!("{successes} switches applied, {gave_up} gave up after the service's retries");

    stop.send(true).expect("clock task listening");
    tokio::time::timeout(Duration::from_secs(2), clock_task)
        .await
        .expect("clock task stops")
        .expect("clock task did not panic");
}
