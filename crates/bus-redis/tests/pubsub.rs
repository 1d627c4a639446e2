//! The bus between instances on the shared test Redis: delivery and order
//! across instances, several subscriptions of one session, deletions, Redis
//! traffic only for watched sessions, lag, back-pressure, and shutdown.

// Each test binary uses a different part of the helpers.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use bus_redis::{ConnectError, RedisBus, RedisBusConfig};
use kairos_domain::{BusMessage, EventBus};
use support::{
    Instance, admin, channel, eventually, free_port, next, random_id, redis_url, subscribers,
    update, version_of,
};

fn config() -> RedisBusConfig {
    RedisBusConfig::standalone(redis_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_another_instance_receives_every_message_in_order() {
    let a = Instance::start(config()).await;
    // Room for the whole run locally: this test is about Redis order, not local lag.
    let mut b_config = config();
    b_config.local_capacity = 2048;
    let b = Instance::start(b_config).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");

    for version in 1..=1000 {
        a.bus.publish(update(id, version)).await;
    }

    for expected in 1..=1000 {
        let message = next(&mut subscription).await;
        assert_eq!(version_of(&message), Some(expected), "got {message:?}");
    }
    let stats = a.bus.stats();
    assert_eq!(stats.published, 1000, "{stats:?}");
    assert_eq!(stats.publish_dropped + stats.publish_failed, 0, "{stats:?}");
    assert_eq!(b.bus.stats().received, 1000);
    drop(subscription);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_of_one_session_each_get_every_message_in_order() {
    let mut redis = admin(&redis_url()).await;
    let a = Instance::start(config()).await;
    let mut b_config = config();
    b_config.local_capacity = 512;
    let b = Instance::start(b_config).await;
    let id = random_id();
    let mut first = b.bus.subscribe(id).await.expect("subscribed");
    let mut second = b.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 1);

    for version in 1..=300 {
        a.bus.publish(update(id, version)).await;
    }

    // Each subscription has its own queue: reading one to the end first
    // loses nothing of the other.
    for subscription in [&mut first, &mut second] {
        for expected in 1..=300 {
            let message = next(subscription).await;
            assert_eq!(version_of(&message), Some(expected), "got {message:?}");
        }
    }
    let stats = b.bus.stats();
    assert_eq!((stats.received, stats.local_dropped), (300, 0), "{stats:?}");

    drop(first);
    drop(second);
    eventually(
        "the last drop unsubscribes in Redis",
        Duration::from_secs(2),
        async || subscribers(&mut redis, "NUMSUB", &channel(id)).await == 0,
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_delivered() {
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    let id = random_id();
    let mut subscription = b.bus.subscribe(id).await.expect("subscribed");

    a.bus.publish(update(id, 3)).await;
    a.bus
        .publish(BusMessage::Deleted {
            session_id: id,
            at_ms: 77,
        })
        .await;

    assert_eq!(version_of(&next(&mut subscription).await), Some(3));
    assert_eq!(
        next(&mut subscription).await,
        BusMessage::Deleted {
            session_id: id,
            at_ms: 77
        }
    );
    drop(subscription);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishing_instance_hears_its_own_messages_too() {
    // One instance serves both the switch and the WebSocket of a session.
    let a = Instance::start(config()).await;
    let id = random_id();
    let mut subscription = a.bus.subscribe(id).await.expect("subscribed");
    a.bus.publish(update(id, 1)).await;
    assert_eq!(version_of(&next(&mut subscription).await), Some(1));
    drop(subscription);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_local_subscribers_receives_no_traffic_for_the_session() {
    let mut redis = admin(&redis_url()).await;
    let publisher = Instance::start(config()).await;
    let watcher = Instance::start(config()).await;
    let bystander = Instance::start(config()).await;
    let id = random_id();
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 0);

    // Two local subscribers, one Redis subscription.
    let mut first = watcher.bus.subscribe(id).await.expect("subscribed");
    let mut second = watcher.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 1);
    assert_eq!(watcher.bus.stats().redis_subscriptions, 1);
    assert_eq!(watcher.bus.stats().watched_sessions, 1);

    publisher.bus.publish(update(id, 1)).await;
    assert_eq!(version_of(&next(&mut first).await), Some(1));
    assert_eq!(version_of(&next(&mut second).await), Some(1));
    assert_eq!(
        watcher.bus.stats().received,
        1,
        "one message for two subscribers"
    );

    drop(first);
    drop(second);
    eventually(
        "the channel is unsubscribed after its last local subscriber left",
        Duration::from_secs(2),
        async || subscribers(&mut redis, "NUMSUB", &channel(id)).await == 0,
    )
    .await;
    // The bus's own count follows when its task has processed the reply.
    eventually(
        "the bus counts no subscription any more",
        Duration::from_secs(2),
        async || {
            let stats = watcher.bus.stats();
            (stats.redis_subscriptions, stats.watched_sessions) == (0, 0)
        },
    )
    .await;

    // Further messages for the session reach no instance at all.
    let received_before = watcher.bus.stats().received;
    for version in 2..=20 {
        publisher.bus.publish(update(id, version)).await;
    }
    eventually(
        "the publisher sent everything",
        Duration::from_secs(2),
        async || publisher.bus.stats().published == 20,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watcher.bus.stats().received, received_before);
    assert_eq!(bystander.bus.stats().received, 0);
    assert_eq!(bystander.bus.stats().redis_subscriptions, 0);

    publisher.shutdown().await;
    watcher.shutdown().await;
    bystander.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_subscription_outlives_all_but_the_last_local_subscriber() {
    let mut redis = admin(&redis_url()).await;
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    let id = random_id();
    let leaving = b.bus.subscribe(id).await.expect("subscribed");
    let mut staying = b.bus.subscribe(id).await.expect("subscribed");

    drop(leaving);
    // Give a wrongly sent UNSUBSCRIBE the time to land before checking.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 1);
    a.bus.publish(update(id, 1)).await;
    assert_eq!(version_of(&next(&mut staying).await), Some(1));

    // Subscribing again after the last one left subscribes again.
    drop(staying);
    eventually("unsubscribed", Duration::from_secs(2), async || {
        subscribers(&mut redis, "NUMSUB", &channel(id)).await == 0
    })
    .await;
    let mut again = b.bus.subscribe(id).await.expect("subscribed");
    assert_eq!(subscribers(&mut redis, "NUMSUB", &channel(id)).await, 1);
    a.bus.publish(update(id, 2)).await;
    assert_eq!(version_of(&next(&mut again).await), Some(2));

    drop(again);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_kept_apart() {
    let a = Instance::start(config()).await;
    let b = Instance::start(config()).await;
    let (one, two) = (random_id(), random_id());
    let mut first = b.bus.subscribe(one).await.expect("subscribed");
    let mut second = b.bus.subscribe(two).await.expect("subscribed");

    a.bus.publish(update(two, 5)).await;
    a.bus.publish(update(one, 9)).await;

    let BusMessage::Updated { state, .. } = next(&mut first).await else {
        panic!("an update");
    };
    assert_eq!((state.id, state.version), (one, 9));
    let BusMessage::Updated { state, .. } = next(&mut second).await else {
        panic!("an update");
    };
    assert_eq!((state.id, state.version), (two, 5));
    drop((first, second));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_subscriber_that_falls_behind_gets_lagged_and_the_others_do_not() {
    let a = Instance::start(config()).await;
    let mut small = config();
    small.local_capacity = 4;
    let b = Instance::start(small).await;
    let id = random_id();
    let mut fast = b.bus.subscribe(id).await.expect("subscribed");
    let mut slow = b.bus.subscribe(id).await.expect("subscribed");

    // The fast one keeps up with each message; the slow one reads nothing.
    for version in 1..=20 {
        a.bus.publish(update(id, version)).await;
        assert_eq!(version_of(&next(&mut fast).await), Some(version));
    }
    // The slow queue held 4 and dropped the 16 oldest, each counted (just
    // after the fast one was handed the last message, hence the wait).
    eventually("16 drops counted", Duration::from_secs(2), async || {
        b.bus.stats().local_dropped == 16
    })
    .await;

    assert_eq!(next(&mut slow).await, BusMessage::Lagged);
    // Then the newest messages still in its queue, in order.
    let mut last = 0;
    for _ in 0..4 {
        let version = version_of(&next(&mut slow).await).expect("an update");
        assert!(version > last);
        last = version;
    }
    assert_eq!(last, 20);
    drop((fast, slow));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_never_waits_and_counts_what_a_full_queue_drops() {
    let mut tiny = config();
    tiny.publish_queue = 1;
    let a = Instance::start(tiny).await;
    let id = random_id();

    let started = std::time::Instant::now();
    for version in 1..=5_000 {
        a.bus.publish(update(id, version)).await;
    }
    // 5,000 Redis round trips would take far longer than this on any machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    eventually(
        "every message is sent or counted",
        Duration::from_secs(5),
        async || {
            let s = a.bus.stats();
            s.published + s.publish_dropped + s.publish_failed == 5_000
        },
    )
    .await;
    let stats = a.bus.stats();
    assert!(stats.publish_dropped > 0, "{stats:?}");
    assert_eq!(stats.publish_failed, 0, "{stats:?}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_tasks_and_ends_every_subscription() {
    let a = Instance::start(config()).await;
    let bus = a.bus.clone();
    let mut subscription = bus.subscribe(random_id()).await.expect("subscribed");
    assert!(bus.is_healthy());

    a.shutdown().await;

    let end = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::StreamExt::next(&mut subscription),
    )
    .await
    .expect("the subscription ends promptly");
    assert_eq!(end, None);
    assert!(!bus.is_healthy());
    assert!(bus.subscribe(random_id()).await.is_err());
    bus.publish(update(random_id(), 1)).await;
    assert_eq!(bus.stats().publish_dropped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_an_unreachable_redis_and_a_bad_configuration() {
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let nobody = RedisBusConfig::standalone(format!("redis://127.0.0.1:{}/", free_port()));
    let result = RedisBus::connect(nobody, shutdown.clone()).await;
    assert!(
        matches!(result, Err(ConnectError::Unreachable(_))),
        "{result:?}"
    );

    let result = RedisBus::connect(RedisBusConfig::standalone("not a url"), shutdown.clone()).await;
    assert!(
        matches!(result, Err(ConnectError::InvalidConfig(_))),
        "{result:?}"
    );

    let mut zero = config();
    zero.local_capacity = 0;
    let result = RedisBus::connect(zero, shutdown).await;
    assert!(
        matches!(result, Err(ConnectError::InvalidConfig(_))),
        "{result:?}"
    );
}
