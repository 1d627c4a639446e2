//! The bus against Redis servers the tests start themselves: a server that
//! crashes and comes back (health, reconnection, `Lagged`), a Redis Cluster
//! (sharded Pub/Sub) and a primary found through Sentinel.

// Each test binary uses a different part of the helpers.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use bus_redis::RedisBusConfig;
use kairos_domain::{BusMessage, EventBus};
use support::{
    Instance, RedisProcess, admin, channel, eventually, next, random_id, subscribers, update,
    version_of,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_reconnects_after_redis_restarts_and_tells_subscribers_to_resync() {
    let mut redis = RedisProcess::start(&[]).await;
    let a = Instance::start(RedisBusConfig::standalone(redis.url())).await;
    let b = Instance::start(RedisBusConfig::standalone(redis.url())).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");
    a.bus.publish(update(id, 1)).await;
    assert_eq!(version_of(&next(&mut subscription).await), Some(1));
    assert!(b.bus.is_healthy());

    redis.kill();
    eventually(
        "health turns red once the subscriber connection is gone",
        Duration::from_secs(2),
        async || !b.bus.is_healthy(),
    )
    .await;
    // Meanwhile new subscribers are refused rather than left hanging.
    assert!(b.bus.subscribe(random_id()).await.is_err());

    redis.restart().await;
    eventually(
        "health turns green again after reconnecting",
        Duration::from_secs(5),
        async || b.bus.is_healthy(),
    )
    .await;
    assert_eq!(b.bus.stats().reconnects, 1);
    assert_eq!(
        subscribers(&mut admin(&redis.url()).await, "NUMSUB", &channel(id)).await,
        1,
        "the watched session is subscribed again"
    );

    // The subscriber hears that it may have missed something...
    assert_eq!(next(&mut subscription).await, BusMessage::Lagged);
    // ...and then messages flow again. The publisher's own connection
    // recovers on its first failure, which may cost a message or two.
    let mut version = 2;
    let received = loop {
        a.bus.publish(update(id, version)).await;
        match tokio::time::timeout(
            Duration::from_millis(200),
            futures_util::StreamExt::next(&mut subscription),
        )
        .await
        {
            Ok(Some(message)) => break message,
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {
                version += 1;
                assert!(version < 50, "no message got through after the restart");
            }
        }
    };
    assert!(version_of(&received).is_some(), "{received:?}");

    drop(subscription);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_noticed_by_the_ping_and_recovered_from() {
    // No TCP reset here: only the ping can tell the connection is dead.
    let redis = RedisProcess::start(&[]).await;
    let a = Instance::start(RedisBusConfig::standalone(redis.url())).await;
    let b = Instance::start(RedisBusConfig::standalone(redis.url())).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");

    redis.signal("STOP");
    // Test timings: 200 ms ping interval, 500 ms command timeout.
    eventually(
        "health turns red when pings go unanswered",
        Duration::from_secs(2),
        async || !b.bus.is_healthy(),
    )
    .await;
    redis.signal("CONT");
    eventually(
        "health turns green once Redis answers again",
        Duration::from_secs(5),
        async || b.bus.is_healthy(),
    )
    .await;

    assert_eq!(next(&mut subscription).await, BusMessage::Lagged);
    let mut version = 1;
    let received = loop {
        a.bus.publish(update(id, version)).await;
        match tokio::time::timeout(
            Duration::from_millis(200),
            futures_util::StreamExt::next(&mut subscription),
        )
        .await
        {
            Ok(Some(message)) => break message,
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {
                version += 1;
                assert!(version < 50, "no message got through after the freeze");
            }
        }
    };
    assert!(version_of(&received).is_some(), "{received:?}");
    drop(subscription);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_uses_sharded_pubsub() {
    // A one-node cluster holding every slot: the real cluster protocol
    // (CLUSTER SLOTS discovery, SPUBLISH/SSUBSCRIBE over RESP3), one process.
    let node = RedisProcess::start(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ])
    .await;
    let mut redis = admin(&node.url()).await;
    redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async::<()>(&mut redis)
        .await
        .expect("slots assigned");
    eventually("the cluster is up", Duration::from_secs(5), async || {
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut redis)
            .await
            .is_ok_and(|info| info.contains("cluster_state:ok"))
    })
    .await;

    let config = || RedisBusConfig::cluster(vec![node.url()]);
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(
        subscribers(&mut redis, "SHARDNUMSUB", &channel(id)).await,
        1
    );
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 0);
    // A second local subscription shares the sharded one.
    let mut second = b.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(
        subscribers(&mut redis, "SHARDNUMSUB", &channel(id)).await,
        1
    );

    for version in 1..=100 {
        a.bus.publish(update(id, version)).await;
    }
    for expected in 1..=100 {
        assert_eq!(version_of(&next(&mut subscription).await), Some(expected));
    }
    for expected in 1..=100 {
        assert_eq!(version_of(&next(&mut second).await), Some(expected));
    }
    drop(second);
    a.bus
        .publish(BusMessage::Deleted {
            session_id: id,
            at_ms: 5,
        })
        .await;
    assert!(matches!(
        next(&mut subscription).await,
        BusMessage::Deleted { .. }
    ));

    drop(subscription);
    eventually(
        "the sharded channel is unsubscribed",
        Duration::from_secs(2),
        async || subscribers(&mut redis, "SHARDNUMSUB", &channel(id)).await == 0,
    )
    .await;
    assert!(b.bus.is_healthy());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_finds_the_primary_through_sentinel() {
    let primary = RedisProcess::start(&[]).await;
    // A Sentinel is the same binary in another mode; it rewrites its config
    // file, so the file lives in its own directory.
    let sentinel_port = support::free_port();
    let dir = std::env::temp_dir().join(format!("bus-redis-sentinel-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\nsentinel monitor kairos 127.0.0.1 {} 1\n",
            dir.display(),
            primary.port
        ),
    )
    .expect("config written");
    let sentinel = SentinelProcess {
        child: std::process::Command::new(support::redis_server_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts"),
        dir,
    };
    let sentinel_url = format!("redis://127.0.0.1:{sentinel_port}/");
    let probe = redis::Client::open(sentinel_url.as_str()).expect("a valid URL");
    eventually(
        "the sentinel knows the primary",
        Duration::from_secs(5),
        async || match probe.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("kairos")
                .query_async::<Vec<String>>(&mut conn)
                .await
                .is_ok_and(|addr| addr.len() == 2),
            Err(_) => false,
        },
    )
    .await;

    let config = || RedisBusConfig::sentinel(vec![sentinel_url.clone()], "kairos");
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(
        subscribers(&mut admin(&primary.url()).await, "NUMSUB", &channel(id)).await,
        1,
        "subscribed on the primary Sentinel named"
    );
    a.bus.publish(update(id, 1)).await;
    assert_eq!(version_of(&next(&mut subscription).await), Some(1));

    drop(subscription);
    a.shutdown().await;
    b.shutdown().await;
    drop(sentinel);
}

/// A Sentinel this test started; killed by pid when dropped.
struct SentinelProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
