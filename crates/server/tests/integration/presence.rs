//! Presence across instances (contract section 9, issue 15 "done when"),
//! with real `kairos-server` processes on one Redis: the counts of
//! `GET /v1/sessions/{id}/presence` agree on three instances; a user's
//! `presence_left` comes only after the leave delay and a reconnect inside
//! it sends nothing; a SIGKILLed instance's connections leave the counts
//! within the 30 s lease and their users get `presence_left`; and
//! `auto_pause_on_disconnect_ms` pauses a session exactly once, as of its
//! instant, with one of three instances killed meanwhile (counted in the
//! audit trail on PostgreSQL). One instance's presence metrics (its
//! connections and users, the leaves and auto-pauses it fired) follow its
//! sockets. Values are asserted, not timings: instants come from the
//! server's own messages.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use crate::common::procs::{Instance, database_url, post, prefix, redis_url};
use crate::common::{chess, create_session, eventually};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Three instances on the test Redis under a prefix of their own.
async fn cluster(extra: &[(&str, String)]) -> Vec<Instance> {
    let mut env = vec![("REDIS_URL", redis_url()), ("REDIS_KEY_PREFIX", prefix())];
    env.extend(extra.iter().cloned());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Instance::start(&env).await);
    }
    nodes
}

/// A socket to session `id` on `at` as `query` (`user=..&participant_id=..`),
/// past `CONNECTED` and `STATE_SYNC`; returns it and the sync's server time.
async fn connect(at: &Instance, id: &str, query: &str) -> (Ws, i64) {
    let (mut ws, _) = connect_async(at.ws_url(&format!("/ws?sessionId={id}&{query}")))
        .await
        .expect("ws");
    assert_eq!(next(&mut ws).await["type"], "CONNECTED");
    let sync = next(&mut ws).await;
    assert_eq!(sync["type"], "STATE_SYNC");
    let now = sync["timestamp"].as_i64().unwrap();
    (ws, now)
}

/// The next text message, within 60 s (pings do not extend the wait).
async fn next(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

/// The `EVENT` messages of presence, until (and with) the first that
/// `last` accepts; every other message is skipped.
async fn presence_events_until(ws: &mut Ws, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let m = next(ws).await;
        if m["type"] != "EVENT" {
            continue;
        }
        let ty = m["event"]["event_type"].as_str().unwrap_or_default();
        if !ty.starts_with("presence_") {
            continue;
        }
        let done = last(&m);
        out.push(m);
        if done {
            return out;
        }
    }
}

fn is(m: &Value, ty: &str, sub: &str) -> bool {
    m["event"]["event_type"] == ty && m["event"]["metadata"]["sub"] == sub
}

/// (type, sub) of presence messages.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|m| {
            (
                m["event"]["event_type"].as_str().unwrap().to_owned(),
                m["event"]["metadata"]["sub"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn close(mut ws: Ws) {
    ws.send(Message::Close(None)).await.unwrap();
    // Until the server's close frame: the socket is gone on its side.
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
}

async fn presence(http: &reqwest::Client, at: &Instance, id: &str) -> Value {
    let res = http
        .get(at.url(&format!("/v1/sessions/{id}/presence")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["data"].clone()
}

/// (sub, connections, participant_id as JSON text) of each user, as a set.
fn users(p: &Value) -> BTreeSet<(String, u64, String)> {
    p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["sub"].as_str().unwrap().to_owned(),
                u["connections"].as_u64().unwrap(),
                u["participant_id"].to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn counts_agree_on_three_instances_and_each_user_joins_once() {
    let nodes = cluster(&[]).await;
    let http = reqwest::Client::new();
    let id = create_session(&http, nodes[0].url("/v1/sessions"), None, chess(600_000, 0)).await;
    // A socket is not told of its own user's arrival: the watcher's first
    // presence event is about someone else.
    let (mut watcher, _) = connect(&nodes[2], &id, "user=watcher").await;

    let (_ann1, _) = connect(&nodes[0], &id, "user=ann&participant_id=white").await;
    let (_ann2, _) = connect(&nodes[1], &id, "user=ann&participant_id=white").await;
    let (_bob, _) = connect(&nodes[1], &id, "user=bob&participant_id=black").await;
    let (_anon, _) = connect(&nodes[2], &id, "").await;
    let (_carol, _) = connect(&nodes[0], &id, "user=carol&participant_id=nobody").await;

    let expected: BTreeSet<(String, u64, String)> = [
        ("watcher", 1, Value::Null),
        ("ann", 2, json!("white")),
        ("bob", 1, json!("black")),
        ("anonymous", 1, Value::Null),
        ("carol", 1, Value::Null),
    ]
    .into_iter()
    .map(|(s, n, p)| (s.to_owned(), n, p.to_string()))
    .collect();
    for node in &nodes {
        let p = presence(&http, node, &id).await;
        assert_eq!(p["connections"], 6, "{p}");
        assert_eq!(users(&p), expected, "{p}");
    }
    // The same answer, field for field, from every instance.
    let first = presence(&http, &nodes[0], &id).await;
    for node in &nodes[1..] {
        assert_eq!(presence(&http, node, &id).await, first);
    }

    // One presence_joined per user (instances publish independently, so
    // in any order), ann's second connection announced by none.
    let mut joined = Vec::new();
    while joined.len() < 4 {
        joined.extend(presence_events_until(&mut watcher, |_| true).await);
    }
    let mut got = kinds(&joined);
    got.sort();
    assert_eq!(
        got,
        ["ann", "anonymous", "bob", "carol"].map(|s| ("presence_joined".to_owned(), s.to_owned()))
    );
    for m in &joined {
        let e = &m["event"];
        assert_eq!(e["version"], 0);
        assert_eq!(e["session_id"], id.as_str());
        let expected = match e["metadata"]["sub"].as_str().unwrap() {
            "ann" => json!("white"),
            "bob" => json!("black"),
            _ => Value::Null,
        };
        assert_eq!(e["participant_id"], expected, "{m}");
    }

    // Presence is not a state change: the session's version stays put.
    let view = http
        .get(nodes[1].url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(view["data"]["version"], 1);
}

#[tokio::test]
async fn presence_left_comes_after_the_delay_and_a_reconnect_inside_it_sends_nothing() {
    let delay = 2_000;
    let nodes = cluster(&[("PRESENCE_LEAVE_DELAY_MS", delay.to_string())]).await;
    let http = reqwest::Client::new();
    let id = create_session(&http, nodes[0].url("/v1/sessions"), None, chess(600_000, 0)).await;
    let (mut watcher, _) = connect(&nodes[0], &id, "user=watcher").await;

    let (bob, _) = connect(&nodes[1], &id, "user=bob&participant_id=black").await;
    // A dropped connection, back at once on another instance.
    close(bob).await;
    let (bob, _) = connect(&nodes[2], &id, "user=bob&participant_id=black").await;
    let p = presence(&http, &nodes[0], &id).await;
    assert_eq!(p["connections"], 2, "{p}");
    // Gone for good.
    let before_close = presence_time(&http, &nodes[1]).await;
    close(bob).await;
    let after_close = after_leave(&http, &nodes, &id, 1).await;

    let events = presence_events_until(&mut watcher, |m| is(m, "presence_left", "bob")).await;
    assert_eq!(
        kinds(&events),
        [
            ("presence_joined".to_owned(), "bob".to_owned()),
            ("presence_left".to_owned(), "bob".to_owned()),
        ],
        "the reconnect inside the delay sent neither event"
    );
    let left = &events[1];
    let left_at = left["event"]["at_ms"].as_i64().unwrap();
    assert!(
        (before_close..=after_close).contains(&left_at),
        "left at the last close: {before_close} <= {left_at} <= {after_close}"
    );
    assert_eq!(left["event"]["participant_id"], "black");
    assert_eq!(left["event"]["version"], 0);
    let sent_at = left["timestamp"].as_i64().unwrap();
    assert!(
        sent_at >= left_at + delay,
        "sent at {sent_at}, not before the delay after {left_at}"
    );
    let p = presence(&http, &nodes[2], &id).await;
    assert_eq!(p["connections"], 1, "{p}");
    assert_eq!(p["users"][0]["sub"], "watcher");
}

/// Waits until the session's count is down to `connections` (the leave
/// is registered), then reads the server's clock: an instant after it.
async fn after_leave(
    http: &reqwest::Client,
    nodes: &[Instance],
    id: &str,
    connections: u64,
) -> i64 {
    eventually(Duration::from_secs(10), || async {
        (presence(http, &nodes[0], id).await["connections"] == connections).then_some(())
    })
    .await
    .expect("the leave is registered");
    presence_time(http, &nodes[0]).await
}

/// The server's clock, read from `/v1/time`.
async fn presence_time(http: &reqwest::Client, at: &Instance) -> i64 {
    let body = http
        .get(at.url("/v1/time"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    body["timestamp_ms"].as_i64().expect("a server time")
}

#[tokio::test]
async fn a_killed_instance_leaves_the_counts_within_the_lease_and_its_users_get_presence_left() {
    let nodes = cluster(&[("PRESENCE_LEAVE_DELAY_MS", "1000".to_owned())]).await;
    let mut nodes = nodes;
    let http = reqwest::Client::new();
    let id = create_session(&http, nodes[0].url("/v1/sessions"), None, chess(600_000, 0)).await;
    let (mut watcher, _) = connect(&nodes[0], &id, "user=watcher").await;
    let (_bob, _) = connect(&nodes[2], &id, "user=bob&participant_id=black").await;
    let (_carol, _) = connect(&nodes[2], &id, "user=carol").await;
    presence_events_until(&mut watcher, |m| is(m, "presence_joined", "carol")).await;
    assert_eq!(presence(&http, &nodes[1], &id).await["connections"], 3);

    let killed_at = presence_time(&http, &nodes[0]).await;
    nodes[2].kill();
    // Read on (the watcher answers pings only while read) until both users
    // of the killed instance are announced gone.
    // Both users, in either order, and nothing else.
    let mut left = Vec::new();
    while left.len() < 2 {
        let events = presence_events_until(&mut watcher, |m| {
            m["event"]["event_type"] == "presence_left"
        })
        .await;
        assert_eq!(events.len(), 1, "{events:?}");
        left.extend(events);
    }
    let subs: BTreeSet<String> = left
        .iter()
        .map(|m| m["event"]["metadata"]["sub"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subs, BTreeSet::from(["bob".to_owned(), "carol".to_owned()]));
    for m in &left {
        assert_eq!(m["event"]["event_type"], "presence_left", "{m}");
        // Left as of the lease's end: at most 30 s after the last renewal,
        // which came before the kill.
        let at = m["event"]["at_ms"].as_i64().unwrap();
        assert!(
            at <= killed_at + 30_000,
            "left at {at}, killed at {killed_at}: within the 30 s lease"
        );
        assert!(at > killed_at - 30_000, "{at} vs {killed_at}");
    }
    // Their connections left the count at their lease's end, before that.
    for node in &nodes[..2] {
        let p = presence(&http, node, &id).await;
        assert_eq!(p["connections"], 1, "{p}");
        assert_eq!(p["users"][0]["sub"], "watcher", "{p}");
    }
}

#[tokio::test]
async fn an_absent_active_player_pauses_the_session_exactly_once_as_of_its_instant() {
    let period = 2_000;
    let db = database_url();
    let mut nodes = cluster(&[
        ("DATABASE_URL", db),
        ("PRESENCE_LEAVE_DELAY_MS", "1000".to_owned()),
    ])
    .await;
    let http = reqwest::Client::new();
    let mut config = chess(600_000, 0);
    config["auto_pause_on_disconnect_ms"] = json!(period);
    let id = create_session(&http, nodes[0].url("/v1/sessions"), None, config).await;
    let (status, started) = post(
        &http,
        nodes[0].url(&format!("/v1/sessions/{id}/start")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["data"]["auto_pause_on_disconnect_ms"], period);
    let started_at = started["data"]["session_started_at_ms"].as_i64().unwrap();

    // Black never connects: never absent. White connects, then drops.
    let (mut watcher, _) = connect(&nodes[0], &id, "user=watcher").await;
    let (white, _) = connect(&nodes[1], &id, "user=ann&participant_id=white").await;
    let before_close = presence_time(&http, &nodes[1]).await;
    close(white).await;
    let after_close = after_leave(&http, &nodes, &id, 1).await;
    // One of the three instances dies meanwhile (it may hold the claim).
    nodes[2].kill();

    let paused = loop {
        let m = next(&mut watcher).await;
        if m["type"] == "STATE_UPDATE" && m["state"]["status"] == "paused" {
            break m;
        }
    };
    // Auto-paused as of absent_since + period.
    let history = eventually(Duration::from_secs(20), || {
        let (http, node, id) = (&http, &nodes[0], &id);
        async move {
            let body = http
                .get(node.url(&format!("/v1/sessions/{id}/events")))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            let events = body["data"].as_array()?.clone();
            events
                .iter()
                .any(|e| e["event_type"] == "session_paused")
                .then_some(events)
        }
    })
    .await
    .expect("the pause reached the audit trail");
    let pauses: Vec<&Value> = history
        .iter()
        .filter(|e| e["event_type"] == "session_paused")
        .collect();
    assert_eq!(pauses.len(), 1, "{history:?}");
    let pause = pauses[0];
    assert_eq!(pause["metadata"]["reason"], "disconnected");
    assert_eq!(pause["participant_id"], "white");
    let absent_since = pause["metadata"]["absent_since_ms"].as_i64().unwrap();
    assert!(
        (before_close..=after_close).contains(&absent_since),
        "{before_close} <= {absent_since} <= {after_close}"
    );
    let at = pause["at_ms"].as_i64().unwrap();
    assert_eq!(at, absent_since.max(started_at) + period);
    // Clocks settled to the instant, whenever the commit came.
    let white_used = paused["state"]["participants"][0]["time_used_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(white_used, at - started_at);
    assert_eq!(paused["state"]["version"], 3);

    // Still absent after a resume: another full period from the resume.
    let (status, resumed) = post(
        &http,
        nodes[1].url(&format!("/v1/sessions/{id}/resume")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    let resumed_at = resumed["data"]["updated_at_ms"].as_i64().unwrap();
    let again = loop {
        let m = next(&mut watcher).await;
        if m["type"] == "STATE_UPDATE" && m["state"]["status"] == "paused" {
            break m;
        }
    };
    assert_eq!(again["state"]["version"], 5);
    let history = eventually(Duration::from_secs(20), || {
        let (http, node, id) = (&http, &nodes[1], &id);
        async move {
            let body = http
                .get(node.url(&format!("/v1/sessions/{id}/events")))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            let events = body["data"].as_array()?.clone();
            (events
                .iter()
                .filter(|e| e["event_type"] == "session_paused")
                .count()
                == 2)
                .then_some(events)
        }
    })
    .await
    .expect("the second pause reached the audit trail");
    let newest = history
        .iter()
        .find(|e| e["event_type"] == "session_paused")
        .unwrap();
    assert_eq!(newest["at_ms"].as_i64().unwrap(), resumed_at + period);
    assert_eq!(newest["metadata"]["reason"], "disconnected");
    // Exactly once each: no third pause, and the versions add up.
    let view = http
        .get(nodes[0].url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(view["data"]["version"], 5);
    assert_eq!(view["data"]["status"], "paused");
}

/// The presence metrics of one instance (embedded store, leave delay 0):
/// `kairos_presence_connections` and `kairos_presence_users` follow the
/// sockets it registered, `kairos_presence_left_total` counts the
/// `presence_left` it sent and `kairos_presence_auto_pauses_total` the
/// sessions it paused for an absent active player.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_metrics_count_this_instances_connections_users_leaves_and_auto_pauses() {
    use crate::common::{spawn_with, test_settings};

    let mut settings = test_settings();
    settings.presence_leave_delay_ms = 0;
    let app = spawn_with(settings).await;
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{}/metrics", app.metrics_addr);
    let wait_for = |want: [i64; 4], what: &'static str| {
        let (http, url) = (http.clone(), metrics_url.clone());
        async move { wait_for_presence_metrics(&http, &url, want, what).await }
    };
    assert_eq!(presence_metrics(&http, &metrics_url).await, [0, 0, 0, 0]);

    let mut config = chess(600_000, 0);
    config["auto_pause_on_disconnect_ms"] = json!(1_000);
    let game = create_session(&http, app.url("/v1/sessions"), None, config).await;
    let (status, body) = post(&http, app.url(&format!("/v1/sessions/{game}/start")), None).await;
    assert_eq!(status, 200, "{body}");
    let other = create_session(&http, app.url("/v1/sessions"), None, chess(600_000, 0)).await;

    // ann (white, to play) twice and bob (black) on the game, ann on the other.
    let ws = |id: &str, query: &str| format!("/ws?sessionId={id}&{query}");
    let mut sockets = Vec::new();
    for (id, query) in [
        (&game, "user=ann&participant_id=white"),
        (&game, "user=ann&participant_id=white"),
        (&game, "user=bob&participant_id=black"),
        (&other, "user=ann"),
    ] {
        let (socket, _) = connect_async(app.ws_url(&ws(id, query))).await.expect("ws");
        sockets.push(socket);
    }
    wait_for([4, 3, 0, 0], "four sockets of three users").await;
    let mut sockets = sockets.into_iter();
    let (ann1, ann2, bob, ann_other) = (
        sockets.next().unwrap(),
        sockets.next().unwrap(),
        sockets.next().unwrap(),
        sockets.next().unwrap(),
    );

    close(ann1).await;
    wait_for([3, 3, 0, 0], "ann still has a socket on the game").await;
    close(bob).await;
    wait_for([2, 2, 1, 0], "bob gone: one presence_left").await;
    // White, to play, drops: presence_left, then the auto-pause, once.
    close(ann2).await;
    wait_for([1, 1, 2, 1], "white gone: the game paused").await;
    let (status, view) = app.call("GET", &format!("/v1/sessions/{game}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(view["data"]["status"], "paused");
    close(ann_other).await;
    wait_for([0, 0, 3, 1], "nobody left").await;
}

/// The presence metrics an instance serves at `url`.
const PRESENCE_METRICS: [&str; 4] = [
    "kairos_presence_connections",
    "kairos_presence_users",
    "kairos_presence_left_total",
    "kairos_presence_auto_pauses_total",
];

/// The values of [`PRESENCE_METRICS`] at `url` (a `/metrics` URL).
async fn presence_metrics(http: &reqwest::Client, url: &str) -> [i64; 4] {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    PRESENCE_METRICS.map(|name| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse::<i64>()
            .unwrap()
    })
}

/// Polls [`presence_metrics`] until they are `want` (30 s at most).
async fn wait_for_presence_metrics(http: &reqwest::Client, url: &str, want: [i64; 4], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = presence_metrics(http, url).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {PRESENCE_METRICS:?} = {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
