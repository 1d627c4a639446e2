//! The service's presence use cases against mocked ports: a user's first
//! connection publishes one `presence_joined` on the bus and hands it to the
//! presence observer (the seam a webhook feed plugs into), a second one
//! publishes nothing, and a due leave becomes one `presence_left` with the
//! instant the last connection closed.

use std::sync::{Arc, Mutex};

use kairos_domain::{
    BusMessage, Event, EventType, MockClock, MockEventBus, MockPresenceObserver,
    MockPresenceRegistry, MockSessionStore, PendingLeave, SessionId, SessionService,
};

const NOW: i64 = 1_760_970_600_000;

fn id() -> SessionId {
    "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("a uuid")
}

#[tokio::test]
async fn the_first_connection_is_announced_on_the_bus_and_to_the_observer_once() {
    let published = Arc::new(Mutex::new(Vec::<BusMessage>::new()));
    let observed = Arc::new(Mutex::new(Vec::<Event>::new()));
    let mut bus = MockEventBus::new();
    let sink = published.clone();
    bus.expect_publish()
        .returning(move |m| sink.lock().expect("lock").push(m));
    let mut clock = MockClock::new();
    clock.expect_now_ms().return_const(NOW);
    let mut registry = MockPresenceRegistry::new();
    let mut answers = vec![true, false].into_iter();
    registry
        .expect_join()
        .times(2)
        .returning(move |c, now, lease| {
            assert_eq!((c.since_ms, now, lease), (NOW, NOW, 30_000));
            Ok(answers.next().expect("two joins"))
        });
    registry
        .expect_finish_leave()
        .times(1)
        .returning(|_| Ok(()));
    let mut observer = MockPresenceObserver::new();
    let seen = observed.clone();
    observer
        .expect_observe()
        .returning(move |e| seen.lock().expect("lock").push(e.clone()));
    let mut store = MockSessionStore::new();
    store.expect_publishes_commits().return_const(false);
    let service = SessionService::new(Arc::new(store), Arc::new(bus), Arc::new(clock))
        .with_presence(Arc::new(registry), 5_000)
        .with_presence_observer(Arc::new(observer));

    let white = "white".parse().ok();
    assert!(
        service
            .presence_join(id(), "c1", "ann", white)
            .await
            .expect("joins")
    );
    assert!(
        !service
            .presence_join(id(), "c2", "ann", None)
            .await
            .expect("joins")
    );
    service
        .fire_presence_leave(PendingLeave {
            session_id: id(),
            sub: "ann".into(),
            participant_id: None,
            left_at_ms: NOW + 10,
            due_ms: NOW + 5_010,
        })
        .await
        .expect("fires");

    let observed = observed.lock().expect("lock").clone();
    let types: Vec<(EventType, i64, u64)> = observed
        .iter()
        .map(|e| (e.event_type, e.at_ms, e.version))
        .collect();
    assert_eq!(
        types,
        [
            (EventType::PresenceJoined, NOW, 0),
            (EventType::PresenceLeft, NOW + 10, 0)
        ]
    );
    assert_eq!(observed[0].metadata["sub"], "ann");
    assert_eq!(
        observed[0].participant_id.as_ref().map(|p| p.as_str()),
        Some("white")
    );
    let published: Vec<Event> = published
        .lock()
        .expect("lock")
        .iter()
        .map(|m| match m {
            BusMessage::Event { event } => event.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        published, observed,
        "the bus and the observer get the same events"
    );
}
