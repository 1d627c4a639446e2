//! The clocks of a session at any server instant, computed from the last
//! view alone (the client half of "calculate, don't count", contract section
//! 1; the same rules as the browser SDK's `computeDisplay`).
//!
//! Only the running clock moves, by `server_now - view.server_time_ms`, and
//! only while the session runs: the active participant (`per_participant`,
//! `per_cycle`), the active group and its members (`per_group`), the session
//! countdown and everyone on it (`global`), the stopwatch (`count_up`).
//! Nothing goes below 0 or past the running clock's deadline (the server
//! applies a timeout as of its deadline and its update follows), and an
//! instant before `server_time_ms` shows the view as it is. Pure functions:
//! the same inputs give the same numbers on every machine.

use crate::types::{SessionView, Status, SyncMode};

/// How far the running clock of `view` has moved at `server_now_ms`: 0 unless
/// running, never past the deadline.
fn moved_ms(view: &SessionView, server_now_ms: i64) -> i64 {
    if view.status != Status::Running {
        return 0;
    }
    let raw = server_now_ms.saturating_sub(view.server_time_ms).max(0);
    raw.min(budget_ms(view))
}

/// How long the running clock can still run after `view.server_time_ms`
/// before it hits zero (or the stopwatch its limit); `i64::MAX` when nothing
/// can run out.
fn budget_ms(view: &SessionView) -> i64 {
    match view.sync_mode {
        SyncMode::PerParticipant | SyncMode::PerCycle => view
            .active_participant()
            .map_or(i64::MAX, |p| p.time_remaining_ms.max(0)),
        SyncMode::PerGroup => view
            .groups
            .iter()
            .find(|g| g.is_active)
            .map_or(i64::MAX, |g| g.time_remaining_ms.max(0)),
        SyncMode::Global => view.time_remaining_ms.map_or(i64::MAX, |t| t.max(0)),
        SyncMode::CountUp => view
            .max_time_ms
            .map_or(i64::MAX, |max| max.saturating_sub(view.elapsed_ms).max(0)),
        SyncMode::Other => i64::MAX,
    }
}

/// Whether a participant's displayed clock is the one that runs.
fn participant_ticks(view: &SessionView, group_id: Option<&str>, is_active: bool) -> bool {
    match view.sync_mode {
        SyncMode::PerParticipant | SyncMode::PerCycle | SyncMode::Other => is_active,
        SyncMode::PerGroup => {
            view.active_group_id.is_some() && group_id == view.active_group_id.as_deref()
        }
        SyncMode::Global => true,
        SyncMode::CountUp => view.max_time_ms.is_some(),
    }
}

/// A participant's `time_remaining_ms` at `server_now_ms`; `None` when the
/// view has no such participant.
pub fn participant_remaining_ms(
    view: &SessionView,
    participant_id: &str,
    server_now_ms: i64,
) -> Option<i64> {
    let p = view.participant(participant_id)?;
    let remaining = if participant_ticks(view, p.group_id.as_deref(), p.is_active) {
        p.time_remaining_ms
            .saturating_sub(moved_ms(view, server_now_ms))
    } else {
        p.time_remaining_ms
    };
    Some(remaining.max(0))
}

/// A group's `time_remaining_ms` at `server_now_ms` (`per_group`).
pub fn group_remaining_ms(view: &SessionView, group_id: &str, server_now_ms: i64) -> Option<i64> {
    let g = view.groups.iter().find(|g| g.group_id == group_id)?;
    let remaining = if g.is_active {
        g.time_remaining_ms
            .saturating_sub(moved_ms(view, server_now_ms))
    } else {
        g.time_remaining_ms
    };
    Some(remaining.max(0))
}

/// The session countdown (`global`) at `server_now_ms`; `None` in other modes.
pub fn session_remaining_ms(view: &SessionView, server_now_ms: i64) -> Option<i64> {
    view.time_remaining_ms
        .map(|t| t.saturating_sub(moved_ms(view, server_now_ms)).max(0))
}

/// The session's running time (the stopwatch in `count_up`) at `server_now_ms`.
pub fn elapsed_ms(view: &SessionView, server_now_ms: i64) -> i64 {
    view.elapsed_ms
        .saturating_add(moved_ms(view, server_now_ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn chess(status: &str) -> SessionView {
        serde_json::from_value(json!({
            "session_id": "123e4567-e89b-12d3-a456-426614174000",
            "sync_mode": "per_participant", "status": status, "version": 3,
            "participants": [
                {"participant_id": "white", "participant_index": 0, "time_remaining_ms": 5000,
                 "is_active": true},
                {"participant_id": "black", "participant_index": 1, "time_remaining_ms": 9000,
                 "is_active": false}
            ],
            "active_participant_id": "white",
            "server_time_ms": 1_000_000, "elapsed_ms": 100
        }))
        .unwrap()
    }

    #[test]
    fn only_the_active_clock_moves_and_it_stops_at_zero() {
        let v = chess("running");
        assert_eq!(participant_remaining_ms(&v, "white", 1_001_500), Some(3500));
        assert_eq!(participant_remaining_ms(&v, "black", 1_001_500), Some(9000));
        assert_eq!(participant_remaining_ms(&v, "white", 1_060_000), Some(0));
        // The stopwatch stops at the deadline too.
        assert_eq!(elapsed_ms(&v, 1_060_000), 5100);
        // Before the view's instant: as it is.
        assert_eq!(participant_remaining_ms(&v, "white", 999_000), Some(5000));
        assert_eq!(participant_remaining_ms(&v, "nobody", 1_000_000), None);
    }

    #[test]
    fn nothing_moves_while_paused() {
        let v = chess("paused");
        assert_eq!(participant_remaining_ms(&v, "white", 1_003_000), Some(5000));
        assert_eq!(elapsed_ms(&v, 1_003_000), 100);
    }

    #[test]
    fn a_global_countdown_moves_everyone() {
        let v: SessionView = serde_json::from_value(json!({
            "session_id": "123e4567-e89b-12d3-a456-426614174000",
            "sync_mode": "global", "status": "running", "version": 2,
            "participants": [{"participant_id": "a", "time_remaining_ms": 60000, "is_active": true},
                             {"participant_id": "b", "time_remaining_ms": 60000}],
            "server_time_ms": 10, "time_remaining_ms": 60000, "elapsed_ms": 0
        }))
        .unwrap();
        assert_eq!(session_remaining_ms(&v, 1010), Some(59000));
        assert_eq!(participant_remaining_ms(&v, "b", 1010), Some(59000));
    }
}
