//! The client against a real server: the transport (`http_actix::serve`)
//! on the in-memory adapters, on a loopback port, with authentication and
//! rate limits off. A whole game over REST, the contract's errors typed,
//! a subscription following another client's switches in version order,
//! socket commands, the clock offset against a local server (near zero),
//! reconnection across a server restart, and the ends of a subscription
//! (deleted session, unknown session).
//!
//! Only [`start_server`] knows how the server is put together, so that a
//! change of `AppState` touches one function.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Data;
use adapter_memory::{MemoryAudit, MemoryBus, MemoryStore, SystemClock};
use http_actix::{AppState, HttpSettings, Lifecycle, Service};
use kairos_client::{
    Backoff, Client, ConnectionState, Error, ErrorCode, EventsQuery, SessionConfig, SessionView,
    Status, SubscribeOptions, Subscription, SyncMode, Update,
};
use kairos_domain::AuditHealth;
use kairos_domain::ports::{AuditSink, Outbox};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use uuid::Uuid;

/// What outlives a server restart: sessions and their outbox, the bus, the
/// audit trail (an instance restarting on the same Redis would see the same).
#[derive(Clone)]
struct Backing {
    store: Arc<MemoryStore>,
    bus: Arc<MemoryBus>,
    audit: Arc<MemoryAudit>,
}

impl Backing {
    fn new() -> Self {
        Self {
            store: Arc::new(MemoryStore::new(Duration::from_secs(3600))),
            bus: Arc::new(MemoryBus::new()),
            audit: Arc::new(MemoryAudit::new()),
        }
    }
}

/// A running server.
struct TestServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    lifecycle: Arc<Lifecycle>,
    audit_worker: JoinHandle<()>,
}

/// Starts the real transport on `addr` (port 0: a free one) over `backing`,
/// with a stand-in for the binary's audit worker (outbox to audit trail).
/// The one place that builds the server.
async fn start_server(addr: SocketAddr, backing: &Backing) -> TestServer {
    let service = Service::new(
        backing.store.clone(),
        backing.bus.clone(),
        Arc::new(SystemClock::new()),
    )
    .with_audit(backing.audit.clone());
    let state = Data::new(
        AppState::new(service, backing.bus.clone(), HttpSettings::default())
            .with_audit_health(Arc::new(|| AuditHealth::Ok)),
    );
    let lifecycle = state.lifecycle.clone();
    lifecycle.set_ready();
    // A restart binds the port it had; the old listener may take a moment to go.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(listener) => break listener,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let addr = listener.local_addr().unwrap();
    let server = http_actix::serve(listener, state, Some(1), || {}).unwrap();
    let handle = server.handle();
    tokio::spawn(server);
    let (store, audit) = (backing.store.clone(), backing.audit.clone());
    let audit_worker = tokio::spawn(async move {
        loop {
            let batch = store.read("client-tests", 500, 1_000).await.unwrap();
            if !batch.is_empty() {
                let events: Vec<_> = batch.iter().map(|e| e.event.clone()).collect();
                audit.write(&events).await.unwrap();
                let ids: Vec<String> = batch.into_iter().map(|e| e.id).collect();
                store.ack(&ids).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    TestServer {
        addr,
        handle,
        lifecycle,
        audit_worker,
    }
}

impl TestServer {
    async fn start() -> Self {
        start_server("127.0.0.1:0".parse().unwrap(), &Backing::new()).await
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> Client {
        Client::new(&self.base()).unwrap()
    }

    /// Shuts down as the binary does: sockets get 1001, then the server stops.
    async fn stop(self) {
        self.lifecycle.start_draining();
        self.lifecycle.close_sockets();
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.handle.stop(false).await;
        self.audit_worker.abort();
    }
}

fn chess(id: Uuid) -> SessionConfig {
    SessionConfig::new(SyncMode::PerParticipant)
        .session_id(id)
        .participant("white", 300_000)
        .participant("black", 300_000)
        .increment_ms(2_000)
        .metadata("table", json!(7))
}

/// Probes quickly, reconnects quickly: tests wait less.
fn fast() -> SubscribeOptions {
    SubscribeOptions {
        burst_spacing: Duration::from_millis(20),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            ..Backoff::default()
        },
        ..SubscribeOptions::default()
    }
}

/// The next update, within 10 s.
async fn next(sub: &mut Subscription) -> Update {
    timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an update in time")
        .expect("the subscription is live")
}

/// Waits (10 s at most) for a view satisfying `pred`.
async fn view_where(sub: &mut Subscription, pred: impl FnMut(&SessionView) -> bool) -> SessionView {
    timeout(Duration::from_secs(10), sub.wait_for(pred))
        .await
        .expect("the view in time")
        .expect("the subscription is live")
}

fn api(err: Error) -> kairos_client::ApiError {
    match err {
        Error::Api(e) => *e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_game_over_rest() {
    let server = TestServer::start().await;
    let client = server.client();
    let id = Uuid::new_v4();

    let created = client.create(&chess(id)).await.unwrap();
    assert_eq!(created.session_id, id);
    assert_eq!((created.status, created.version), (Status::Pending, 1));
    assert_eq!(created.increment_ms, Some(2_000));
    assert_eq!(created.max_time_ms, None, "left out when there is no cap");
    assert_eq!(created.participants[0].group_id, None);
    assert_eq!(created.metadata["table"], json!(7));
    let read = client.get(id).await.unwrap();
    assert_eq!(read.clone_with_time(created.server_time_ms), created);

    let started = client.start(id, Some(1)).await.unwrap();
    assert_eq!((started.status, started.version), (Status::Running, 2));
    assert_eq!(started.active_participant_id.as_deref(), Some("white"));

    let switched = client.switch(id, None, Some(2)).await.unwrap();
    assert_eq!(switched.version, 3);
    assert_eq!(switched.active_participant_id.as_deref(), Some("black"));
    let white = switched.participant("white").unwrap();
    assert!(
        white.total_time_ms >= 302_000 - 1,
        "the increment: {white:?}"
    );

    // Without expected_version, and naming the next participant.
    let named = client.switch(id, Some("white"), None).await.unwrap();
    assert_eq!(named.active_participant_id.as_deref(), Some("white"));
    let paused = client.pause(id, None).await.unwrap();
    assert_eq!(paused.status, Status::Paused);
    let resumed = client.resume(id, Some(paused.version)).await.unwrap();
    assert_eq!(resumed.status, Status::Running);
    let done = client.complete(id, None).await.unwrap();
    assert_eq!((done.status, done.version), (Status::Completed, 7));
    assert!(done.session_completed_at_ms.is_some());

    // The history, newest first, paged.
    let history = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let events = client.events(id, EventsQuery::default()).await.unwrap();
            if events.len() >= 7 {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the audit trail catches up");
    let types: Vec<&str> = history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "session_completed",
            "session_resumed",
            "session_paused",
            "cycle_switched",
            "cycle_switched",
            "session_started",
            "session_created"
        ]
    );
    assert_eq!(history[0].version, Some(7));
    let page = client
        .events(
            id,
            EventsQuery {
                limit: Some(2),
                before_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let before = client
        .events(
            id,
            EventsQuery {
                limit: None,
                before_ms: Some(history[6].at_ms + 1),
            },
        )
        .await
        .unwrap();
    assert!(before.iter().all(|e| e.at_ms <= history[6].at_ms));
    assert!(before.iter().any(|e| e.event_type == "session_created"));

    // Cancel another, delete both; delete is idempotent.
    let other = client.create(&chess(Uuid::new_v4())).await.unwrap();
    let cancelled = client.cancel(other.session_id, None).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    client.delete(id).await.unwrap();
    client.delete(id).await.unwrap();
    client.delete(other.session_id).await.unwrap();
    assert_eq!(
        api(client.get(id).await.unwrap_err()).code,
        ErrorCode::SessionNotFound
    );

    // A session id the server makes.
    let mut config = chess(Uuid::nil());
    config.session_id = None;
    let made = client.create(&config).await.unwrap();
    assert!(!made.session_id.is_nil());

    let time = client.time().await.unwrap();
    assert_eq!(time.drift_tolerance_ms, 50);
    assert!((time.timestamp_ms - made.server_time_ms).abs() < 10_000);
    server.stop().await;
}

/// Equality of two reads of the same session apart from the instant they
/// were computed at.
trait CloneWithTime {
    fn clone_with_time(&self, server_time_ms: i64) -> SessionView;
}

impl CloneWithTime for SessionView {
    fn clone_with_time(&self, server_time_ms: i64) -> SessionView {
        let mut v = self.clone();
        v.server_time_ms = server_time_ms;
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_with_code_status_and_details() {
    let server = TestServer::start().await;
    let client = server.client();

    let missing = api(client.get(Uuid::new_v4()).await.unwrap_err());
    assert_eq!(
        (missing.status, &missing.code),
        (Some(404), &ErrorCode::SessionNotFound)
    );
    assert!(!missing.message.is_empty());

    let id = Uuid::new_v4();
    client.create(&chess(id)).await.unwrap();
    client.start(id, None).await.unwrap();
    let conflict = api(client.switch(id, None, Some(1)).await.unwrap_err());
    assert_eq!(
        (conflict.status, &conflict.code),
        (Some(409), &ErrorCode::Conflict)
    );
    assert_eq!(conflict.conflict_versions(), Some((1, 2)));

    let exists = api(client.create(&chess(id)).await.unwrap_err());
    assert_eq!(
        (exists.status, &exists.code),
        (Some(409), &ErrorCode::SessionExists)
    );

    let bad = SessionConfig::new(SyncMode::PerParticipant)
        .participant("white", 5)
        .increment_ms(-1);
    let invalid = api(client.create(&bad).await.unwrap_err());
    assert_eq!(
        (invalid.status, &invalid.code),
        (Some(400), &ErrorCode::ValidationError)
    );
    let fields: Vec<String> = invalid
        .field_errors()
        .into_iter()
        .map(|f| f.field)
        .collect();
    assert!(
        fields.contains(&"participants[0].total_time_ms".to_owned())
            && fields.contains(&"increment_ms".to_owned()),
        "every bad field is named: {fields:?}"
    );

    let raw = api(client
        .create_raw(&json!({"sync_mode": "per_participant", "participants": "nope"}))
        .await
        .unwrap_err());
    assert_eq!(raw.code, ErrorCode::ValidationError);

    let done = client.complete(id, None).await.unwrap();
    let ended = api(client.pause(id, Some(done.version)).await.unwrap_err());
    assert_eq!(
        (ended.status, &ended.code),
        (Some(400), &ErrorCode::InvalidStateTransition)
    );
    let unknown = api(client.switch(id, Some("nobody"), None).await.unwrap_err());
    assert_eq!(unknown.status, Some(400));

    // Nothing listens: a transport error, not a refusal.
    let closed = Client::new("http://127.0.0.1:9").unwrap();
    assert!(matches!(closed.time().await, Err(Error::Http(_))));
    assert!(matches!(
        Client::new("ftp://example.invalid"),
        Err(Error::InvalidUrl(_))
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_follows_another_clients_switches_in_version_order() {
    let server = TestServer::start().await;
    let id = Uuid::new_v4();
    let players = server.client();
    players.create(&chess(id)).await.unwrap();

    let mut live = server.client().subscribe_with(id, fast()).unwrap();
    assert_eq!(next(&mut live).await, Update::Connected);
    let Update::State(first) = next(&mut live).await else {
        panic!("STATE_SYNC follows CONNECTED")
    };
    assert_eq!(first.version, 1);
    assert_eq!(live.connection(), ConnectionState::Open);

    players.start(id, None).await.unwrap();
    for _ in 0..10 {
        players.switch(id, None, None).await.unwrap();
    }
    // Five at once from five tasks: the server orders them, the client too.
    let racing: Vec<_> = (0..5)
        .map(|_| {
            let players = players.clone();
            tokio::spawn(async move { players.switch(id, None, None).await.unwrap().version })
        })
        .collect();
    for task in racing {
        task.await.unwrap();
    }
    let mut versions = vec![first.version];
    while *versions.last().unwrap() < 17 {
        if let Update::State(view) = next(&mut live).await {
            versions.push(view.version);
        }
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {versions:?}"
    );
    assert_eq!(versions, (1..=17).collect::<Vec<u64>>(), "none missing");
    let last = live.view().unwrap();
    let read = players.get(id).await.unwrap();
    assert_eq!(
        (last.version, &last.active_participant_id),
        (read.version, &read.active_participant_id)
    );
    assert_eq!(live.version(), 17);

    // Commands over the socket resolve with the view that shows them.
    let switched = live.switch(None, Some(17)).await.unwrap();
    assert_eq!(switched.version, 18);
    let stale = live.switch(None, Some(17)).await.unwrap_err();
    let stale = api(stale);
    assert_eq!((stale.status, &stale.code), (None, &ErrorCode::Conflict));
    assert_eq!(stale.conflict_versions(), Some((17, 18)));
    let named = live.switch(Some("black"), None).await.unwrap();
    assert_eq!(named.active_participant_id.as_deref(), Some("black"));

    // The running clock, computed from the last view and the corrected time.
    let now = live.now_local_ms();
    let black = live.time_remaining_ms("black", now).unwrap();
    let white = live.time_remaining_ms("white", now).unwrap();
    assert_eq!(
        live.time_remaining_ms("black", now),
        Some(black),
        "a pure read"
    );
    assert!(black <= named.participant("black").unwrap().time_remaining_ms);
    let later = live.time_remaining_ms("black", now + 1_500).unwrap();
    assert!(
        (black - 1_500 - 2..=black - 1_500 + 2).contains(&later),
        "{black} then {later}"
    );
    assert_eq!(
        live.time_remaining_ms("white", now + 1_500),
        Some(white),
        "white waits"
    );
    assert_eq!(
        live.time_remaining_ms("black", now + 3_600_000),
        Some(0),
        "never below 0"
    );
    assert_eq!(live.time_remaining_ms("nobody", now), None);

    let paused = live.pause(None).await.unwrap();
    assert_eq!(paused.status, Status::Paused);
    let frozen = live.time_remaining_ms("black", now).unwrap();
    assert_eq!(live.time_remaining_ms("black", now + 60_000), Some(frozen));
    let resumed = live.resume(Some(paused.version)).await.unwrap();
    assert_eq!(resumed.status, Status::Running);
    let refused = api(live.resume(None).await.unwrap_err());
    assert_eq!(refused.code, ErrorCode::InvalidStateTransition);

    // A resync repeats the version the client has: nothing new is reported.
    let version = live.version();
    live.resync();
    players.pause(id, None).await.unwrap();
    let view = view_where(&mut live, |v| v.version > version).await;
    assert_eq!(view.version, version + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offset_against_a_local_server_is_near_zero() {
    let server = TestServer::start().await;
    let client = server.client();
    let id = client
        .create(&chess(Uuid::new_v4()))
        .await
        .unwrap()
        .session_id;
    let live = client.subscribe_with(id, fast()).unwrap();
    let estimate = timeout(Duration::from_secs(10), async {
        loop {
            if let Some(e) = live.offset().filter(|e| e.samples >= 5) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("five probes in time");
    // Same machine, same clock: the truth is 0, within the guaranteed bound
    // (plus a ms of wall-clock reading).
    assert!(
        estimate.offset_ms.abs() <= estimate.bound_ms + 1.0,
        "{estimate:?}"
    );
    assert!(estimate.offset_ms.abs() < 25.0, "{estimate:?}");
    assert!(estimate.rtt_ms < 200.0, "{estimate:?}");
    let skew = live.server_now_ms() - client.time().await.unwrap().timestamp_ms;
    assert!(skew.abs() < 100, "corrected now vs the server's: {skew} ms");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_reconnects_after_a_restart_and_resyncs() {
    let backing = Backing::new();
    let server = start_server("127.0.0.1:0".parse().unwrap(), &backing).await;
    let addr = server.addr;
    let client = server.client();
    let id = client
        .create(&chess(Uuid::new_v4()))
        .await
        .unwrap()
        .session_id;
    let mut live = client.subscribe_with(id, fast()).unwrap();
    view_where(&mut live, |v| v.version == 1).await;

    server.stop().await;
    let (code, retry_in) = loop {
        if let Update::Disconnected { code, retry_in, .. } = next(&mut live).await {
            break (code, retry_in);
        }
    };
    assert!(matches!(code, Some(1001) | None), "going away: {code:?}");
    assert!(retry_in <= Duration::from_millis(400));
    assert!(matches!(
        live.connection(),
        ConnectionState::Reconnecting { .. }
    ));
    assert!(matches!(
        live.switch(None, None).await,
        Err(Error::NotConnected)
    ));

    // A change made while the socket was down, on the restarted server.
    let server = start_server(addr, &backing).await;
    server.client().start(id, Some(1)).await.unwrap();
    let view = view_where(&mut live, |v| v.version == 2).await;
    assert_eq!(view.status, Status::Running);
    assert_eq!(live.connection(), ConnectionState::Open);
    // And it follows the new server from then on.
    server.client().switch(id, None, None).await.unwrap();
    view_where(&mut live, |v| v.version == 3).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_unknown_session_ends_the_subscription() {
    let server = TestServer::start().await;
    let client = server.client();
    let id = client
        .create(&chess(Uuid::new_v4()))
        .await
        .unwrap()
        .session_id;
    let mut live = client.subscribe_with(id, fast()).unwrap();
    view_where(&mut live, |v| v.version == 1).await;
    client.delete(id).await.unwrap();
    let mut rest = Vec::new();
    while let Some(update) = timeout(Duration::from_secs(10), live.next())
        .await
        .expect("the end in time")
    {
        rest.push(update);
    }
    assert!(rest.contains(&Update::Deleted), "{rest:?}");
    assert!(
        matches!(rest.last(), Some(Update::Closed { .. })),
        "{rest:?}"
    );
    assert_eq!(live.connection(), ConnectionState::Closed);
    assert!(matches!(live.pause(None).await, Err(Error::Closed { .. })));

    let mut unknown = client.subscribe_with(Uuid::new_v4(), fast()).unwrap();
    let last = loop {
        match next(&mut unknown).await {
            Update::Closed { code, .. } => break code,
            Update::Disconnected { .. } => panic!("4404 is for good"),
            _ => {}
        }
    };
    assert_eq!(last, Some(4404));

    // Closing by hand: Closed, then nothing.
    let id = client
        .create(&chess(Uuid::new_v4()))
        .await
        .unwrap()
        .session_id;
    let mut mine = client.subscribe_with(id, fast()).unwrap();
    view_where(&mut mine, |v| v.version == 1).await;
    mine.close();
    loop {
        match next(&mut mine).await {
            Update::Closed { code, .. } => {
                assert_eq!(code, Some(1000));
                break;
            }
            Update::Disconnected { .. } => panic!("no reconnect after close()"),
            _ => {}
        }
    }
    assert!(mine.next().await.is_none());
    server.stop().await;
}
