//! Participants joining and leaving a live session (contract section 9)
//! over real HTTP: a join at the end of the rotation, the refusals (409 for
//! a taken id, 400 naming the field, 403 for a player), a leave of the
//! active participant charging its turn, the last leave completing the
//! session, and every change in the event history.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::time::Duration;

use crate::common::{self, TestApp, chess, eventually, spawn_with};
use serde_json::{Value, json};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|f| f["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `(participant_id, participant_index)` of a view, in rotation order.
fn rotation(view: &Value) -> Vec<(String, i64)> {
    view["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["participant_id"].as_str().unwrap().to_owned(),
                p["participant_index"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn order(ids: &[(&str, i64)]) -> Vec<(String, i64)> {
    ids.iter().map(|(id, i)| ((*id).to_owned(), *i)).collect()
}

struct Game<'a> {
    app: &'a TestApp,
    id: String,
    host: String,
}

impl Game<'_> {
    async fn join(&self, token: &str, body: Value) -> (u16, Value) {
        let path = format!("/v1/sessions/{}/participants", self.id);
        self.app
            .call_as(Some(token), "POST", &path, Some(body))
            .await
    }

    async fn leave(&self, token: &str, who: &str) -> (u16, Value) {
        let path = format!("/v1/sessions/{}/participants/{who}", self.id);
        self.app.call_as(Some(token), "DELETE", &path, None).await
    }

    async fn command(&self, name: &str) -> Value {
        let path = format!("/v1/sessions/{}/{name}", self.id);
        let (status, body) = self
            .app
            .call_as(Some(&self.host), "POST", &path, None)
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        body["data"].clone()
    }
}

#[tokio::test]
async fn participants_join_and_leave_a_live_session() {
    let app = spawn_with(common::secured_settings()).await;
    let host = common::token("host", "arbiter", None, None);
    let admin = common::token("admin", "root", None, None);
    let (status, body) = app
        .call_as(Some(&host), "POST", "/v1/sessions", Some(chess(300_000, 0)))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["session_id"].as_str().unwrap().to_owned();
    let player = common::token("player", "p1", Some(&id), Some("white"));
    let game = Game {
        app: &app,
        id: id.clone(),
        host: host.clone(),
    };

    // Arrange: the refusals change nothing.
    let carol = json!({"participant_id": "carol", "total_time_ms": 120000});
    let (status, body) = game.join(&player, carol.clone()).await;
    assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{body}");
    let (status, body) = game.leave(&player, "black").await;
    assert_eq!((status, code(&body)), (403, "FORBIDDEN"), "{body}");
    let (status, body) = game
        .join(
            &host,
            json!({"participant_id": "white", "total_time_ms": 1000}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "PARTICIPANT_EXISTS"), "{body}");
    assert_eq!(body["error"]["details"]["participant_id"], "white");
    let (status, body) = game.join(&host, json!({"participant_id": "dave"})).await;
    assert_eq!((status, code(&body)), (400, "VALIDATION_ERROR"), "{body}");
    assert_eq!(fields(&body), ["total_time_ms"]);
    let (status, body) = game
        .join(
            &host,
            json!({"participant_id": "no way", "participant_index": -1}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "VALIDATION_ERROR"), "{body}");
    assert_eq!(fields(&body), ["participant_id", "participant_index"]);
    let (status, body) = game
        .join(
            &host,
            json!({"participant_id": "dave", "total_time_ms": 60000, "expected_version": 7}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "CONFLICT"), "{body}");
    assert_eq!(body["error"]["details"]["actual_version"], 1);
    let (status, body) = game.leave(&host, "nobody").await;
    assert_eq!(
        (status, fields(&body)),
        (400, vec!["participant_id".to_owned()])
    );
    let (status, body) = game.leave(&host, "a%20b").await;
    assert_eq!(
        (status, fields(&body)),
        (400, vec!["participant_id".to_owned()])
    );
    let (status, body) = app
        .call_as(
            Some(&host),
            "POST",
            "/v1/sessions/00000000-0000-0000-0000-000000000000/participants",
            Some(carol.clone()),
        )
        .await;
    assert_eq!((status, code(&body)), (404, "SESSION_NOT_FOUND"), "{body}");

    // Act: carol joins the pending game (the end of the rotation) as the
    // owner; the game starts; dave joins at index 1 as an admin.
    let (status, body) = game.join(&host, carol).await;
    assert_eq!(status, 200, "{body}");
    let view = &body["data"];
    assert_eq!(view["version"], 2);
    assert_eq!(
        rotation(view),
        order(&[("white", 0), ("black", 1), ("carol", 2)])
    );
    assert_eq!(view["participants"][2]["total_time_ms"], 120_000);
    let started = game.command("start").await;
    let turn_began = started["cycle_started_at_ms"].as_i64().unwrap();
    let (status, body) = game
        .join(
            &admin,
            json!({"participant_id": "dave", "participant_index": 1, "total_time_ms": 60000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rotation(&body["data"]),
        order(&[("white", 0), ("dave", 1), ("black", 2), ("carol", 3)])
    );
    assert_eq!(body["data"]["active_participant_id"], "white");
    assert_eq!(body["data"]["cycle_started_at_ms"], turn_began);

    // White, whose turn is on, leaves: charged its turn, dave plays from then.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (status, body) = game.leave(&host, "white").await;
    assert_eq!(status, 200, "{body}");
    let view = &body["data"];
    let left_at = view["server_time_ms"].as_i64().unwrap();
    assert_eq!(view["version"], 5);
    assert_eq!(view["status"], "running");
    assert_eq!(view["active_participant_id"], "dave");
    assert_eq!(view["cycle_started_at_ms"], left_at);
    assert_eq!(
        rotation(view),
        order(&[("dave", 0), ("black", 1), ("carol", 2)])
    );
    assert_eq!(view["participants"][0]["time_used_ms"], 0);
    assert_eq!(view["participants"][0]["cycle_count"], 1);

    // Carol (waiting) and dave (active) leave; black, the last, completes it.
    let (status, body) = game.leave(&admin, "carol").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["active_participant_id"], "dave");
    let (status, body) = game.leave(&host, "dave").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["active_participant_id"], "black");
    let (status, body) = game.leave(&host, "black").await;
    assert_eq!(status, 200, "{body}");
    let view = &body["data"];
    assert_eq!(view["status"], "completed");
    assert_eq!(view["version"], 8);
    assert_eq!(view["participants"], json!([]));
    assert_eq!(view["active_participant_id"], Value::Null);
    let (status, body) = game.leave(&host, "black").await;
    assert_eq!(
        (status, code(&body)),
        (400, "INVALID_STATE_TRANSITION"),
        "{body}"
    );

    // Assert: the history has every change, one version each.
    let history = eventually(Duration::from_secs(5), || async {
        let path = format!("/v1/sessions/{id}/events");
        let (status, body) = app.call_as(Some(&host), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        let list = body["data"].as_array().unwrap().clone();
        (list.len() == 9).then_some(list)
    })
    .await
    .expect("nine events in the history");
    let seen: Vec<(String, i64, String)> = history
        .iter()
        .rev()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["version"].as_i64().unwrap(),
                e["participant_id"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, i64, String)> = [
        ("session_created", 1, "-"),
        ("participant_joined", 2, "carol"),
        ("session_started", 3, "white"),
        ("participant_joined", 4, "dave"),
        ("participant_left", 5, "white"),
        ("participant_left", 6, "carol"),
        ("participant_left", 7, "dave"),
        ("participant_left", 8, "black"),
        ("session_completed", 8, "-"),
    ]
    .iter()
    .map(|(t, v, p)| ((*t).to_owned(), *v, (*p).to_owned()))
    .collect();
    assert_eq!(seen, want);
    let event = |version: i64, ty: &str| {
        history
            .iter()
            .find(|e| e["version"] == version && e["event_type"] == ty)
            .unwrap()
            .clone()
    };
    assert_eq!(event(2, "participant_joined")["metadata"]["index"], 2);
    assert_eq!(event(4, "participant_joined")["metadata"]["index"], 1);
    // White was charged exactly its turn: from the start to the leave.
    let white = event(5, "participant_left");
    let charged = left_at - turn_began;
    assert!(charged >= 30, "{charged}");
    assert_eq!(white["at_ms"], left_at);
    assert_eq!(white["time_elapsed_ms"], charged);
    assert_eq!(white["time_remaining_ms"], 300_000 - charged);
    assert_eq!(white["metadata"]["next_participant_id"], "dave");
    // Carol was waiting: nothing charged, nobody's turn began.
    let carol = event(6, "participant_left");
    assert_eq!(carol["time_elapsed_ms"], Value::Null);
    assert_eq!(carol["time_remaining_ms"], 120_000);
    assert_eq!(carol["metadata"], json!({}));
}
