//! Participants joining and leaving a live session (contract section 9): the rules with concrete numbers, then properties over random configs and timings (the rotation stays a permutation of who is left, other banks never move, a leave charges exactly the turn's time, the next eligible plays, one version each, the last eligible's leave completes).

use std::collections::HashSet;

use kairos_domain::machine::{self, next_deadline, settle_deadlines};
use kairos_domain::view::{SessionView, view};
use kairos_domain::{
    Command, Decision, Event, EventType, FieldError, Joiner, ParticipantId, ParticipantView,
    Session, SessionConfig, SessionId, Status, SyncMode, TransitionError,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const T0: i64 = 1_760_970_600_000;

fn at(ms: i64) -> i64 {
    T0 + ms
}

fn sid() -> SessionId {
    "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("a valid uuid")
}

fn pid(s: &str) -> ParticipantId {
    ParticipantId::parse(s).expect("a valid participant id")
}

fn joiner(body: Value) -> Joiner {
    Joiner::parse(&body).expect("a valid participant object")
}

fn join(body: Value) -> Command {
    Command::Join(joiner(body))
}

fn leave(who: &str) -> Command {
    Command::Leave {
        participant_id: pid(who),
    }
}

fn switch() -> Command {
    Command::Switch {
        next: None,
        lag_ms: None,
    }
}

struct Sim {
    state: Session,
}

impl Sim {
    fn new(config: Value) -> Self {
        let cfg = SessionConfig::parse(&config).expect("a valid config");
        Self {
            state: machine::create(cfg, sid(), None, at(0)).0,
        }
    }

    fn started(config: Value) -> Self {
        let mut sim = Self::new(config);
        sim.cmd(Command::Start, 0);
        sim
    }

    fn try_cmd(&self, cmd: Command, ms: i64) -> Result<Decision, TransitionError> {
        machine::decide(&self.state, &cmd, None, at(ms))
    }

    fn cmd(&mut self, cmd: Command, ms: i64) -> Decision {
        let d = self
            .try_cmd(cmd.clone(), ms)
            .unwrap_or_else(|e| panic!("{} at {ms} refused: {e}", cmd.name()));
        self.state = d.state.clone();
        d
    }

    fn view(&self, ms: i64) -> SessionView {
        view(&self.state, at(ms))
    }

    /// Participant ids with their indexes, in rotation order.
    fn rotation(&self) -> Vec<(String, u32)> {
        self.state
            .participants
            .iter()
            .map(|p| (p.id.to_string(), p.index))
            .collect()
    }

    fn active(&self) -> Option<String> {
        self.state.active_participant().map(|p| p.id.to_string())
    }
}

fn participant(v: &SessionView, who: &str) -> ParticipantView {
    v.participants
        .iter()
        .find(|p| p.participant_id.as_str() == who)
        .cloned()
        .unwrap_or_else(|| panic!("{who} is in the view"))
}

fn rotation(ids: &[(&str, u32)]) -> Vec<(String, u32)> {
    ids.iter().map(|(id, i)| ((*id).to_owned(), *i)).collect()
}

fn chess() -> Value {
    json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 300000},
            {"participant_id": "black", "total_time_ms": 300000}
        ],
        "increment_ms": 2000
    })
}

fn teams() -> Value {
    json!({
        "sync_mode": "per_group",
        "groups": [
            {"group_id": "red", "total_time_ms": 60000},
            {"group_id": "blue", "total_time_ms": 60000},
            {"group_id": "green", "total_time_ms": 60000}
        ],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"},
            {"participant_id": "r2", "group_id": "red"},
            {"participant_id": "g1", "group_id": "green"}
        ]
    })
}

// ---------------------------------------------------------------------------
// Joining
// ---------------------------------------------------------------------------

#[test]
fn a_joiner_takes_the_end_of_the_rotation_and_plays_in_turn() {
    let mut sim = Sim::started(chess());

    let d = sim.cmd(
        join(json!({"participant_id": "carol", "total_time_ms": 120000})),
        5_000,
    );

    assert_eq!(d.state.version, 3);
    assert_eq!(d.events.len(), 1);
    let e = &d.events[0];
    assert_eq!(e.event_type, EventType::ParticipantJoined);
    assert_eq!(e.version, 3);
    assert_eq!(e.participant_id, Some(pid("carol")));
    assert_eq!(e.at_ms, at(5_000));
    assert_eq!(e.time_remaining_ms, Some(120_000));
    assert_eq!(e.metadata.get("index"), Some(&json!(2)));
    assert_eq!(
        sim.rotation(),
        rotation(&[("white", 0), ("black", 1), ("carol", 2)])
    );
    // White's turn goes on: 5 s used, the cycle still the one begun at 0.
    let v = sim.view(5_000);
    assert_eq!(v.active_participant_id, Some(pid("white")));
    assert_eq!(participant(&v, "white").time_used_ms, 5_000);
    assert_eq!(v.cycle_started_at_ms, Some(at(0)));
    assert_eq!(
        (
            participant(&v, "carol").total_time_ms,
            participant(&v, "carol").cycle_count
        ),
        (120_000, 0)
    );
    // And the rotation now runs white, black, carol, white.
    sim.cmd(switch(), 6_000);
    sim.cmd(switch(), 7_000);
    assert_eq!(sim.active().as_deref(), Some("carol"));
    sim.cmd(switch(), 8_000);
    assert_eq!(sim.active().as_deref(), Some("white"));
}

#[test]
fn a_joiner_at_an_index_moves_the_ones_at_or_after_it_up_by_one() {
    let mut sim = Sim::new(chess());
    assert_eq!(sim.active().as_deref(), Some("white"));

    sim.cmd(
        join(json!({"participant_id": "carol", "participant_index": 0, "total_time_ms": 60000})),
        1_000,
    );

    assert_eq!(
        sim.rotation(),
        rotation(&[("carol", 0), ("white", 1), ("black", 2)])
    );
    // Pending: who plays first is recomputed, and it is the joiner.
    assert_eq!(sim.active().as_deref(), Some("carol"));
    assert_eq!(sim.state.status, Status::Pending);
    sim.cmd(Command::Start, 2_000);
    assert_eq!(sim.active().as_deref(), Some("carol"));

    // In the middle, with the running turn kept where it is.
    sim.cmd(
        join(json!({"participant_id": "dave", "participant_index": 2, "total_time_ms": 60000})),
        3_000,
    );
    assert_eq!(
        sim.rotation(),
        rotation(&[("carol", 0), ("white", 1), ("dave", 2), ("black", 3)])
    );
    assert_eq!(sim.active().as_deref(), Some("carol"));
    assert_eq!(participant(&sim.view(3_000), "carol").time_used_ms, 1_000);
}

#[test]
fn a_joiner_is_refused_for_a_taken_id_a_missing_bank_an_unknown_group_or_an_ended_session() {
    let sim = Sim::started(chess());
    assert_eq!(
        sim.try_cmd(
            join(json!({"participant_id": "black", "total_time_ms": 60000})),
            1_000
        ),
        Err(TransitionError::ParticipantExists(pid("black")))
    );
    assert_eq!(
        sim.try_cmd(join(json!({"participant_id": "carol"})), 1_000),
        Err(TransitionError::InvalidParticipant(vec![FieldError::new(
            "total_time_ms",
            "is required in per_participant mode"
        )]))
    );

    let teams = Sim::started(teams());
    assert_eq!(
        teams.try_cmd(join(json!({"participant_id": "x1"})), 1_000),
        Err(TransitionError::InvalidParticipant(vec![FieldError::new(
            "group_id",
            "is required in per_group mode"
        )]))
    );
    assert_eq!(
        teams.try_cmd(
            join(json!({"participant_id": "x1", "group_id": "purple"})),
            1_000
        ),
        Err(TransitionError::InvalidParticipant(vec![FieldError::new(
            "group_id",
            "names no group of this session: purple"
        )]))
    );

    let mut ended = Sim::started(chess());
    ended.cmd(Command::Complete, 1_000);
    assert_eq!(
        ended.try_cmd(
            join(json!({"participant_id": "carol", "total_time_ms": 60000})),
            2_000
        ),
        Err(TransitionError::InvalidTransition {
            status: Status::Completed,
            command: "join"
        })
    );
}

#[test]
fn a_joiner_into_a_group_plays_its_bank_and_one_into_an_empty_stopwatch_starts_a_lap() {
    let mut teams = Sim::started(teams());
    teams.cmd(
        join(json!({"participant_id": "b2", "group_id": "blue"})),
        1_000,
    );
    let v = teams.view(1_000);
    assert_eq!(participant(&v, "b2").total_time_ms, 60_000);
    assert_eq!(
        participant(&v, "b2").group_id.as_ref().map(|g| g.as_str()),
        Some("blue")
    );

    let mut watch = Sim::started(json!({"sync_mode": "count_up"}));
    let d = watch.cmd(join(json!({"participant_id": "runner"})), 4_000);
    assert_eq!(watch.active().as_deref(), Some("runner"));
    assert_eq!(d.state.cycle_started_at_ms, Some(at(4_000)));
    // The stopwatch kept running through the join.
    let v = watch.view(10_000);
    assert_eq!(v.elapsed_ms, 10_000);
    assert_eq!(participant(&v, "runner").time_used_ms, 6_000);
}

// ---------------------------------------------------------------------------
// Leaving
// ---------------------------------------------------------------------------

fn trio() -> Value {
    json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 60000},
            {"participant_id": "b", "total_time_ms": 60000},
            {"participant_id": "c", "total_time_ms": 60000}
        ],
        "increment_ms": 1000
    })
}

#[test]
fn the_active_leaver_is_charged_its_turn_and_the_next_plays_from_that_instant() {
    let mut sim = Sim::started(trio());
    sim.cmd(switch(), 4_000); // a used 4 s and got 1 s; b plays from 4 s.

    let d = sim.cmd(leave("b"), 11_000);

    assert_eq!(d.state.version, 4);
    assert_eq!(d.events.len(), 1);
    let e = &d.events[0];
    assert_eq!(e.event_type, EventType::ParticipantLeft);
    assert_eq!(e.version, 4);
    assert_eq!(e.participant_id, Some(pid("b")));
    assert_eq!(e.at_ms, at(11_000));
    assert_eq!(e.time_elapsed_ms, Some(7_000));
    // No increment for a leave: 60 s less the 7 s charged.
    assert_eq!(e.time_remaining_ms, Some(53_000));
    assert_eq!(e.metadata.get("next_participant_id"), Some(&json!("c")));
    assert_eq!(sim.rotation(), rotation(&[("a", 0), ("c", 1)]));
    let v = sim.view(15_000);
    assert_eq!(v.active_participant_id, Some(pid("c")));
    assert_eq!(v.cycle_started_at_ms, Some(at(11_000)));
    assert_eq!(participant(&v, "c").time_used_ms, 4_000);
    assert_eq!(participant(&v, "c").cycle_count, 1);
    // a's bank is as the switch left it.
    assert_eq!(
        (
            participant(&v, "a").total_time_ms,
            participant(&v, "a").time_used_ms
        ),
        (61_000, 4_000)
    );
    // The deadline is c's: 60 s from 11 s.
    assert_eq!(next_deadline(&sim.state), Some(at(71_000)));
}

#[test]
fn the_last_one_in_the_rotation_leaving_hands_the_turn_round_to_the_first() {
    let mut sim = Sim::started(trio());
    sim.cmd(switch(), 1_000);
    sim.cmd(switch(), 2_000);
    assert_eq!(sim.active().as_deref(), Some("c"));

    let d = sim.cmd(leave("c"), 3_000);

    assert_eq!(
        d.events[0].metadata.get("next_participant_id"),
        Some(&json!("a"))
    );
    assert_eq!(sim.active().as_deref(), Some("a"));
}

#[test]
fn a_waiting_leaver_is_charged_nothing_and_the_turn_goes_on() {
    let mut sim = Sim::started(trio());

    let d = sim.cmd(leave("b"), 5_000);

    let e = &d.events[0];
    assert_eq!(e.time_elapsed_ms, None);
    assert_eq!(e.time_remaining_ms, Some(60_000));
    assert_eq!(e.metadata.get("next_participant_id"), None);
    assert_eq!(sim.rotation(), rotation(&[("a", 0), ("c", 1)]));
    let v = sim.view(9_000);
    assert_eq!(v.active_participant_id, Some(pid("a")));
    assert_eq!(v.cycle_started_at_ms, Some(at(0)));
    assert_eq!(participant(&v, "a").time_used_ms, 9_000);
    sim.cmd(switch(), 9_000);
    assert_eq!(sim.active().as_deref(), Some("c"));
}

#[test]
fn a_leave_while_paused_charges_the_paused_turn_and_the_next_turn_waits_for_resume() {
    let mut sim = Sim::started(trio());
    sim.cmd(Command::Pause, 3_000);

    let d = sim.cmd(leave("a"), 20_000);

    assert_eq!(d.events[0].time_elapsed_ms, Some(3_000));
    assert_eq!(sim.state.status, Status::Paused);
    assert_eq!(sim.active().as_deref(), Some("b"));
    assert_eq!(participant(&sim.view(25_000), "b").time_used_ms, 0);
    sim.cmd(Command::Resume, 30_000);
    assert_eq!(participant(&sim.view(32_000), "b").time_used_ms, 2_000);
}

#[test]
fn the_last_eligible_leaving_completes_the_session_in_the_same_version() {
    let mut sim = Sim::started(chess());
    sim.cmd(leave("black"), 1_000);

    let d = sim.cmd(leave("white"), 4_000);

    assert_eq!(d.state.status, Status::Completed);
    assert_eq!(d.state.version, 4);
    let types: Vec<(EventType, u64)> = d.events.iter().map(|e| (e.event_type, e.version)).collect();
    assert_eq!(
        types,
        [
            (EventType::ParticipantLeft, 4),
            (EventType::SessionCompleted, 4)
        ]
    );
    assert_eq!(d.events[0].time_elapsed_ms, Some(4_000));
    let v = sim.view(9_000);
    assert_eq!(v.session_completed_at_ms, Some(at(4_000)));
    assert_eq!(v.active_participant_id, None);
    assert!(v.participants.is_empty());
    assert_eq!(v.elapsed_ms, 4_000);
    assert_eq!(next_deadline(&sim.state), None);
    assert!(matches!(
        sim.try_cmd(leave("white"), 5_000),
        Err(TransitionError::InvalidTransition { .. })
    ));
}

#[test]
fn nobody_eligible_is_also_when_those_left_have_run_out() {
    let mut sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 10000},
            {"participant_id": "b", "total_time_ms": 10000}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));
    // a runs out at 10 s; b plays from then.
    assert_eq!(sim.view(12_000).active_participant_id, Some(pid("b")));

    let d = sim.cmd(leave("b"), 12_000);

    // The expiry of a is its own version first, then the leave.
    let types: Vec<(EventType, u64)> = d.events.iter().map(|e| (e.event_type, e.version)).collect();
    assert_eq!(
        types,
        [
            (EventType::ParticipantExpired, 3),
            (EventType::ParticipantLeft, 4),
            (EventType::SessionCompleted, 4)
        ]
    );
    assert_eq!(d.events[1].time_elapsed_ms, Some(2_000));
    assert_eq!(d.state.status, Status::Completed);
}

#[test]
fn a_leave_in_a_group_charges_the_group_and_passes_over_a_group_with_nobody_left() {
    let mut sim = Sim::started(teams());
    sim.cmd(switch(), 2_000); // red (r1) used 2 s; blue (b1) plays.

    let d = sim.cmd(leave("b1"), 5_000);

    assert_eq!(d.events[0].time_elapsed_ms, Some(3_000));
    assert_eq!(
        d.events[0].group_id.as_ref().map(|g| g.as_str()),
        Some("blue")
    );
    // Blue keeps its bank and what it used; green is next.
    let v = sim.view(5_000);
    let blue = v
        .groups
        .iter()
        .find(|g| g.group_id.as_str() == "blue")
        .cloned();
    assert_eq!(
        blue.map(|g| (g.time_used_ms, g.has_expired)),
        Some((3_000, false))
    );
    assert_eq!(v.active_participant_id, Some(pid("g1")));
    // Then red, whose round-robin goes on with r2; blue, empty, is passed over.
    sim.cmd(switch(), 6_000);
    assert_eq!(sim.active().as_deref(), Some("r2"));
    sim.cmd(switch(), 7_000);
    assert_eq!(sim.active().as_deref(), Some("g1"));
}

#[test]
fn a_member_leaving_keeps_its_group_round_robin_in_order() {
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [{"group_id": "red", "total_time_ms": 60000}],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "r2", "group_id": "red"},
            {"participant_id": "r3", "group_id": "red"}
        ]
    }));
    sim.cmd(switch(), 1_000);
    assert_eq!(sim.active().as_deref(), Some("r2"));

    sim.cmd(leave("r1"), 2_000);

    // r2 still plays; then r3, then round to r2.
    assert_eq!(sim.active().as_deref(), Some("r2"));
    sim.cmd(switch(), 3_000);
    assert_eq!(sim.active().as_deref(), Some("r3"));
    sim.cmd(switch(), 4_000);
    assert_eq!(sim.active().as_deref(), Some("r2"));
}

#[test]
fn a_leave_names_someone_in_the_session_and_a_pending_leave_recomputes_who_starts() {
    let mut sim = Sim::new(trio());
    assert_eq!(
        sim.try_cmd(leave("zed"), 1_000),
        Err(TransitionError::UnknownParticipant(pid("zed")))
    );

    let d = sim.cmd(leave("a"), 1_000);

    assert_eq!(d.events[0].time_elapsed_ms, None);
    assert_eq!(sim.state.status, Status::Pending);
    assert_eq!(sim.active().as_deref(), Some("b"));
    assert_eq!(sim.rotation(), rotation(&[("b", 0), ("c", 1)]));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Setup {
    mode: SyncMode,
    timeout: &'static str,
    auto_advance: bool,
    participants: usize,
    groups: usize,
    bank_ms: i64,
    increment_ms: i64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            Just(SyncMode::PerParticipant),
            Just(SyncMode::PerCycle),
            Just(SyncMode::PerGroup),
            Just(SyncMode::Global),
            Just(SyncMode::CountUp),
        ],
        prop_oneof![Just("end_session"), Just("skip_cycle")],
        any::<bool>(),
        0usize..=5,
        1usize..=3,
        5_000i64..=60_000,
        prop_oneof![Just(0i64), 1i64..=3_000],
    )
        .prop_map(
            |(mode, timeout, auto_advance, n, groups, bank_ms, increment_ms)| {
                let participants = match mode {
                    SyncMode::Global | SyncMode::CountUp => n,
                    _ => n.max(1),
                };
                Setup {
                    mode,
                    timeout,
                    auto_advance,
                    participants,
                    groups: groups.min(participants.max(1)),
                    bank_ms,
                    increment_ms,
                }
            },
        )
}

fn config(s: &Setup) -> Value {
    let participants: Vec<Value> = (0..s.participants)
        .map(|i| {
            let mut p = json!({"participant_id": format!("p{i}")});
            if s.mode == SyncMode::PerParticipant {
                p["total_time_ms"] = json!(s.bank_ms + 1_000 * i as i64);
            }
            if s.mode == SyncMode::PerGroup {
                p["group_id"] = json!(format!("g{}", i % s.groups));
            }
            p
        })
        .collect();
    let mut c = json!({
        "sync_mode": s.mode.as_str(),
        "participants": participants,
        "increment_ms": s.increment_ms,
        "action_on_timeout": {"type": s.timeout},
        "auto_advance": s.auto_advance,
    });
    match s.mode {
        SyncMode::PerCycle => c["time_per_cycle_ms"] = json!(s.bank_ms),
        SyncMode::PerGroup => {
            c["groups"] = (0..s.groups)
                .map(|g| json!({"group_id": format!("g{g}"), "total_time_ms": s.bank_ms}))
                .collect();
        }
        SyncMode::Global => c["total_time_ms"] = json!(s.bank_ms * 4),
        SyncMode::PerParticipant | SyncMode::CountUp => {}
    }
    c
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Switch,
    Pause,
    Resume,
    /// `j{who}` joins, at `index` or the end, into group `g{group}`.
    Join {
        who: usize,
        index: Option<u32>,
        group: usize,
        bank_ms: i64,
    },
    /// `p0..p4` for 0..5, `j0..j4` for 5..10.
    Leave(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        4 => Just(Op::Switch),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        3 => (0usize..5, prop::option::of(0u32..8), 0usize..4, 1_000i64..=30_000)
            .prop_map(|(who, index, group, bank_ms)| Op::Join { who, index, group, bank_ms }),
        4 => (0usize..10).prop_map(Op::Leave),
    ]
}

impl Op {
    fn command(&self, setup: &Setup) -> Command {
        match self {
            Op::Start => Command::Start,
            Op::Switch => switch(),
            Op::Pause => Command::Pause,
            Op::Resume => Command::Resume,
            Op::Join {
                who,
                index,
                group,
                bank_ms,
            } => {
                let mut body =
                    json!({"participant_id": format!("j{who}"), "total_time_ms": bank_ms});
                if let Some(index) = index {
                    body["participant_index"] = json!(index);
                }
                if setup.mode == SyncMode::PerGroup {
                    // Group `setup.groups` does not exist: the refusal is checked too.
                    body["group_id"] = json!(format!("g{}", group % (setup.groups + 1)));
                }
                join(body)
            }
            Op::Leave(k) if *k < 5 => leave(&format!("p{k}")),
            Op::Leave(k) => leave(&format!("j{}", k - 5)),
        }
    }
}

/// Whether participant `i` of a settled state is still in the rotation.
fn eligible(s: &Session, i: usize) -> bool {
    let p = &s.participants[i];
    let group_out = s.sync_mode == SyncMode::PerGroup
        && p.group_id
            .as_ref()
            .and_then(|g| s.group_position(g))
            .is_some_and(|g| s.groups[g].has_expired);
    !p.has_expired && !group_out
}

fn ids(s: &Session) -> Vec<String> {
    s.participants.iter().map(|p| p.id.to_string()).collect()
}

/// The properties of one join or leave decided at `t` on `before`.
fn check_change(
    before: &Session,
    command: &Command,
    d: &Decision,
    t: i64,
    departed_used: &mut i64,
) -> Result<(), TestCaseError> {
    if !matches!(command, Command::Join(_) | Command::Leave { .. }) {
        return Ok(());
    }
    let settled = settle_deadlines(before, t).into_owned();
    let read = view(before, t);
    let after = &d.state;
    // One version for the command, after those of the deadlines due.
    prop_assert_eq!(after.version, settled.version + 1);
    let mine: Vec<&Event> = d
        .events
        .iter()
        .filter(|e| e.version == after.version)
        .collect();
    // Indexes stay unique and in rotation order.
    prop_assert!(
        after
            .participants
            .windows(2)
            .all(|w| w[0].index < w[1].index),
        "indexes out of order: {:?}",
        after.participants
    );
    let others_before: Vec<String> = ids(&settled);
    match command {
        Command::Join(j) => {
            let id = j.id.to_string();
            // The others keep their order; the joiner sits where its index says.
            let mut without = ids(after);
            let pos = without.iter().position(|x| *x == id).expect("joined");
            without.remove(pos);
            prop_assert_eq!(&without, &others_before);
            let expected_index = j
                .index
                .unwrap_or_else(|| settled.participants.last().map_or(0, |p| p.index + 1));
            prop_assert_eq!(after.participants[pos].index, expected_index);
            prop_assert_eq!(mine.len(), 1);
            prop_assert_eq!(mine[0].event_type, EventType::ParticipantJoined);
            prop_assert_eq!(mine[0].participant_id.as_ref(), Some(&j.id));
            prop_assert_eq!(mine[0].metadata.get("index"), Some(&json!(expected_index)));
            // Whoever played goes on playing.
            if settled.status != Status::Pending && settled.active.is_some() {
                prop_assert_eq!(
                    after.active_participant().map(|p| &p.id),
                    settled.active_participant().map(|p| &p.id)
                );
                prop_assert_eq!(after.cycle_started_at_ms, settled.cycle_started_at_ms);
            }
            prop_assert_eq!(after.status, settled.status);
            for p in &read.participants {
                let now = participant(&view(after, t), p.participant_id.as_str());
                prop_assert_eq!(
                    (now.total_time_ms, now.time_used_ms, now.cycle_count),
                    (p.total_time_ms, p.time_used_ms, p.cycle_count)
                );
            }
        }
        Command::Leave { participant_id } => {
            let id = participant_id.to_string();
            let i = settled
                .participant_position(participant_id)
                .expect("the leaver was there");
            // The rotation is the others, in their order.
            let mut expected = others_before.clone();
            expected.remove(i);
            prop_assert_eq!(ids(after), expected);
            let turn_on = matches!(settled.status, Status::Running | Status::Paused)
                && settled.active == Some(i);
            let left = &mine[0];
            prop_assert_eq!(left.event_type, EventType::ParticipantLeft);
            prop_assert_eq!(left.participant_id.as_ref(), Some(participant_id));
            // The leaver is charged exactly its turn's time, as of t.
            let shown = participant(&read, &id);
            let charged = shown.time_used_ms - settled.participants[i].time_used_ms;
            if turn_on {
                let running = match (settled.status, settled.segment_started_at_ms) {
                    (Status::Running, Some(seg)) => t - seg,
                    _ => 0,
                };
                prop_assert_eq!(charged, settled.cycle_used_ms + running);
                prop_assert_eq!(left.time_elapsed_ms, Some(charged));
            } else {
                prop_assert_eq!(charged, 0);
                prop_assert_eq!(left.time_elapsed_ms, None);
            }
            *departed_used += shown.time_used_ms;
            // Who plays next: the next eligible after the leaver, in order.
            let remaining: Vec<usize> = (0..settled.participants.len())
                .filter(|&k| k != i && eligible(&settled, k))
                .collect();
            if remaining.is_empty() {
                prop_assert_eq!(after.status, Status::Completed);
                prop_assert_eq!(after.session_completed_at_ms, Some(t));
                prop_assert_eq!(mine.len(), 2);
                prop_assert_eq!(mine[1].event_type, EventType::SessionCompleted);
                prop_assert_eq!(next_deadline(after), None);
            } else {
                prop_assert_eq!(after.status, settled.status);
                prop_assert_eq!(mine.len(), 1);
                if turn_on && settled.sync_mode != SyncMode::PerGroup {
                    let n = settled.participants.len();
                    let next = (1..n)
                        .map(|k| (i + k) % n)
                        .find(|k| remaining.contains(k))
                        .expect("someone is eligible");
                    let next_id = &settled.participants[next].id;
                    prop_assert_eq!(after.active_participant().map(|p| &p.id), Some(next_id));
                    prop_assert_eq!(
                        left.metadata.get("next_participant_id"),
                        Some(&json!(next_id.as_str()))
                    );
                    prop_assert_eq!(after.cycle_started_at_ms, Some(t));
                } else if turn_on {
                    // per_group: the first group after the leaver's with
                    // anyone eligible left in it.
                    let group_of = |s: &Session, k: usize| {
                        s.participants[k]
                            .group_id
                            .as_ref()
                            .and_then(|g| s.group_position(g))
                    };
                    let g0 = settled.active_group.expect("a group plays");
                    let n = settled.groups.len();
                    let next_group = (1..=n)
                        .map(|k| (g0 + k) % n)
                        .find(|&g| remaining.iter().any(|&k| group_of(&settled, k) == Some(g)));
                    let now_group = after.active.and_then(|k| group_of(after, k));
                    prop_assert_eq!(now_group, next_group);
                    prop_assert_eq!(after.cycle_started_at_ms, Some(t));
                } else if settled.status != Status::Pending {
                    prop_assert_eq!(
                        after.active_participant().map(|p| &p.id),
                        settled.active_participant().map(|p| &p.id)
                    );
                    prop_assert_eq!(after.cycle_started_at_ms, settled.cycle_started_at_ms);
                }
            }
            // Nobody else's bank moves.
            let now = view(after, t);
            for p in now.participants.iter() {
                let was = participant(&read, p.participant_id.as_str());
                prop_assert_eq!(
                    (p.total_time_ms, p.time_used_ms),
                    (was.total_time_ms, was.time_used_ms),
                    "{}",
                    p.participant_id
                );
            }
        }
        _ => {}
    }
    // The deadline follows the new state: a read as of it shows it due.
    if let Some(deadline) = next_deadline(after) {
        prop_assert!(deadline >= t);
        let due = machine::decide(after, &Command::Timeout, None, deadline);
        prop_assert!(due.is_ok(), "a deadline at {deadline} that is not due");
    }
    Ok(())
}

fn run(setup: &Setup, steps: &[(i64, Op)]) -> Result<(), TestCaseError> {
    let cfg = SessionConfig::parse(&config(setup)).expect("generated configs are valid");
    let mut state = machine::create(cfg, sid(), None, T0).0;
    let mut t = T0;
    let mut departed_used = 0i64;
    let mut seen = HashSet::new();
    for (wait, op) in steps {
        t += wait;
        let command = op.command(setup);
        let settled = settle_deadlines(&state, t).into_owned();
        match machine::decide(&state, &command, None, t) {
            Ok(d) => {
                for e in &d.events {
                    prop_assert!(seen.insert(e.event_id), "duplicate event id");
                    prop_assert!(e.time_elapsed_ms.is_none_or(|x| x >= 0));
                    prop_assert!(e.time_remaining_ms.is_none_or(|x| x >= 0));
                }
                check_change(&state, &command, &d, t, &mut departed_used)?;
                state = d.state;
            }
            Err(TransitionError::ParticipantExists(id)) => {
                prop_assert!(settled.participant_position(&id).is_some());
            }
            Err(TransitionError::InvalidParticipant(fields)) => {
                // Only the unknown group is generated.
                prop_assert_eq!(setup.mode, SyncMode::PerGroup);
                prop_assert_eq!(fields.len(), 1);
                prop_assert_eq!(fields[0].field.as_str(), "group_id");
            }
            Err(TransitionError::UnknownParticipant(id)) => {
                prop_assert!(
                    matches!(command, Command::Leave { .. }),
                    "only a leave names one"
                );
                prop_assert!(settled.participant_position(&id).is_none());
            }
            Err(TransitionError::InvalidTransition { status, .. }) => {
                prop_assert_eq!(status, settled.status);
                if matches!(command, Command::Join(_) | Command::Leave { .. }) {
                    prop_assert!(
                        status.is_ended(),
                        "only an ended session refuses a join or leave"
                    );
                }
            }
            Err(e) => prop_assert!(false, "unexpected refusal {e:?}"),
        }
        // Every ms of running time is charged to exactly one participant,
        // those who left included (in per_group, to exactly one group).
        let v = view(&state, t);
        match v.sync_mode {
            SyncMode::PerParticipant => {
                let used: i64 = v.participants.iter().map(|p| p.time_used_ms).sum();
                prop_assert_eq!(used + departed_used, v.elapsed_ms);
            }
            SyncMode::PerGroup => {
                let used: i64 = v.groups.iter().map(|g| g.time_used_ms).sum();
                prop_assert_eq!(used, v.elapsed_ms);
            }
            _ => {}
        }
        for p in &v.participants {
            prop_assert!(p.time_used_ms >= 0 && p.time_remaining_ms >= 0, "{p:?}");
        }
    }
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<(i64, Op)>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0i64), 0i64..=5_000, 5_000i64..=40_000],
            op(),
        ),
        1..30,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn joins_and_leaves_keep_the_rotation_the_banks_and_the_charges_right(
        setup in setup(),
        steps in steps(),
    ) {
        run(&setup, &steps)?;
    }

    #[test]
    fn joins_and_leaves_in_started_sessions_keep_every_rule(
        setup in setup(),
        steps in steps(),
    ) {
        let mut steps = steps;
        steps.insert(0, (0, Op::Start));
        run(&setup, &steps)?;
    }
}
