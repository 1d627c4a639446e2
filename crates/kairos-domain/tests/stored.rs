//! Sessions stored by the previous release (before contract section 8) still load, in JSON and in the MessagePack-with-field-names shape store-redis writes, and behave exactly as sessions created without the new config.

use kairos_domain::machine;
use kairos_domain::view::view;
use kairos_domain::{
    Command, GroupId, ParticipantId, Session, SessionConfig, SessionId, Status, SyncMode,
    TimeoutAction,
};
use serde::Serialize;
use serde_json::json;

// The previous release's stored shape, field for field (session.rs at the
// commit before section 8): what its derived `Serialize` wrote.

#[derive(Serialize)]
struct OldParticipant {
    id: ParticipantId,
    index: u32,
    group_id: Option<GroupId>,
    total_time_ms: i64,
    time_used_ms: i64,
    cycle_count: u32,
    has_expired: bool,
}

#[derive(Serialize)]
struct OldGroup {
    id: GroupId,
    index: u32,
    total_time_ms: i64,
    time_used_ms: i64,
    has_expired: bool,
    last_member: Option<usize>,
}

#[derive(Serialize)]
struct OldSession {
    id: SessionId,
    sync_mode: SyncMode,
    status: Status,
    version: u64,
    participants: Vec<OldParticipant>,
    groups: Vec<OldGroup>,
    active: Option<usize>,
    active_group: Option<usize>,
    total_time_ms: Option<i64>,
    time_per_cycle_ms: Option<i64>,
    increment_ms: i64,
    max_time_ms: Option<i64>,
    action_on_timeout: TimeoutAction,
    auto_advance: bool,
    metadata: serde_json::Map<String, serde_json::Value>,
    owner: Option<String>,
    elapsed_ms: i64,
    cycle_used_ms: i64,
    segment_started_at_ms: Option<i64>,
    cycle_started_at_ms: Option<i64>,
    session_started_at_ms: Option<i64>,
    session_completed_at_ms: Option<i64>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl OldSession {
    /// What the previous release stored for `s` (which uses none of section 8).
    fn of(s: &Session) -> Self {
        Self {
            id: s.id,
            sync_mode: s.sync_mode,
            status: s.status,
            version: s.version,
            participants: s
                .participants
                .iter()
                .map(|p| OldParticipant {
                    id: p.id.clone(),
                    index: p.index,
                    group_id: p.group_id.clone(),
                    total_time_ms: p.total_time_ms,
                    time_used_ms: p.time_used_ms,
                    cycle_count: p.cycle_count,
                    has_expired: p.has_expired,
                })
                .collect(),
            groups: s
                .groups
                .iter()
                .map(|g| OldGroup {
                    id: g.id.clone(),
                    index: g.index,
                    total_time_ms: g.total_time_ms,
                    time_used_ms: g.time_used_ms,
                    has_expired: g.has_expired,
                    last_member: g.last_member,
                })
                .collect(),
            active: s.active,
            active_group: s.active_group,
            total_time_ms: s.total_time_ms,
            time_per_cycle_ms: s.time_per_cycle_ms,
            increment_ms: s.increment_ms,
            max_time_ms: s.max_time_ms,
            action_on_timeout: s.action_on_timeout.clone(),
            auto_advance: s.auto_advance,
            metadata: s.metadata.clone(),
            owner: s.owner.clone(),
            elapsed_ms: s.elapsed_ms,
            cycle_used_ms: s.cycle_used_ms,
            segment_started_at_ms: s.segment_started_at_ms,
            cycle_started_at_ms: s.cycle_started_at_ms,
            session_started_at_ms: s.session_started_at_ms,
            session_completed_at_ms: s.session_completed_at_ms,
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

const T0: i64 = 1_760_970_600_000;

fn running(config: serde_json::Value) -> Session {
    let cfg = SessionConfig::parse(&config).expect("valid");
    let id: SessionId = "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("uuid");
    let (s, _) = machine::create(cfg, id, Some("host".into()), T0);
    let s = machine::decide(&s, &Command::Start, None, T0 + 1_000)
        .expect("start")
        .state;
    machine::decide(
        &s,
        &Command::Switch {
            next: None,
            lag_ms: None,
        },
        None,
        T0 + 4_000,
    )
    .expect("switch")
    .state
}

fn configs() -> Vec<serde_json::Value> {
    vec![
        json!({"sync_mode": "per_participant", "increment_ms": 2000, "max_time_ms": 70000,
               "participants": [{"participant_id": "white", "total_time_ms": 60000},
                                {"participant_id": "black", "total_time_ms": 60000}]}),
        json!({"sync_mode": "per_group",
               "participants": [{"participant_id": "a", "group_id": "red"},
                                {"participant_id": "b", "group_id": "blue"}],
               "groups": [{"group_id": "red", "total_time_ms": 60000},
                          {"group_id": "blue", "total_time_ms": 60000}],
               "action_on_timeout": {"type": "auto_action", "action": "fold", "penalty": 5},
               "auto_advance": true, "metadata": {"room": "x"}}),
        json!({"sync_mode": "per_cycle", "time_per_cycle_ms": 5000,
               "participants": [{"participant_id": "a"}, {"participant_id": "b"}]}),
        json!({"sync_mode": "global", "total_time_ms": 30000}),
    ]
}

/// Loads an old session both ways and runs the same commands on it and on
/// today's equivalent: every view and decision is the same.
fn loads_and_behaves_the_same(now: &Session, old: Session) {
    assert_eq!(old, *now);
    let mut a = old;
    let mut b = now.clone();
    for (k, cmd) in [
        Command::Switch {
            next: None,
            lag_ms: Some(300),
        },
        Command::Pause,
        Command::Resume,
        Command::Timeout,
    ]
    .into_iter()
    .enumerate()
    {
        let t = T0 + 6_000 + 50_000 * k as i64;
        assert_eq!(view(&a, t), view(&b, t));
        let (da, db) = (
            machine::decide(&a, &cmd, None, t),
            machine::decide(&b, &cmd, None, t),
        );
        assert_eq!(da, db);
        if let (Ok(da), Ok(db)) = (da, db) {
            a = da.state;
            b = db.state;
        }
    }
}

#[test]
fn json_of_the_previous_release_loads_and_behaves_as_before() {
    for config in configs() {
        let now = running(config);
        let json = serde_json::to_vec(&OldSession::of(&now)).expect("encodes");
        let text = String::from_utf8(json.clone()).expect("utf-8");
        assert!(!text.contains("stage_index") && !text.contains("warnings_ms"));
        let old: Session = serde_json::from_slice(&json).expect("an old session loads");
        loads_and_behaves_the_same(&now, old);
    }
}

#[test]
fn messagepack_of_the_previous_release_loads_and_behaves_as_before() {
    for config in configs() {
        let now = running(config);
        let bytes = rmp_serde::to_vec_named(&OldSession::of(&now)).expect("encodes");
        let old: Session = rmp_serde::from_slice(&bytes).expect("an old session loads");
        loads_and_behaves_the_same(&now, old);
    }
}

#[test]
fn sessions_with_the_new_rules_round_trip_both_ways() {
    let cfg = json!({"sync_mode": "per_participant",
        "participants": [{"participant_id": "white", "total_time_ms": 60000},
                         {"participant_id": "black", "total_time_ms": 60000}],
        "stages": [{"moves": 2, "increment_ms": 1000, "delay_ms": 2000, "delay_mode": "simple"},
                   {"add_ms": 5000, "delay_ms": 1000, "delay_mode": "bronstein"}],
        "lag_compensation": {"enabled": true}, "warnings_ms": [30000, 10000],
        "start_at_ms": T0 + 500});
    let s = running(cfg);
    let back: Session =
        serde_json::from_slice(&serde_json::to_vec(&s).expect("json")).expect("json");
    assert_eq!(back, s);
    let back: Session =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&s).expect("mp")).expect("mp");
    assert_eq!(back, s);
}
