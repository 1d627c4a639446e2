//! The wire contract's clock rules (sections 1, 2 and 5) checked with concrete numbers: every sync mode, status transition, timeout action and event, plus `SessionService` over mocks.

use kairos_domain::machine::{self, next_deadline};
use kairos_domain::view::view;
use kairos_domain::{
    Command, Decision, Event, EventType, ParticipantId, ParticipantView, Session, SessionConfig,
    SessionId, SessionView, Status, TransitionError,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A realistic epoch instant so that offsets read as "ms since the session began".
const T0: i64 = 1_760_970_600_000;

/// The instant `ms` after `T0`.
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

/// A session under test: its state and every event it produced so far.
struct Sim {
    state: Session,
    events: Vec<Event>,
}

impl Sim {
    /// Creates a session from a JSON config at `at(0)`.
    fn new(config: Value) -> Self {
        let cfg = SessionConfig::parse(&config).expect("a valid config");
        let (state, created) = machine::create(cfg, sid(), None, at(0));
        Self {
            state,
            events: vec![created],
        }
    }

    /// Creates and starts a session at `at(0)`.
    fn started(config: Value) -> Self {
        let mut sim = Self::new(config);
        sim.start(0);
        sim
    }

    fn try_cmd(&self, cmd: Command, ms: i64) -> Result<Decision, TransitionError> {
        machine::decide(&self.state, &cmd, None, at(ms))
    }

    fn try_versioned(
        &self,
        cmd: Command,
        expected: u64,
        ms: i64,
    ) -> Result<Decision, TransitionError> {
        machine::decide(&self.state, &cmd, Some(expected), at(ms))
    }

    /// Applies a decision, keeping its state and events.
    fn keep(&mut self, d: Decision) -> Decision {
        self.state = d.state.clone();
        self.events.extend(d.events.iter().cloned());
        d
    }

    fn cmd(&mut self, cmd: Command, ms: i64) -> Decision {
        let d = self
            .try_cmd(cmd.clone(), ms)
            .unwrap_or_else(|e| panic!("{} at {ms} refused: {e}", cmd.name()));
        self.keep(d)
    }

    fn start(&mut self, ms: i64) -> Decision {
        self.cmd(Command::Start, ms)
    }
    fn switch(&mut self, ms: i64) -> Decision {
        self.cmd(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            ms,
        )
    }
    fn switch_to(&mut self, who: &str, ms: i64) -> Decision {
        self.cmd(
            Command::Switch {
                next: Some(pid(who)),
                lag_ms: None,
            },
            ms,
        )
    }
    fn pause(&mut self, ms: i64) -> Decision {
        self.cmd(Command::Pause, ms)
    }
    fn resume(&mut self, ms: i64) -> Decision {
        self.cmd(Command::Resume, ms)
    }
    fn timeout(&mut self, ms: i64) -> Decision {
        self.cmd(Command::Timeout, ms)
    }

    fn view(&self, ms: i64) -> SessionView {
        view(&self.state, at(ms))
    }

    /// One participant as seen at `ms`.
    fn p(&self, who: &str, ms: i64) -> ParticipantView {
        participant(&self.view(ms), who)
    }

    fn deadline(&self) -> Option<i64> {
        next_deadline(&self.state)
    }
}

fn participant(v: &SessionView, who: &str) -> ParticipantView {
    v.participants
        .iter()
        .find(|p| p.participant_id.as_str() == who)
        .unwrap_or_else(|| panic!("no participant {who}"))
        .clone()
}

fn group(v: &SessionView, id: &str) -> kairos_domain::GroupView {
    v.groups
        .iter()
        .find(|g| g.group_id.as_str() == id)
        .unwrap_or_else(|| panic!("no group {id}"))
        .clone()
}

/// (used, remaining, cycle_count, is_active, has_expired) of a participant view.
fn clock(p: &ParticipantView) -> (i64, i64, u32, bool, bool) {
    (
        p.time_used_ms,
        p.time_remaining_ms,
        p.cycle_count,
        p.is_active,
        p.has_expired,
    )
}

/// A compact, comparable summary of an event.
#[derive(Debug, PartialEq)]
struct Ev {
    ty: EventType,
    version: u64,
    who: Option<String>,
    at_ms: i64,
    remaining: Option<i64>,
    elapsed: Option<i64>,
}

fn ev(
    ty: EventType,
    version: u64,
    who: Option<&str>,
    at_ms: i64,
    remaining: Option<i64>,
    elapsed: Option<i64>,
) -> Ev {
    Ev {
        ty,
        version,
        who: who.map(str::to_owned),
        at_ms,
        remaining,
        elapsed,
    }
}

fn summary(events: &[Event]) -> Vec<Ev> {
    events
        .iter()
        .map(|e| Ev {
            ty: e.event_type,
            version: e.version,
            who: e.participant_id.as_ref().map(|p| p.as_str().to_owned()),
            at_ms: e.at_ms,
            remaining: e.time_remaining_ms,
            elapsed: e.time_elapsed_ms,
        })
        .collect()
}

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.event_type).collect()
}

/// The contract's chess example: 5 minutes each, 2 s increment.
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

/// Two players with one minute each and the given timeout action.
fn duel(action: Value, auto_advance: bool) -> Value {
    json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": 60000},
            {"participant_id": "black", "total_time_ms": 60000}
        ],
        "increment_ms": 2000,
        "action_on_timeout": action,
        "auto_advance": auto_advance
    })
}

// ---------------------------------------------------------------------------
// per_participant
// ---------------------------------------------------------------------------

#[test]
fn per_participant_switch_charges_the_mover_adds_the_increment_and_activates_the_next() {
    // Arrange
    let mut sim = Sim::started(chess());

    // Act: white thinks 15 s and presses the clock.
    let d = sim.switch(15_000);

    // Assert
    let v = sim.view(15_000);
    let white = participant(&v, "white");
    assert_eq!(white.total_time_ms, 302_000);
    assert_eq!(white.time_used_ms, 15_000);
    assert_eq!(white.time_remaining_ms, 287_000);
    assert_eq!(clock(&white), (15_000, 287_000, 1, false, false));
    assert_eq!(
        clock(&participant(&v, "black")),
        (0, 300_000, 1, true, false)
    );
    assert_eq!(v.active_participant_id, Some(pid("black")));
    assert_eq!(v.version, 3);
    assert_eq!(v.cycle_started_at_ms, Some(at(15_000)));
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::CycleSwitched,
            3,
            Some("white"),
            at(15_000),
            Some(287_000),
            Some(15_000)
        )]
    );
    assert_eq!(d.events[0].metadata["next_participant_id"], "black");
    assert_eq!(d.expired_participant_id, None);
    // Black's clock runs from the switch; white's bank stays put.
    assert_eq!(
        clock(&sim.p("black", 20_000)),
        (5_000, 295_000, 1, true, false)
    );
    assert_eq!(sim.p("white", 20_000).time_remaining_ms, 287_000);
    assert_eq!(sim.view(20_000).elapsed_ms, 20_000);
    assert_eq!(sim.deadline(), Some(at(315_000)));
}

#[test]
fn per_participant_increment_is_capped_at_max_time_ms() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 300000},
            {"participant_id": "b", "total_time_ms": 300000}
        ],
        "increment_ms": 5000,
        "max_time_ms": 303000
    }));

    // Act
    sim.switch(1_000); // a used 1000: 300000 + 5000 capped at 303000
    sim.switch(3_000); // b used 2000
    sim.switch(4_000); // a used 1000 more; already at the cap

    // Assert
    let v = sim.view(4_000);
    let a = participant(&v, "a");
    let b = participant(&v, "b");
    assert_eq!(
        (a.total_time_ms, a.time_used_ms, a.time_remaining_ms),
        (303_000, 2_000, 301_000)
    );
    assert_eq!(
        (b.total_time_ms, b.time_used_ms, b.time_remaining_ms),
        (303_000, 2_000, 301_000)
    );
}

#[test]
fn per_participant_increment_never_lowers_a_bank_already_above_the_cap() {
    // Arrange: a starts above max_time_ms.
    let mut sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 310000},
            {"participant_id": "b", "total_time_ms": 300000}
        ],
        "increment_ms": 5000,
        "max_time_ms": 305000
    }));

    // Act
    sim.switch(1_000);
    sim.switch(2_000);

    // Assert
    let v = sim.view(2_000);
    assert_eq!(participant(&v, "a").total_time_ms, 310_000);
    assert_eq!(participant(&v, "a").time_remaining_ms, 309_000);
    assert_eq!(participant(&v, "b").total_time_ms, 305_000);
    assert_eq!(participant(&v, "b").time_remaining_ms, 304_000);
}

#[test]
fn per_participant_without_increment_keeps_banks() {
    let mut sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 60000},
            {"participant_id": "b", "total_time_ms": 90000}
        ]
    }));

    sim.switch(10_000);
    sim.switch(30_000);

    let v = sim.view(35_000);
    assert_eq!(
        clock(&participant(&v, "a")),
        (15_000, 45_000, 2, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "b")),
        (20_000, 70_000, 1, false, false)
    );
    assert_eq!(participant(&v, "a").total_time_ms, 60_000);
    assert_eq!(participant(&v, "b").total_time_ms, 90_000);
    // a's deadline: 45000 left at 35000 - 5000 used since 30000 = 80000.
    assert_eq!(sim.deadline(), Some(at(80_000)));
}

// ---------------------------------------------------------------------------
// per_cycle
// ---------------------------------------------------------------------------

fn quiz() -> Value {
    json!({
        "sync_mode": "per_cycle",
        "time_per_cycle_ms": 30000,
        "increment_ms": 5000,
        "participants": [
            {"participant_id": "alice"}, {"participant_id": "bob"}, {"participant_id": "carol"}
        ]
    })
}

#[test]
fn per_cycle_gives_every_cycle_a_fresh_time_per_cycle_ms() {
    // Arrange
    let mut sim = Sim::started(quiz());
    assert_eq!(
        clock(&sim.p("alice", 10_000)),
        (10_000, 20_000, 1, true, false)
    );
    assert_eq!(clock(&sim.p("bob", 10_000)), (0, 30_000, 0, false, false));

    // Act
    sim.switch(10_000);

    // Assert: bob has a full cycle, whatever alice left; increment_ms plays no part.
    let v = sim.view(25_000);
    assert_eq!(
        clock(&participant(&v, "bob")),
        (15_000, 15_000, 1, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "alice")),
        (10_000, 30_000, 1, false, false)
    );
    assert_eq!(
        clock(&participant(&v, "carol")),
        (0, 30_000, 0, false, false)
    );
    assert_eq!(v.cycle_started_at_ms, Some(at(10_000)));
    assert_eq!(v.time_per_cycle_ms, Some(30_000));
    assert_eq!(v.time_remaining_ms, None);
    assert_eq!(sim.deadline(), Some(at(40_000)));
}

#[test]
fn per_cycle_accumulates_time_used_over_cycles() {
    // Arrange
    let mut sim = Sim::started(quiz());

    // Act
    sim.switch(10_000); // alice 10000
    let bob_done = sim.switch(25_000); // bob 15000
    sim.switch(30_000); // carol 5000, alice again

    // Assert
    assert_eq!(
        summary(&bob_done.events),
        [ev(
            EventType::CycleSwitched,
            4,
            Some("bob"),
            at(25_000),
            Some(15_000),
            Some(15_000)
        )]
    );
    let v = sim.view(40_000);
    assert_eq!(
        clock(&participant(&v, "alice")),
        (20_000, 20_000, 2, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "bob")),
        (15_000, 30_000, 1, false, false)
    );
    assert_eq!(
        clock(&participant(&v, "carol")),
        (5_000, 30_000, 1, false, false)
    );
    assert_eq!(v.elapsed_ms, 40_000);
    assert_eq!(sim.deadline(), Some(at(60_000)));
}

#[test]
fn per_cycle_an_ended_session_keeps_what_was_left_of_the_last_cycle() {
    // Arrange
    let completed = {
        let mut sim = Sim::started(quiz());
        sim.switch(10_000);
        sim.cmd(Command::Complete, 22_000);
        sim
    };
    let expired = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}]
    }));

    // Act
    let done = completed.view(50_000);
    let before = expired.view(9_999);
    let after = expired.view(10_001);

    // Assert: the stopped clock reads what it read when it stopped.
    assert_eq!(
        clock(&participant(&done, "bob")),
        (12_000, 18_000, 1, true, false)
    );
    assert_eq!(
        clock(&participant(&done, "alice")),
        (10_000, 30_000, 1, false, false)
    );
    assert_eq!(
        summary(&completed.events[completed.events.len() - 1..]),
        [ev(
            EventType::SessionCompleted,
            4,
            Some("bob"),
            at(22_000),
            Some(18_000),
            None
        )]
    );
    assert_eq!(
        clock(&participant(&before, "a")),
        (9_999, 1, 1, true, false)
    );
    assert_eq!(after.status, Status::Expired);
    assert_eq!(
        clock(&participant(&after, "a")),
        (10_000, 0, 1, true, false)
    );
}

// ---------------------------------------------------------------------------
// per_group
// ---------------------------------------------------------------------------

fn teams() -> Value {
    json!({
        "sync_mode": "per_group",
        "groups": [
            {"group_id": "red", "total_time_ms": 600000},
            {"group_id": "blue", "total_time_ms": 600000}
        ],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"},
            {"participant_id": "r2", "group_id": "red"}
        ],
        "increment_ms": 1000
    })
}

#[test]
fn per_group_charges_the_group_bank_adds_the_increment_and_rotates_groups_and_members() {
    // Arrange
    let mut sim = Sim::started(teams());
    assert_eq!(sim.view(0).active_participant_id, Some(pid("r1")));

    // Act
    sim.switch(10_000); // red (r1) 10000 -> blue (b1)
    sim.switch(25_000); // blue (b1) 15000 -> red, next member r2
    sim.switch(30_000); // red (r2) 5000 -> blue (b1)
    let last = sim.switch(32_000); // blue (b1) 2000 -> red, back to r1

    // Assert
    let v = sim.view(40_000);
    let red = group(&v, "red");
    let blue = group(&v, "blue");
    assert_eq!(
        (
            red.total_time_ms,
            red.time_used_ms,
            red.time_remaining_ms,
            red.is_active
        ),
        (602_000, 23_000, 579_000, true)
    );
    assert_eq!(
        (
            blue.total_time_ms,
            blue.time_used_ms,
            blue.time_remaining_ms,
            blue.is_active
        ),
        (602_000, 17_000, 585_000, false)
    );
    assert_eq!(v.active_group_id.as_ref().map(|g| g.as_str()), Some("red"));
    assert_eq!(v.active_participant_id, Some(pid("r1")));
    // Members' bank and remaining time are their group's.
    assert_eq!(participant(&v, "r1").total_time_ms, 602_000);
    assert_eq!(participant(&v, "b1").total_time_ms, 602_000);
    assert_eq!(
        clock(&participant(&v, "r1")),
        (18_000, 579_000, 2, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "r2")),
        (5_000, 579_000, 1, false, false)
    );
    assert_eq!(
        clock(&participant(&v, "b1")),
        (17_000, 585_000, 2, false, false)
    );
    assert_eq!(
        summary(&last.events),
        [ev(
            EventType::CycleSwitched,
            6,
            Some("b1"),
            at(32_000),
            Some(585_000),
            Some(2_000)
        )]
    );
    assert_eq!(
        last.events[0].group_id.as_ref().map(|g| g.as_str()),
        Some("blue")
    );
    // Red's deadline: 579000 left at 40000, running since 32000.
    assert_eq!(sim.deadline(), Some(at(32_000 + 587_000)));
}

#[test]
fn per_group_members_take_turns_round_robin_inside_one_group() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [{"group_id": "team", "total_time_ms": 60000}],
        "participants": [
            {"participant_id": "a", "group_id": "team"},
            {"participant_id": "b", "group_id": "team"},
            {"participant_id": "c", "group_id": "team"}
        ]
    }));

    // Act
    let order: Vec<String> = (1..=4)
        .map(|k| {
            sim.switch(k * 1_000);
            sim.view(k * 1_000)
                .active_participant_id
                .expect("someone is active")
                .to_string()
        })
        .collect();

    // Assert
    assert_eq!(order, ["b", "c", "a", "b"]);
    let v = sim.view(4_000);
    assert_eq!(group(&v, "team").time_used_ms, 4_000);
    assert_eq!(group(&v, "team").time_remaining_ms, 56_000);
    assert_eq!(participant(&v, "a").cycle_count, 2);
    assert_eq!(participant(&v, "b").cycle_count, 2);
    assert_eq!(participant(&v, "c").cycle_count, 1);
}

// ---------------------------------------------------------------------------
// global
// ---------------------------------------------------------------------------

#[test]
fn global_switch_rotates_the_speaker_without_touching_the_countdown() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "global",
        "total_time_ms": 600000,
        "increment_ms": 2000,
        "participants": [{"participant_id": "alice"}, {"participant_id": "bob"}]
    }));
    assert_eq!(sim.deadline(), Some(at(600_000)));

    // Act
    sim.switch(10_000);
    let to_alice = sim.switch(25_000);

    // Assert
    assert_eq!(sim.deadline(), Some(at(600_000)));
    let v = sim.view(30_000);
    assert_eq!(v.time_remaining_ms, Some(570_000));
    assert_eq!(v.elapsed_ms, 30_000);
    assert_eq!(v.total_time_ms, Some(600_000));
    assert_eq!(
        clock(&participant(&v, "alice")),
        (15_000, 570_000, 2, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "bob")),
        (15_000, 570_000, 1, false, false)
    );
    assert_eq!(
        summary(&to_alice.events),
        [ev(
            EventType::CycleSwitched,
            4,
            Some("bob"),
            at(25_000),
            Some(575_000),
            Some(15_000)
        )]
    );
}

#[test]
fn global_without_participants_runs_and_switches() {
    // Arrange
    let mut sim = Sim::started(json!({"sync_mode": "global", "total_time_ms": 600000}));

    // Act
    let d = sim.switch(1_000);

    // Assert
    assert_eq!(d.state.version, 3);
    let v = sim.view(5_000);
    assert_eq!(v.status, Status::Running);
    assert_eq!(v.active_participant_id, None);
    assert_eq!(v.time_remaining_ms, Some(595_000));
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::CycleSwitched,
            3,
            None,
            at(1_000),
            None,
            Some(1_000)
        )]
    );
}

// ---------------------------------------------------------------------------
// count_up
// ---------------------------------------------------------------------------

#[test]
fn count_up_switch_records_laps_and_the_stopwatch_keeps_running() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "count_up",
        "participants": [{"participant_id": "r1"}, {"participant_id": "r2"}]
    }));

    // Act
    sim.switch(12_000);
    let lap = sim.switch(30_000);

    // Assert
    assert_eq!(
        summary(&lap.events),
        [ev(
            EventType::CycleSwitched,
            4,
            Some("r2"),
            at(30_000),
            None,
            Some(18_000)
        )]
    );
    let v = sim.view(35_000);
    assert_eq!(v.elapsed_ms, 35_000);
    assert_eq!(v.time_remaining_ms, None);
    assert_eq!(clock(&participant(&v, "r1")), (17_000, 0, 2, true, false));
    assert_eq!(clock(&participant(&v, "r2")), (18_000, 0, 1, false, false));
    // No limit: no deadline, it runs on.
    assert_eq!(sim.deadline(), None);
    let later = sim.view(100_000_000);
    assert_eq!(later.status, Status::Running);
    assert_eq!(later.elapsed_ms, 100_000_000);
}

#[test]
fn count_up_stops_at_max_time_ms() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "count_up",
        "max_time_ms": 60000,
        "participants": [{"participant_id": "r1"}, {"participant_id": "r2"}]
    }));
    sim.switch(20_000);
    assert_eq!(sim.p("r2", 45_000).time_remaining_ms, 15_000);
    assert_eq!(sim.deadline(), Some(at(60_000)));

    // Act: nobody acts; a read long after the limit.
    let v = sim.view(70_000);

    // Assert
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.version, 4);
    assert_eq!(v.elapsed_ms, 60_000);
    assert_eq!(v.session_completed_at_ms, Some(at(60_000)));
    assert_eq!(clock(&participant(&v, "r1")), (20_000, 0, 1, false, false));
    assert_eq!(clock(&participant(&v, "r2")), (40_000, 0, 1, true, false));
    let d = sim.timeout(70_000);
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::SessionExpired,
            4,
            Some("r2"),
            at(60_000),
            Some(0),
            Some(40_000)
        )]
    );
    assert_eq!(d.fired_deadlines, [at(60_000)]);
}

#[test]
fn count_up_without_participants_is_a_plain_stopwatch() {
    let mut sim = Sim::started(json!({"sync_mode": "count_up", "max_time_ms": 10000}));

    sim.pause(4_000);
    sim.resume(9_000);

    let v = sim.view(12_000);
    assert_eq!((v.status, v.elapsed_ms), (Status::Running, 7_000));
    let v = sim.view(20_000);
    assert_eq!((v.status, v.elapsed_ms), (Status::Expired, 10_000));
    assert_eq!(v.session_completed_at_ms, Some(at(15_000)));
}

// ---------------------------------------------------------------------------
// next_participant_id
// ---------------------------------------------------------------------------

fn trio(action: &str, bank_a: i64) -> Value {
    json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": bank_a},
            {"participant_id": "b", "total_time_ms": 300000},
            {"participant_id": "c", "total_time_ms": 300000}
        ],
        "action_on_timeout": {"type": action},
        "auto_advance": true
    })
}

#[test]
fn next_participant_id_names_who_plays_next_and_rotation_continues_from_there() {
    // Arrange
    let mut sim = Sim::started(trio("end_session", 300_000));

    // Act
    sim.switch_to("c", 1_000);
    let after_c = sim.view(1_000);
    sim.switch(2_000);

    // Assert
    assert_eq!(after_c.active_participant_id, Some(pid("c")));
    assert_eq!(participant(&after_c, "b").cycle_count, 0);
    assert_eq!(sim.view(2_000).active_participant_id, Some(pid("a")));
    assert_eq!(sim.p("a", 2_000).cycle_count, 2);
}

#[test]
fn next_participant_id_unknown_is_refused_and_changes_nothing() {
    // Arrange
    let sim = Sim::started(trio("end_session", 300_000));

    // Act
    let r = sim.try_cmd(
        Command::Switch {
            next: Some(pid("zed")),
            lag_ms: None,
        },
        1_000,
    );

    // Assert
    assert_eq!(r, Err(TransitionError::UnknownParticipant(pid("zed"))));
    assert_eq!(sim.state.version, 2);
}

#[test]
fn next_participant_id_of_an_expired_participant_is_refused_and_rotation_skips_them() {
    // Arrange: a's minute ran out and was committed; b took over at 60000.
    let mut sim = Sim::started(trio("skip_cycle", 60_000));
    sim.timeout(60_000);

    // Act
    let r = sim.try_cmd(
        Command::Switch {
            next: Some(pid("a")),
            lag_ms: None,
        },
        70_000,
    );
    sim.switch(80_000);
    sim.switch(90_000);

    // Assert
    assert_eq!(r, Err(TransitionError::ParticipantExpired(pid("a"))));
    assert_eq!(sim.view(90_000).active_participant_id, Some(pid("b")));
    assert_eq!(sim.p("a", 90_000).cycle_count, 1);
    assert_eq!(sim.p("b", 90_000).cycle_count, 2);
}

#[test]
fn next_participant_id_in_an_expired_group_is_refused() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [
            {"group_id": "red", "total_time_ms": 10000},
            {"group_id": "blue", "total_time_ms": 60000}
        ],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "r2", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));
    sim.timeout(10_000);

    // Act: r2 never played, but red's bank is gone.
    let r = sim.try_cmd(
        Command::Switch {
            next: Some(pid("r2")),
            lag_ms: None,
        },
        12_000,
    );

    // Assert
    assert_eq!(r, Err(TransitionError::ParticipantExpired(pid("r2"))));
}

// ---------------------------------------------------------------------------
// Status transitions
// ---------------------------------------------------------------------------

/// A session in `status`, and the offset (ms) at which it was last changed.
fn session_in(status: Status) -> (Sim, i64) {
    let mut sim = Sim::new(chess());
    let last = match status {
        Status::Pending => 0,
        Status::Running => {
            sim.start(0);
            0
        }
        Status::Paused => {
            sim.start(0);
            sim.pause(1_000);
            1_000
        }
        Status::Completed => {
            sim.start(0);
            sim.cmd(Command::Complete, 1_000);
            1_000
        }
        Status::Cancelled => {
            sim.start(0);
            sim.cmd(Command::Cancel, 1_000);
            1_000
        }
        Status::Expired => {
            sim.start(0);
            sim.timeout(300_000);
            300_000
        }
    };
    assert_eq!(sim.state.status, status);
    (sim, last)
}

#[test]
fn every_command_in_every_status_is_allowed_or_an_invalid_transition() {
    use Status::*;
    let commands = [
        Command::Start,
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        Command::Pause,
        Command::Resume,
        Command::Complete,
        Command::Cancel,
    ];
    // The status each command leads to, or None where it is refused.
    let table: [(Status, [Option<Status>; 6]); 6] = [
        (
            Pending,
            [
                Some(Running),
                None,
                None,
                None,
                Some(Completed),
                Some(Cancelled),
            ],
        ),
        (
            Running,
            [
                None,
                Some(Running),
                Some(Paused),
                None,
                Some(Completed),
                Some(Cancelled),
            ],
        ),
        (
            Paused,
            [
                None,
                None,
                None,
                Some(Running),
                Some(Completed),
                Some(Cancelled),
            ],
        ),
        (Completed, [None; 6]),
        (Cancelled, [None; 6]),
        (Expired, [None; 6]),
    ];
    for (status, outcomes) in table {
        for (command, outcome) in commands.iter().zip(outcomes) {
            // Arrange
            let (sim, last) = session_in(status);
            let version = sim.state.version;

            // Act
            let r = sim.try_cmd(command.clone(), last + 1_000);

            // Assert
            match outcome {
                Some(next) => {
                    let d = r.unwrap_or_else(|e| panic!("{} in {status:?}: {e}", command.name()));
                    assert_eq!(d.state.status, next, "{} in {status:?}", command.name());
                    assert_eq!(
                        d.state.version,
                        version + 1,
                        "{} in {status:?}",
                        command.name()
                    );
                    assert_eq!(d.events.len(), 1);
                }
                None => assert_eq!(
                    r,
                    Err(TransitionError::InvalidTransition {
                        status,
                        command: command.name()
                    }),
                    "{} in {status:?}",
                    command.name()
                ),
            }
        }
    }
}

#[test]
fn timeout_command_with_nothing_due_is_refused_in_every_status() {
    for status in [
        Status::Pending,
        Status::Running,
        Status::Paused,
        Status::Completed,
        Status::Cancelled,
        Status::Expired,
    ] {
        let (sim, last) = session_in(status);
        assert_eq!(
            sim.try_cmd(Command::Timeout, last + 1_000),
            Err(TransitionError::NothingDue),
            "{status:?}"
        );
    }
}

#[test]
fn complete_and_cancel_stop_the_clock_where_it_stands() {
    // Arrange
    let (running, _) = session_in(Status::Running);
    let pending = Sim::new(chess());

    // Act
    let completed = running
        .try_cmd(Command::Complete, 40_000)
        .expect("complete");
    let cancelled = pending.try_cmd(Command::Cancel, 5_000).expect("cancel");

    // Assert
    let v = view(&completed.state, at(90_000));
    assert_eq!(v.status, Status::Completed);
    assert_eq!(v.session_completed_at_ms, Some(at(40_000)));
    assert_eq!(v.elapsed_ms, 40_000);
    assert_eq!(
        clock(&participant(&v, "white")),
        (40_000, 260_000, 1, true, false)
    );
    assert_eq!(next_deadline(&completed.state), None);
    assert_eq!(
        summary(&completed.events),
        [ev(
            EventType::SessionCompleted,
            3,
            Some("white"),
            at(40_000),
            Some(260_000),
            None
        )]
    );

    let v = view(&cancelled.state, at(9_000));
    assert_eq!(v.status, Status::Cancelled);
    assert_eq!(v.session_completed_at_ms, Some(at(5_000)));
    assert_eq!(v.session_started_at_ms, None);
    assert_eq!(v.elapsed_ms, 0);
    assert_eq!(types(&cancelled.events), [EventType::SessionCancelled]);
}

// ---------------------------------------------------------------------------
// Pause and resume
// ---------------------------------------------------------------------------

#[test]
fn paused_time_counts_neither_in_elapsed_nor_against_a_bank() {
    // Arrange
    let mut sim = Sim::started(chess());

    // Act
    let paused = sim.pause(10_000);
    let while_paused = sim.view(30_000);
    let deadline_while_paused = sim.deadline();
    let resumed = sim.resume(50_000);
    let deadline_after_resume = sim.deadline();
    sim.switch(55_000);

    // Assert
    assert_eq!(while_paused.status, Status::Paused);
    assert_eq!(while_paused.elapsed_ms, 10_000);
    assert_eq!(
        clock(&participant(&while_paused, "white")),
        (10_000, 290_000, 1, true, false)
    );
    assert_eq!(deadline_while_paused, None);
    assert_eq!(deadline_after_resume, Some(at(340_000)));
    assert_eq!(
        summary(&paused.events),
        [ev(
            EventType::SessionPaused,
            3,
            Some("white"),
            at(10_000),
            Some(290_000),
            None
        )]
    );
    assert_eq!(
        summary(&resumed.events),
        [ev(
            EventType::SessionResumed,
            4,
            Some("white"),
            at(50_000),
            Some(290_000),
            None
        )]
    );
    let v = sim.view(60_000);
    let white = participant(&v, "white");
    assert_eq!(
        (
            white.total_time_ms,
            white.time_used_ms,
            white.time_remaining_ms
        ),
        (302_000, 15_000, 287_000)
    );
    assert_eq!(
        clock(&participant(&v, "black")),
        (5_000, 295_000, 1, true, false)
    );
    assert_eq!(v.elapsed_ms, 20_000);
}

#[test]
fn global_countdown_and_count_up_stopwatch_stand_still_while_paused() {
    // Arrange
    let mut global = Sim::started(json!({"sync_mode": "global", "total_time_ms": 60000}));
    let mut stopwatch = Sim::started(json!({"sync_mode": "count_up"}));

    // Act
    for sim in [&mut global, &mut stopwatch] {
        sim.pause(10_000);
        sim.resume(40_000);
    }

    // Assert
    assert_eq!(global.deadline(), Some(at(90_000)));
    assert_eq!(global.view(89_999).time_remaining_ms, Some(1));
    let v = global.view(95_000);
    assert_eq!(
        (v.status, v.elapsed_ms, v.time_remaining_ms),
        (Status::Expired, 60_000, Some(0))
    );
    assert_eq!(v.session_completed_at_ms, Some(at(90_000)));
    assert_eq!(stopwatch.view(45_000).elapsed_ms, 15_000);
}

// ---------------------------------------------------------------------------
// Timeouts: end_session
// ---------------------------------------------------------------------------

#[test]
fn end_session_per_participant_expires_the_session_at_the_deadline() {
    // Arrange
    let sim = Sim::started(duel(json!({"type": "end_session"}), false));

    // Act: a read after the deadline, no worker ran.
    let v = sim.view(61_000);
    let d = sim.try_cmd(Command::Timeout, 61_000).expect("due");

    // Assert
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.version, 3);
    assert_eq!(v.session_completed_at_ms, Some(at(60_000)));
    assert_eq!(v.updated_at_ms, at(60_000));
    assert_eq!(v.elapsed_ms, 60_000);
    let white = participant(&v, "white");
    assert_eq!(
        (
            white.time_used_ms,
            white.time_remaining_ms,
            white.has_expired
        ),
        (60_000, 0, true)
    );
    assert_eq!(white.total_time_ms, 60_000);
    assert_eq!(
        clock(&participant(&v, "black")),
        (0, 60_000, 0, false, false)
    );
    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::ParticipantExpired,
                3,
                Some("white"),
                at(60_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::SessionExpired,
                3,
                Some("white"),
                at(60_000),
                None,
                None
            ),
        ]
    );
    assert!(d.events.iter().all(|e| e.action.is_none()));
    assert_eq!(
        d.events[0].metadata["action_on_timeout"],
        json!({"type": "end_session"})
    );
    assert_eq!(d.fired_deadlines, [at(60_000)]);
    assert_eq!(d.intermediate, Vec::<Session>::new());
    assert_eq!(d.expired_participant_id, Some(pid("white")));
    // The stored result equals what the read showed, and the clock stays stopped.
    assert_eq!(view(&d.state, at(61_000)), v);
    assert_eq!(view(&d.state, at(500_000)).elapsed_ms, 60_000);
    assert_eq!(next_deadline(&d.state), None);
}

#[test]
fn end_session_is_the_default_timeout_action() {
    let sim = Sim::started(chess());
    let v = sim.view(400_000);
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.session_completed_at_ms, Some(at(300_000)));
    assert_eq!(
        v.action_on_timeout.to_json(),
        json!({"type": "end_session"})
    );
}

#[test]
fn end_session_per_cycle_emits_cycle_timeout_then_session_expired() {
    let sim = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}]
    }));

    let d = sim.try_cmd(Command::Timeout, 15_000).expect("due");

    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::CycleTimeout,
                3,
                Some("a"),
                at(10_000),
                Some(0),
                Some(10_000)
            ),
            ev(
                EventType::SessionExpired,
                3,
                Some("a"),
                at(10_000),
                None,
                None
            ),
        ]
    );
    let v = view(&d.state, at(15_000));
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.session_completed_at_ms, Some(at(10_000)));
    // A cycle timeout does not take the participant out of the rotation.
    assert_eq!(clock(&participant(&v, "a")), (10_000, 0, 1, true, false));
}

#[test]
fn end_session_per_group_expires_the_group_and_the_session() {
    let sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [{"group_id": "red", "total_time_ms": 10000}, {"group_id": "blue", "total_time_ms": 10000}],
        "participants": [{"participant_id": "r1", "group_id": "red"}, {"participant_id": "b1", "group_id": "blue"}]
    }));

    let d = sim.try_cmd(Command::Timeout, 12_000).expect("due");

    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::ParticipantExpired,
                3,
                Some("r1"),
                at(10_000),
                Some(0),
                Some(10_000)
            ),
            ev(
                EventType::SessionExpired,
                3,
                Some("r1"),
                at(10_000),
                None,
                None
            ),
        ]
    );
    assert_eq!(
        d.events[0].group_id.as_ref().map(|g| g.as_str()),
        Some("red")
    );
    let v = view(&d.state, at(12_000));
    assert_eq!(v.status, Status::Expired);
    let red = group(&v, "red");
    assert_eq!(
        (red.time_used_ms, red.time_remaining_ms, red.has_expired),
        (10_000, 0, true)
    );
    assert!(!group(&v, "blue").has_expired);
}

#[test]
fn end_session_global_expires_when_the_countdown_reaches_zero() {
    let sim = Sim::started(json!({
        "sync_mode": "global", "total_time_ms": 10000,
        "participants": [{"participant_id": "alice"}]
    }));

    let d = sim
        .try_cmd(Command::Timeout, 10_000)
        .expect("due exactly at the deadline");

    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::SessionExpired,
            3,
            Some("alice"),
            at(10_000),
            Some(0),
            Some(10_000)
        )]
    );
    let v = view(&d.state, at(11_000));
    assert_eq!(
        (v.status, v.time_remaining_ms, v.elapsed_ms),
        (Status::Expired, Some(0), 10_000)
    );
    assert_eq!(participant(&v, "alice").time_used_ms, 10_000);
}

#[test]
fn nothing_is_due_one_millisecond_before_the_deadline() {
    let sim = Sim::started(duel(json!({"type": "end_session"}), false));
    assert_eq!(
        sim.try_cmd(Command::Timeout, 59_999),
        Err(TransitionError::NothingDue)
    );
    let v = sim.view(59_999);
    assert_eq!(
        (v.status, participant(&v, "white").time_remaining_ms),
        (Status::Running, 1)
    );
}

// ---------------------------------------------------------------------------
// Timeouts: skip_cycle
// ---------------------------------------------------------------------------

#[test]
fn skip_cycle_with_auto_advance_starts_the_next_cycle_at_the_deadline() {
    // Arrange
    let sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 60000},
            {"participant_id": "b", "total_time_ms": 60000},
            {"participant_id": "c", "total_time_ms": 60000}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));

    // Act
    let v = sim.view(70_000);

    // Assert: a used exactly the bank; b has been running since 60000.
    assert_eq!((v.status, v.version), (Status::Running, 3));
    assert_eq!(v.active_participant_id, Some(pid("b")));
    assert_eq!(v.cycle_started_at_ms, Some(at(60_000)));
    assert_eq!(clock(&participant(&v, "a")), (60_000, 0, 1, false, true));
    assert_eq!(
        clock(&participant(&v, "b")),
        (10_000, 50_000, 1, true, false)
    );
    assert_eq!(clock(&participant(&v, "c")), (0, 60_000, 0, false, false));
}

#[test]
fn skip_cycle_ends_the_session_when_none_is_eligible() {
    // Arrange
    let sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "a", "total_time_ms": 60000},
            {"participant_id": "b", "total_time_ms": 60000},
            {"participant_id": "c", "total_time_ms": 60000}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));

    // Act
    let d = sim.try_cmd(Command::Timeout, 200_000).expect("due");

    // Assert
    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::ParticipantExpired,
                3,
                Some("a"),
                at(60_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::ParticipantExpired,
                4,
                Some("b"),
                at(120_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::ParticipantExpired,
                5,
                Some("c"),
                at(180_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::SessionExpired,
                5,
                Some("c"),
                at(180_000),
                None,
                None
            ),
        ]
    );
    assert_eq!(d.fired_deadlines, [at(60_000), at(120_000), at(180_000)]);
    let versions: Vec<u64> = d.intermediate.iter().map(|s| s.version).collect();
    assert_eq!(versions, [3, 4]);
    assert_eq!(d.expired_participant_id, Some(pid("a")));
    let v = view(&d.state, at(200_000));
    assert_eq!(v, sim.view(200_000));
    assert_eq!((v.status, v.version), (Status::Expired, 5));
    assert_eq!(v.session_completed_at_ms, Some(at(180_000)));
    assert_eq!(v.elapsed_ms, 180_000);
    assert!(
        v.participants
            .iter()
            .all(|p| p.has_expired && p.time_used_ms == 60_000)
    );
}

#[test]
fn skip_cycle_with_a_single_participant_expires_the_session() {
    let sim = Sim::started(json!({
        "sync_mode": "per_participant",
        "participants": [{"participant_id": "solo", "total_time_ms": 5000}],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": false
    }));

    let d = sim.try_cmd(Command::Timeout, 9_000).expect("due");

    assert_eq!(
        types(&d.events),
        [EventType::ParticipantExpired, EventType::SessionExpired]
    );
    assert_eq!(d.state.status, Status::Expired);
    assert_eq!(d.state.session_completed_at_ms, Some(at(5_000)));
}

#[test]
fn skip_cycle_without_auto_advance_pauses_with_the_next_participant_active() {
    // Arrange
    let mut sim = Sim::started(duel(json!({"type": "skip_cycle"}), false));

    // Act
    let v = sim.view(90_000);
    let d = sim.timeout(90_000);

    // Assert
    assert_eq!(
        (v.status, v.version, v.elapsed_ms),
        (Status::Paused, 3, 60_000)
    );
    assert_eq!(v.active_participant_id, Some(pid("black")));
    assert_eq!(
        clock(&participant(&v, "black")),
        (0, 60_000, 1, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "white")),
        (60_000, 0, 1, false, true)
    );
    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::ParticipantExpired,
                3,
                Some("white"),
                at(60_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::SessionPaused,
                3,
                Some("black"),
                at(60_000),
                Some(60_000),
                None
            ),
        ]
    );
    assert_eq!(sim.deadline(), None);

    // Act: resume; black's cycle starts then.
    sim.resume(100_000);

    // Assert
    assert_eq!(sim.view(100_000).cycle_started_at_ms, Some(at(100_000)));
    assert_eq!(sim.deadline(), Some(at(160_000)));
    let end = sim.view(170_000);
    assert_eq!(
        (end.status, end.version, end.elapsed_ms),
        (Status::Expired, 5, 120_000)
    );
    assert_eq!(end.session_completed_at_ms, Some(at(160_000)));
}

#[test]
fn skip_cycle_per_cycle_with_auto_advance_rotates_on_every_timeout() {
    // Arrange
    let sim = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));

    // Act
    let v = sim.view(25_000);
    let d = sim.try_cmd(Command::Timeout, 25_000).expect("due");

    // Assert
    assert_eq!((v.status, v.version), (Status::Running, 4));
    assert_eq!(v.active_participant_id, Some(pid("a")));
    assert_eq!(v.cycle_started_at_ms, Some(at(20_000)));
    assert_eq!(
        clock(&participant(&v, "a")),
        (15_000, 5_000, 2, true, false)
    );
    assert_eq!(
        clock(&participant(&v, "b")),
        (10_000, 10_000, 1, false, false)
    );
    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::CycleTimeout,
                3,
                Some("a"),
                at(10_000),
                Some(0),
                Some(10_000)
            ),
            ev(
                EventType::CycleTimeout,
                4,
                Some("b"),
                at(20_000),
                Some(0),
                Some(10_000)
            ),
        ]
    );
    assert_eq!(d.fired_deadlines, [at(10_000), at(20_000)]);
    assert_eq!(d.intermediate.len(), 1);
    assert_eq!(view(&d.state, at(25_000)), v);
    assert_eq!(next_deadline(&d.state), Some(at(30_000)));
}

#[test]
fn skip_cycle_per_cycle_with_one_participant_gives_them_a_new_cycle() {
    let sim = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));

    let v = sim.view(25_000);

    assert_eq!((v.status, v.version), (Status::Running, 4));
    assert_eq!(
        clock(&participant(&v, "a")),
        (25_000, 5_000, 3, true, false)
    );
}

#[test]
fn skip_cycle_per_cycle_without_auto_advance_pauses_on_the_next() {
    let sim = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": false
    }));

    let d = sim.try_cmd(Command::Timeout, 15_000).expect("due");

    assert_eq!(
        summary(&d.events),
        [
            ev(
                EventType::CycleTimeout,
                3,
                Some("a"),
                at(10_000),
                Some(0),
                Some(10_000)
            ),
            ev(
                EventType::SessionPaused,
                3,
                Some("b"),
                at(10_000),
                Some(10_000),
                None
            ),
        ]
    );
    let v = view(&d.state, at(15_000));
    assert_eq!((v.status, v.elapsed_ms), (Status::Paused, 10_000));
    assert_eq!(clock(&participant(&v, "b")), (0, 10_000, 1, true, false));
}

#[test]
fn skip_cycle_per_group_expires_the_whole_group_and_moves_on() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [
            {"group_id": "red", "total_time_ms": 10000},
            {"group_id": "blue", "total_time_ms": 20000}
        ],
        "participants": [
            {"participant_id": "r1", "group_id": "red"},
            {"participant_id": "r2", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"}
        ],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": true
    }));

    // Act
    let v = sim.view(12_000);
    let d = sim.timeout(10_000);
    sim.switch(15_000);

    // Assert: members of the exhausted group are out too, r2 though they never played.
    assert_eq!((v.status, v.version), (Status::Running, 3));
    assert_eq!(v.active_group_id.as_ref().map(|g| g.as_str()), Some("blue"));
    assert_eq!(clock(&participant(&v, "r1")), (10_000, 0, 1, false, true));
    assert_eq!(clock(&participant(&v, "r2")), (0, 0, 0, false, true));
    assert_eq!(
        clock(&participant(&v, "b1")),
        (2_000, 18_000, 1, true, false)
    );
    assert!(group(&v, "red").has_expired);
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::ParticipantExpired,
            3,
            Some("r1"),
            at(10_000),
            Some(0),
            Some(10_000)
        )]
    );
    // Only blue is left: b1 plays again.
    assert_eq!(sim.view(15_000).active_participant_id, Some(pid("b1")));
    assert_eq!(sim.p("b1", 15_000).cycle_count, 2);
    let end = sim.view(40_000);
    assert_eq!((end.status, end.version), (Status::Expired, 5));
    assert_eq!(end.session_completed_at_ms, Some(at(30_000)));
    assert!(group(&end, "blue").has_expired);
}

#[test]
fn skip_cycle_per_group_without_auto_advance_pauses_on_the_next_group() {
    let sim = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [{"group_id": "red", "total_time_ms": 10000}, {"group_id": "blue", "total_time_ms": 20000}],
        "participants": [{"participant_id": "r1", "group_id": "red"}, {"participant_id": "b1", "group_id": "blue"}],
        "action_on_timeout": {"type": "skip_cycle"},
        "auto_advance": false
    }));

    let v = sim.view(50_000);

    assert_eq!((v.status, v.version), (Status::Paused, 3));
    assert_eq!(v.active_group_id.as_ref().map(|g| g.as_str()), Some("blue"));
    assert_eq!(group(&v, "blue").time_remaining_ms, 20_000);
}

#[test]
fn skip_cycle_and_auto_action_act_as_end_session_in_global_and_count_up() {
    for action in [
        json!({"type": "skip_cycle"}),
        json!({"type": "auto_action", "action": "stop"}),
    ] {
        for auto_advance in [true, false] {
            // Arrange
            let global = Sim::started(json!({
                "sync_mode": "global", "total_time_ms": 10000,
                "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
                "action_on_timeout": action, "auto_advance": auto_advance
            }));
            let stopwatch = Sim::started(json!({
                "sync_mode": "count_up", "max_time_ms": 10000,
                "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
                "action_on_timeout": action, "auto_advance": auto_advance
            }));
            let expected_action = action.get("action").and_then(Value::as_str);

            for sim in [global, stopwatch] {
                // Act
                let d = sim.try_cmd(Command::Timeout, 12_000).expect("due");

                // Assert
                assert_eq!(
                    summary(&d.events),
                    [ev(
                        EventType::SessionExpired,
                        3,
                        Some("a"),
                        at(10_000),
                        Some(0),
                        Some(10_000)
                    )]
                );
                assert_eq!(d.events[0].action.as_deref(), expected_action);
                let v = view(&d.state, at(12_000));
                assert_eq!((v.status, v.elapsed_ms), (Status::Expired, 10_000));
                assert_eq!(v.session_completed_at_ms, Some(at(10_000)));
                assert!(v.participants.iter().all(|p| !p.has_expired));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Timeouts: auto_action
// ---------------------------------------------------------------------------

#[test]
fn auto_action_carries_its_action_and_echoes_extra_fields() {
    // Arrange
    let action =
        json!({"type": "auto_action", "action": "fold", "penalty": 5, "notify_participants": true});
    let sim = Sim::started(duel(action.clone(), true));

    // Act
    let d = sim.try_cmd(Command::Timeout, 61_000).expect("due");

    // Assert: as skip_cycle, plus the action.
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::ParticipantExpired,
            3,
            Some("white"),
            at(60_000),
            Some(0),
            Some(60_000)
        )]
    );
    assert_eq!(d.events[0].action.as_deref(), Some("fold"));
    assert_eq!(d.events[0].metadata["action_on_timeout"], action);
    let v = view(&d.state, at(61_000));
    assert_eq!(v.status, Status::Running);
    assert_eq!(v.action_on_timeout.to_json(), action);
    assert_eq!(
        clock(&participant(&v, "black")),
        (1_000, 59_000, 1, true, false)
    );
}

#[test]
fn auto_action_without_auto_advance_pauses_and_without_anyone_left_expires() {
    // Arrange
    let action = json!({"type": "auto_action", "action": "default", "outcome": "loss"});
    let mut sim = Sim::started(duel(action.clone(), false));

    // Act
    let first = sim.timeout(60_000);
    sim.resume(70_000);
    let second = sim.timeout(130_000);

    // Assert
    assert_eq!(
        types(&first.events),
        [EventType::ParticipantExpired, EventType::SessionPaused]
    );
    assert_eq!(first.events[0].action.as_deref(), Some("default"));
    assert_eq!(first.events[1].action, None);
    assert_eq!(
        summary(&second.events),
        [
            ev(
                EventType::ParticipantExpired,
                5,
                Some("black"),
                at(130_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::SessionExpired,
                5,
                Some("black"),
                at(130_000),
                None,
                None
            ),
        ]
    );
    assert!(
        second
            .events
            .iter()
            .all(|e| e.action.as_deref() == Some("default"))
    );
    assert!(
        second
            .events
            .iter()
            .all(|e| e.metadata["action_on_timeout"] == action)
    );
    assert_eq!(sim.state.status, Status::Expired);
}

#[test]
fn auto_action_per_cycle_and_per_group_carry_the_action() {
    let cycle = Sim::started(json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
        "action_on_timeout": {"type": "auto_action", "action": "pass"},
        "auto_advance": true
    }));
    let groups = Sim::started(json!({
        "sync_mode": "per_group",
        "groups": [{"group_id": "red", "total_time_ms": 10000}, {"group_id": "blue", "total_time_ms": 10000}],
        "participants": [{"participant_id": "r1", "group_id": "red"}, {"participant_id": "b1", "group_id": "blue"}],
        "action_on_timeout": {"type": "auto_action", "action": "forfeit"},
        "auto_advance": true
    }));

    let c = cycle.try_cmd(Command::Timeout, 10_000).expect("due");
    let g = groups.try_cmd(Command::Timeout, 10_000).expect("due");

    assert_eq!(types(&c.events), [EventType::CycleTimeout]);
    assert_eq!(c.events[0].action.as_deref(), Some("pass"));
    assert_eq!(c.state.status, Status::Running);
    assert_eq!(types(&g.events), [EventType::ParticipantExpired]);
    assert_eq!(g.events[0].action.as_deref(), Some("forfeit"));
    assert_eq!(
        g.events[0].group_id.as_ref().map(|g| g.as_str()),
        Some("red")
    );
}

#[test]
fn end_session_and_skip_cycle_events_carry_no_action_but_echo_the_object() {
    for ty in ["end_session", "skip_cycle"] {
        let action = json!({"type": ty, "action": "ignored", "penalty": 1});
        let sim = Sim::started(duel(action.clone(), true));

        let d = sim.try_cmd(Command::Timeout, 60_000).expect("due");

        assert!(d.events.iter().all(|e| e.action.is_none()), "{ty}");
        assert_eq!(d.events[0].metadata["action_on_timeout"], action, "{ty}");
    }
}

// ---------------------------------------------------------------------------
// Deadlines applied as of the deadline
// ---------------------------------------------------------------------------

#[test]
fn a_late_switch_is_judged_as_of_the_deadline_no_increment_no_resurrection() {
    // Arrange
    let sim = Sim::started(duel(json!({"type": "end_session"}), false));

    // Act: white presses one second after the flag fell.
    let d = sim
        .try_cmd(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            61_000,
        )
        .expect("applied as a timeout");

    // Assert
    assert_eq!(d.expired_participant_id, Some(pid("white")));
    assert_eq!(d.fired_deadlines, [at(60_000)]);
    assert_eq!(
        types(&d.events),
        [EventType::ParticipantExpired, EventType::SessionExpired]
    );
    let v = view(&d.state, at(61_000));
    assert_eq!((v.status, v.version), (Status::Expired, 3));
    assert_eq!(v.session_completed_at_ms, Some(at(60_000)));
    let white = participant(&v, "white");
    assert_eq!(
        (
            white.total_time_ms,
            white.time_used_ms,
            white.time_remaining_ms,
            white.has_expired
        ),
        (60_000, 60_000, 0, true)
    );
}

#[test]
fn a_switch_exactly_at_the_deadline_finds_the_clock_run_out() {
    let sim = Sim::started(duel(json!({"type": "end_session"}), false));

    let on_flag = sim
        .try_cmd(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            60_000,
        )
        .expect("decided");
    let just_before = sim
        .try_cmd(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            59_999,
        )
        .expect("decided");

    assert_eq!(on_flag.expired_participant_id, Some(pid("white")));
    assert_eq!(on_flag.state.status, Status::Expired);
    assert_eq!(just_before.expired_participant_id, None);
    let white = participant(&view(&just_before.state, at(59_999)), "white");
    assert_eq!(
        (white.total_time_ms, white.time_remaining_ms),
        (62_000, 2_001)
    );
}

#[test]
fn a_late_switch_does_not_end_the_cycle_the_timeout_started() {
    // Arrange: skip_cycle, so black's cycle started at the deadline.
    let sim = Sim::started(duel(json!({"type": "skip_cycle"}), true));

    // Act
    let d = sim
        .try_cmd(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            61_000,
        )
        .expect("decided");

    // Assert
    assert_eq!(d.expired_participant_id, Some(pid("white")));
    assert_eq!(types(&d.events), [EventType::ParticipantExpired]);
    assert_eq!(d.state.version, 3);
    let v = view(&d.state, at(61_000));
    assert_eq!(v.active_participant_id, Some(pid("black")));
    assert_eq!(v.cycle_started_at_ms, Some(at(60_000)));
    let black = participant(&v, "black");
    assert_eq!(
        (black.total_time_ms, black.time_used_ms, black.cycle_count),
        (60_000, 1_000, 1)
    );
    assert_eq!(participant(&v, "white").total_time_ms, 60_000);
}

#[test]
fn a_late_switch_with_expected_version_is_compared_after_the_deadline() {
    // Arrange
    let sim = Sim::started(duel(json!({"type": "skip_cycle"}), true));

    // Act
    let stale = sim.try_versioned(
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        2,
        61_000,
    );
    let fresh = sim
        .try_versioned(
            Command::Switch {
                next: None,
                lag_ms: None,
            },
            3,
            61_000,
        )
        .expect("version 3 after the timeout");

    // Assert
    assert_eq!(
        stale,
        Err(TransitionError::Conflict {
            expected: 2,
            actual: 3
        })
    );
    assert_eq!(fresh.expired_participant_id, Some(pid("white")));
    assert_eq!(
        summary(&fresh.events),
        [
            ev(
                EventType::ParticipantExpired,
                3,
                Some("white"),
                at(60_000),
                Some(0),
                Some(60_000)
            ),
            ev(
                EventType::CycleSwitched,
                4,
                Some("black"),
                at(61_000),
                Some(61_000),
                Some(1_000)
            ),
        ]
    );
    assert_eq!(
        fresh
            .intermediate
            .iter()
            .map(|s| s.version)
            .collect::<Vec<_>>(),
        [3]
    );
    let v = view(&fresh.state, at(61_000));
    assert_eq!(v.version, 4);
    // Black is the only one left, so black plays on with the increment.
    assert_eq!(v.active_participant_id, Some(pid("black")));
    let black = participant(&v, "black");
    assert_eq!(
        (black.total_time_ms, black.time_used_ms, black.cycle_count),
        (62_000, 1_000, 2)
    );
}

#[test]
fn other_commands_after_a_deadline_see_the_state_as_of_the_deadline() {
    let ended = Sim::started(duel(json!({"type": "end_session"}), false));
    let skipped = Sim::started(duel(json!({"type": "skip_cycle"}), true));

    let pause_ended = ended.try_cmd(Command::Pause, 70_000);
    let pause_skipped = skipped
        .try_cmd(Command::Pause, 70_000)
        .expect("black is running");

    assert_eq!(
        pause_ended,
        Err(TransitionError::InvalidTransition {
            status: Status::Expired,
            command: "pause"
        })
    );
    assert_eq!(pause_skipped.expired_participant_id, Some(pid("white")));
    assert_eq!(
        types(&pause_skipped.events),
        [EventType::ParticipantExpired, EventType::SessionPaused]
    );
    assert_eq!(pause_skipped.events[1].version, 4);
    assert_eq!(
        clock(&participant(
            &view(&pause_skipped.state, at(99_000)),
            "black"
        )),
        (10_000, 50_000, 1, true, false)
    );
}

#[test]
fn a_timeout_committed_late_equals_one_committed_on_time() {
    // Arrange
    let config = json!({
        "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
        "action_on_timeout": {"type": "skip_cycle"}, "auto_advance": true
    });
    let mut on_time = Sim::started(config.clone());
    let mut late = Sim::started(config);

    // Act
    on_time.timeout(10_000);
    on_time.timeout(20_000);
    late.timeout(27_000);

    // Assert
    assert_eq!(on_time.state, late.state);
    assert_eq!(on_time.view(29_000), late.view(29_000));
    let at_ms: Vec<i64> = late.events.iter().map(|e| e.at_ms).collect();
    assert_eq!(at_ms, [at(0), at(0), at(10_000), at(20_000)]);
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// A whole chess game, with every event it produced.
fn chess_game() -> Sim {
    let mut sim = Sim::started(chess());
    sim.switch(15_000);
    sim.pause(20_000);
    sim.resume(30_000);
    sim.switch(40_000);
    sim.cmd(Command::Complete, 50_000);
    sim
}

#[test]
fn events_have_types_versions_participants_instants_and_clock_values() {
    // Arrange + Act
    let sim = chess_game();

    // Assert
    assert_eq!(
        summary(&sim.events),
        [
            ev(EventType::SessionCreated, 1, None, at(0), None, None),
            ev(
                EventType::SessionStarted,
                2,
                Some("white"),
                at(0),
                Some(300_000),
                None
            ),
            ev(
                EventType::CycleSwitched,
                3,
                Some("white"),
                at(15_000),
                Some(287_000),
                Some(15_000)
            ),
            ev(
                EventType::SessionPaused,
                4,
                Some("black"),
                at(20_000),
                Some(295_000),
                None
            ),
            ev(
                EventType::SessionResumed,
                5,
                Some("black"),
                at(30_000),
                Some(295_000),
                None
            ),
            // Black's cycle lasted 15 s of running time, the pause excluded.
            ev(
                EventType::CycleSwitched,
                6,
                Some("black"),
                at(40_000),
                Some(287_000),
                Some(15_000)
            ),
            ev(
                EventType::SessionCompleted,
                7,
                Some("white"),
                at(50_000),
                Some(277_000),
                None
            ),
        ]
    );
    assert_eq!(sim.events[0].metadata["sync_mode"], "per_participant");
    assert!(
        sim.events
            .iter()
            .all(|e| e.session_id == sid() && e.group_id.is_none())
    );
    let v = sim.view(60_000);
    assert_eq!(
        (v.status, v.version, v.elapsed_ms),
        (Status::Completed, 7, 40_000)
    );
    assert_eq!(
        clock(&participant(&v, "white")),
        (25_000, 277_000, 2, true, false)
    );
}

#[test]
fn event_ids_are_unique_and_deterministic() {
    // Arrange: a session whose timeouts emit two events in one version.
    let run = || {
        let mut sim = Sim::started(duel(json!({"type": "skip_cycle"}), false));
        sim.timeout(60_000);
        sim.resume(70_000);
        sim.timeout(130_000);
        sim
    };
    let first = run();
    let again = run();

    // Act
    let mut ids: Vec<_> = first.events.iter().map(|e| e.event_id).collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();

    // Assert
    assert_eq!(count, 7);
    assert_eq!(ids.len(), count);
    assert_eq!(first.events, again.events);
    let positions: Vec<(u64, usize)> = first
        .events
        .iter()
        .map(|e| {
            let seq = (0..3)
                .find(|&k| Event::make_id(sid(), at(0), e.version, k, e.at_ms) == e.event_id)
                .expect("an id of (session, created_at, version, position)");
            (e.version, seq)
        })
        .collect();
    assert_eq!(
        positions,
        [(1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (5, 0), (5, 1)]
    );
    // The same session id reused after deletion (another creation instant) gets fresh ids.
    assert_ne!(
        Event::make_id(sid(), at(0), 1, 0, at(5)),
        Event::make_id(sid(), at(1), 1, 0, at(5))
    );
}

// ---------------------------------------------------------------------------
// Optimistic locking
// ---------------------------------------------------------------------------

#[test]
fn expected_version_must_match_for_every_command() {
    let cases: [(Status, Command); 6] = [
        (Status::Pending, Command::Start),
        (
            Status::Running,
            Command::Switch {
                next: None,
                lag_ms: None,
            },
        ),
        (Status::Running, Command::Pause),
        (Status::Paused, Command::Resume),
        (Status::Running, Command::Complete),
        (Status::Paused, Command::Cancel),
    ];
    for (status, command) in cases {
        // Arrange
        let (sim, last) = session_in(status);
        let version = sim.state.version;

        // Act
        let behind = sim.try_versioned(command.clone(), version - 1, last + 1_000);
        let ahead = sim.try_versioned(command.clone(), version + 5, last + 1_000);
        let right = sim.try_versioned(command.clone(), version, last + 1_000);

        // Assert
        assert_eq!(
            behind,
            Err(TransitionError::Conflict {
                expected: version - 1,
                actual: version
            }),
            "{}",
            command.name()
        );
        assert_eq!(
            ahead,
            Err(TransitionError::Conflict {
                expected: version + 5,
                actual: version
            }),
            "{}",
            command.name()
        );
        assert_eq!(right.expect("matching version").state.version, version + 1);
    }
}

#[test]
fn a_conflict_is_reported_before_the_status_check() {
    let (sim, _) = session_in(Status::Completed);
    assert_eq!(
        sim.try_versioned(Command::Pause, 1, 5_000),
        Err(TransitionError::Conflict {
            expected: 1,
            actual: 3
        })
    );
}

// ---------------------------------------------------------------------------
// Saturating arithmetic
// ---------------------------------------------------------------------------

const EXTREMES: [i64; 7] = [
    i64::MIN,
    i64::MIN + 1,
    -86_400_000,
    -1,
    0,
    i64::MAX - 1,
    i64::MAX,
];

fn every_mode() -> Vec<Value> {
    let mut configs = Vec::new();
    for action in ["end_session", "skip_cycle", "auto_action"] {
        for auto_advance in [true, false] {
            let common = json!({"action_on_timeout": {"type": action, "action": "x"}, "auto_advance": auto_advance});
            let modes = [
                json!({"sync_mode": "per_participant", "increment_ms": 3600000, "max_time_ms": 86400000,
                    "participants": [{"participant_id": "a", "total_time_ms": 86400000}, {"participant_id": "b", "total_time_ms": 1000}]}),
                json!({"sync_mode": "per_cycle", "time_per_cycle_ms": 1000,
                    "participants": [{"participant_id": "a"}, {"participant_id": "b"}]}),
                json!({"sync_mode": "per_group", "increment_ms": 3600000,
                    "groups": [{"group_id": "g", "total_time_ms": 86400000}, {"group_id": "h", "total_time_ms": 1000}],
                    "participants": [{"participant_id": "a", "group_id": "g"}, {"participant_id": "b", "group_id": "h"}]}),
                json!({"sync_mode": "global", "total_time_ms": 1000, "participants": [{"participant_id": "a"}]}),
                json!({"sync_mode": "global", "total_time_ms": 86400000}),
                json!({"sync_mode": "count_up", "participants": [{"participant_id": "a"}]}),
                json!({"sync_mode": "count_up", "max_time_ms": 1000}),
            ];
            for mut m in modes {
                let obj = m.as_object_mut().expect("an object");
                for (k, v) in common.as_object().expect("an object") {
                    obj.insert(k.clone(), v.clone());
                }
                configs.push(m);
            }
        }
    }
    configs
}

/// Every duration in a view and in events is at least zero.
fn assert_nothing_negative(v: &SessionView, events: &[Event], context: &str) {
    assert!(v.elapsed_ms >= 0, "{context}: elapsed {}", v.elapsed_ms);
    assert!(v.time_remaining_ms.is_none_or(|t| t >= 0), "{context}");
    for p in &v.participants {
        assert!(
            p.total_time_ms >= 0 && p.time_used_ms >= 0 && p.time_remaining_ms >= 0,
            "{context}: {p:?}"
        );
    }
    for g in &v.groups {
        assert!(
            g.total_time_ms >= 0 && g.time_used_ms >= 0 && g.time_remaining_ms >= 0,
            "{context}: {g:?}"
        );
    }
    for e in events {
        assert!(
            e.time_remaining_ms.is_none_or(|t| t >= 0),
            "{context}: {e:?}"
        );
        assert!(e.time_elapsed_ms.is_none_or(|t| t >= 0), "{context}: {e:?}");
    }
}

/// `per_cycle` with a skipping timeout and `auto_advance` has one deadline per
/// cycle forever: a read across the whole `i64` range runs the catch-up bound
/// (`machine::MAX_CATCH_UP`) every time, so it gets its own test below.
fn catches_up_forever(config: &Value) -> bool {
    config["sync_mode"] == "per_cycle"
        && config["action_on_timeout"]["type"] != "end_session"
        && config["auto_advance"] == true
}

#[test]
fn extreme_instants_never_panic_and_never_go_negative() {
    let commands = [
        Command::Start,
        Command::Switch {
            next: None,
            lag_ms: None,
        },
        Command::Pause,
        Command::Resume,
        Command::Switch {
            next: Some(pid("b")),
            lag_ms: None,
        },
        Command::Timeout,
        Command::Complete,
    ];
    for config in every_mode().iter().filter(|c| !catches_up_forever(c)) {
        for &created in &EXTREMES {
            for shift in 0..EXTREMES.len() {
                // Arrange
                let cfg = SessionConfig::parse(config).expect("valid");
                let (mut state, _) = machine::create(cfg, sid(), None, created);

                // Act: the commands at extreme instants, in every order the
                // rotation gives (forwards, backwards, the same instant twice).
                for (k, command) in commands.iter().enumerate() {
                    let now = EXTREMES[(shift + k) % EXTREMES.len()];
                    let context = format!("{config} created {created} {} at {now}", command.name());
                    if let Ok(d) = machine::decide(&state, command, None, now) {
                        // Assert
                        assert_nothing_negative(&view(&d.state, now), &d.events, &context);
                        assert!(d.state.version > state.version, "{context}");
                        state = d.state;
                    }
                }
                for &read in &EXTREMES {
                    let context =
                        format!("{config} created {created} shift {shift} read at {read}");
                    assert_nothing_negative(&view(&state, read), &[], &context);
                }
            }
        }
    }
}

#[test]
fn endless_cycle_timeouts_across_the_i64_range_stop_at_the_catch_up_bound() {
    // Arrange
    let sim = {
        let cfg = SessionConfig::parse(&json!({
            "sync_mode": "per_cycle", "time_per_cycle_ms": 1000,
            "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
            "action_on_timeout": {"type": "skip_cycle"}, "auto_advance": true
        }))
        .expect("valid");
        let (s, _) = machine::create(cfg, sid(), None, i64::MIN);
        machine::decide(&s, &Command::Start, None, i64::MIN).expect("start")
    };

    // Act
    let v = view(&sim.state, i64::MAX);
    let d = machine::decide(&sim.state, &Command::Timeout, None, i64::MAX).expect("due");

    // Assert
    assert_nothing_negative(&v, &d.events, "per_cycle catch-up");
    assert_eq!(d.fired_deadlines.len(), machine::MAX_CATCH_UP);
    assert_eq!(v.version, 2 + machine::MAX_CATCH_UP as u64);
    assert_eq!(d.state.version, v.version);
    // The rest is applied by the next call, bound by bound.
    assert_eq!(
        view(&d.state, i64::MAX).version,
        2 + 2 * machine::MAX_CATCH_UP as u64
    );
}

#[test]
fn a_session_started_at_the_dawn_of_time_reads_as_expired_at_the_end_of_time() {
    // Arrange
    let cfg = SessionConfig::parse(&chess()).expect("valid");
    let (created, _) = machine::create(cfg, sid(), None, i64::MIN);
    let started = machine::decide(&created, &Command::Start, None, i64::MIN).expect("start");

    // Act
    let end = view(&started.state, i64::MAX);
    let before = view(&started.state, i64::MIN);

    // Assert
    assert_eq!(end.status, Status::Expired);
    assert_eq!(end.session_completed_at_ms, Some(i64::MIN + 300_000));
    assert_eq!(end.elapsed_ms, 300_000);
    assert_eq!(
        clock(&participant(&end, "white")),
        (300_000, 0, 1, true, true)
    );
    assert_eq!(before.status, Status::Running);
    assert_eq!(
        clock(&participant(&before, "white")),
        (0, 300_000, 1, true, false)
    );
}

#[test]
fn a_deadline_beyond_the_end_of_time_never_comes() {
    // Arrange: white's 300 s would run out after i64::MAX.
    let cfg = SessionConfig::parse(&chess()).expect("valid");
    let (created, _) = machine::create(cfg, sid(), None, i64::MAX - 1_000);
    let started = machine::decide(&created, &Command::Start, None, i64::MAX - 1_000)
        .expect("start")
        .state;

    // Act
    let v = view(&started, i64::MAX);

    // Assert: no timeout before the bank is used up, so none at all.
    assert_eq!(next_deadline(&started), None);
    assert_eq!(
        machine::decide(&started, &Command::Timeout, None, i64::MAX),
        Err(TransitionError::NothingDue)
    );
    assert_eq!(v.status, Status::Running);
    assert_eq!(
        clock(&participant(&v, "white")),
        (1_000, 299_000, 1, true, false)
    );
}

#[test]
fn a_stopwatch_across_the_whole_i64_range_saturates() {
    // Arrange
    let cfg = SessionConfig::parse(
        &json!({"sync_mode": "count_up", "participants": [{"participant_id": "a"}]}),
    )
    .expect("valid");
    let (created, _) = machine::create(cfg, sid(), None, i64::MIN);
    let started = machine::decide(&created, &Command::Start, None, i64::MIN).expect("start");

    // Act
    let v = view(&started.state, i64::MAX);
    let lap = machine::decide(
        &started.state,
        &Command::Switch {
            next: None,
            lag_ms: None,
        },
        None,
        i64::MAX,
    )
    .expect("lap");

    // Assert
    assert_eq!(v.elapsed_ms, i64::MAX);
    assert_eq!(participant(&v, "a").time_used_ms, i64::MAX);
    assert_eq!(lap.events[0].time_elapsed_ms, Some(i64::MAX));
    let after = view(&lap.state, i64::MAX);
    assert_eq!(
        (after.elapsed_ms, participant(&after, "a").time_used_ms),
        (i64::MAX, i64::MAX)
    );
}

#[test]
fn a_clock_that_steps_back_never_yields_negative_durations() {
    // Arrange
    let mut sim = Sim::started(chess());
    sim.switch(10_000);

    // Act: a read and a command from before the last change.
    let v = sim.view(5_000);
    let d = sim.switch(2_000);

    // Assert: the command takes effect at the last change, not before it.
    assert_eq!(
        clock(&participant(&v, "black")),
        (0, 300_000, 1, true, false)
    );
    assert_eq!(
        summary(&d.events),
        [ev(
            EventType::CycleSwitched,
            4,
            Some("black"),
            at(10_000),
            Some(302_000),
            Some(0)
        )]
    );
}

// ---------------------------------------------------------------------------
// SessionService over mocks
// ---------------------------------------------------------------------------

mod service {
    use std::sync::{Arc, Mutex};

    use kairos_domain::machine::{self, next_deadline};
    use kairos_domain::{
        Actor, AuditError, BusMessage, Claimed, Command, EncodedMessage, Event, EventType,
        MockAuditSink, MockClock, MockEventBus, MockSessionStore, Role, ServiceError, Session,
        SessionConfig, SessionService, Status, StoreError, TransitionError,
    };
    use mockall::Sequence;
    use serde_json::json;

    use super::{at, chess, pid, sid};

    type Service = SessionService<MockSessionStore, MockEventBus, MockClock>;

    fn host() -> Actor {
        Actor {
            sub: Some("host-1".into()),
            role: Role::Host,
            sid: None,
            pid: None,
        }
    }

    fn viewer() -> Actor {
        Actor {
            sub: Some("viewer-1".into()),
            role: Role::Viewer,
            sid: None,
            pid: None,
        }
    }

    fn player(who: &str) -> Actor {
        Actor {
            sub: Some(format!("p-{who}")),
            role: Role::Player,
            sid: None,
            pid: Some(pid(who)),
        }
    }

    /// The chess session owned by `host-1`, created and started at `at(0)`.
    fn running_chess() -> Session {
        let cfg = SessionConfig::parse(&chess()).expect("valid");
        let (s, _) = machine::create(cfg, sid(), Some("host-1".into()), at(0));
        machine::decide(&s, &Command::Start, None, at(0))
            .expect("start")
            .state
    }

    fn clock_at(ms: i64) -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now_ms().return_const(at(ms));
        clock
    }

    /// A bus that records every message.
    fn recording_bus() -> (MockEventBus, Arc<Mutex<Vec<BusMessage>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut bus = MockEventBus::new();
        let sink = log.clone();
        bus.expect_publish()
            .returning(move |m| sink.lock().expect("lock").push(m));
        (bus, log)
    }

    fn service(mut store: MockSessionStore, bus: MockEventBus, clock: MockClock) -> Service {
        store.expect_publishes_commits().return_const(false);
        SessionService::new(Arc::new(store), Arc::new(bus), Arc::new(clock))
    }

    /// A bus whose `encode_update` writes `version:event types@at` as the
    /// payload on channel `ch:<session>` (so a test reads what was encoded),
    /// and which nobody may `publish` on.
    fn encoding_bus() -> MockEventBus {
        let mut bus = MockEventBus::new();
        bus.expect_encode_update()
            .returning(|state, events, at_ms| {
                let types: Vec<String> = events
                    .iter()
                    .map(|e| format!("{:?}", e.event_type))
                    .collect();
                Some(EncodedMessage {
                    channel: format!("ch:{}", state.id),
                    payload: format!("{}:{}@{at_ms}", state.version, types.join(",")).into_bytes(),
                })
            });
        bus.expect_publish().never();
        bus
    }

    /// (version, event types) of every `Updated` message.
    fn published(log: &Mutex<Vec<BusMessage>>) -> Vec<(u64, Vec<EventType>)> {
        log.lock()
            .expect("lock")
            .iter()
            .map(|m| match m {
                BusMessage::Updated { state, events, .. } => {
                    (state.version, events.iter().map(|e| e.event_type).collect())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn create_stores_version_one_and_publishes_it() {
        // Arrange
        let mut store = MockSessionStore::new();
        store
            .expect_create()
            .times(1)
            .withf(|s, events| {
                s.version == 1
                    && s.owner.as_deref() == Some("host-1")
                    && events.len() == 1
                    && events[0].event_type == EventType::SessionCreated
            })
            .returning(|_, _| Ok(()));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(0));
        let cfg = SessionConfig::parse(&chess()).expect("valid");

        // Act
        let v = svc.create(&host(), cfg, sid()).await.expect("created");

        // Assert
        assert_eq!(
            (v.status, v.version, v.created_at_ms),
            (Status::Pending, 1, at(0))
        );
        assert_eq!(published(&log), [(1, vec![EventType::SessionCreated])]);
    }

    #[tokio::test]
    async fn create_is_refused_to_a_viewer_and_a_taken_id_is_reported() {
        // Arrange
        let mut store = MockSessionStore::new();
        store
            .expect_create()
            .times(1)
            .returning(|_, _| Err(StoreError::AlreadyExists));
        let mut bus = MockEventBus::new();
        bus.expect_publish().never();
        let svc = service(store, bus, clock_at(0));
        let cfg = SessionConfig::parse(&chess()).expect("valid");

        // Act
        let forbidden = svc.create(&viewer(), cfg.clone(), sid()).await;
        let taken = svc.create(&host(), cfg, sid()).await;

        // Assert
        assert!(
            matches!(forbidden, Err(ServiceError::Forbidden(_))),
            "{forbidden:?}"
        );
        assert_eq!(taken, Err(ServiceError::AlreadyExists(sid())));
    }

    #[tokio::test]
    async fn a_lost_compare_and_set_is_retried_on_the_fresh_state() {
        // Arrange: between our load and commit, someone else switched at 5000.
        let v2 = running_chess();
        let v3 = machine::decide(
            &v2,
            &Command::Switch {
                next: None,
                lag_ms: None,
            },
            None,
            at(5_000),
        )
        .expect("switch")
        .state;
        let mut seq = Sequence::new();
        let mut store = MockSessionStore::new();
        let first = v2.clone();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(first.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 2 && c.state.version == 3)
            .returning(|_| Err(StoreError::VersionConflict(None)));
        let fresh = v3.clone();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(fresh.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| {
                c.expected_version == 3
                    && c.state.version == 4
                    && c.deadline == next_deadline(&c.state)
                    && c.deadline == Some(super::at(307_000))
                    && c.events.len() == 1
                    && c.events[0].version == 4
            })
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(10_000));

        // Act: black's switch, no expected_version.
        let done = svc
            .execute(
                &host(),
                sid(),
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await
            .expect("retried and committed");

        // Assert: applied to version 3, not lost; black's 5 s charged.
        assert_eq!(done.view.version, 4);
        assert_eq!(done.view.active_participant_id, Some(pid("white")));
        let black = super::participant(&done.view, "black");
        assert_eq!((black.total_time_ms, black.time_used_ms), (302_000, 5_000));
        assert_eq!(done.at_ms, at(10_000));
        assert_eq!(published(&log), [(4, vec![EventType::CycleSwitched])]);
    }

    #[tokio::test]
    async fn a_conflict_with_expected_version_is_surfaced_not_retried() {
        // Arrange: we expected version 2; the race winner made it 3.
        let v2 = running_chess();
        let v3 = machine::decide(
            &v2,
            &Command::Switch {
                next: None,
                lag_ms: None,
            },
            None,
            at(5_000),
        )
        .expect("switch")
        .state;
        let mut seq = Sequence::new();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(v2.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(StoreError::VersionConflict(None)));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(v3.clone())));
        let mut bus = MockEventBus::new();
        bus.expect_publish().never();
        let svc = service(store, bus, clock_at(6_000));

        // Act
        let r = svc.execute(&host(), sid(), Command::Pause, Some(2)).await;

        // Assert
        assert_eq!(
            r,
            Err(ServiceError::Transition(TransitionError::Conflict {
                expected: 2,
                actual: 3
            }))
        );
    }

    #[tokio::test]
    async fn every_version_is_published_once_in_order() {
        // Arrange: two per_cycle timeouts passed unnoticed before a pause.
        let stored = per_cycle_started();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(stored.clone())));
        store
            .expect_commit()
            .times(1)
            .withf(|c| {
                c.expected_version == 2
                    && c.state.version == 5
                    && c.events.len() == 3
                    && c.deadline.is_none()
            })
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(25_000));

        // Act
        let done = svc
            .execute(&host(), sid(), Command::Pause, None)
            .await
            .expect("paused");

        // Assert
        assert_eq!(done.fired_deadlines, [at(10_000), at(20_000)]);
        assert_eq!(done.expired_participant_id, Some(pid("a")));
        assert_eq!((done.view.status, done.view.version), (Status::Paused, 5));
        assert_eq!(
            published(&log),
            [
                (3, vec![EventType::CycleTimeout]),
                (4, vec![EventType::CycleTimeout]),
                (5, vec![EventType::SessionPaused]),
            ]
        );
        let instants: Vec<i64> = log
            .lock()
            .expect("lock")
            .iter()
            .map(|m| match m {
                BusMessage::Updated { at_ms, .. } => *at_ms,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(instants, [at(10_000), at(20_000), at(25_000)]);
    }

    /// The session of [`every_version_is_published_once_in_order`]: two
    /// per_cycle timeouts pass unnoticed before the command at 25 s.
    fn per_cycle_started() -> Session {
        let cfg = SessionConfig::parse(&json!({
            "sync_mode": "per_cycle", "time_per_cycle_ms": 10000,
            "participants": [{"participant_id": "a"}, {"participant_id": "b"}],
            "action_on_timeout": {"type": "skip_cycle"}, "auto_advance": true
        }))
        .expect("valid");
        let (s, _) = machine::create(cfg, sid(), Some("host-1".into()), at(0));
        machine::decide(&s, &Command::Start, None, at(0))
            .expect("start")
            .state
    }

    /// A store that publishes its commits and holds `stored` (loaded once).
    fn publishing_store_of(stored: Session) -> MockSessionStore {
        let mut store = MockSessionStore::new();
        store.expect_publishes_commits().return_const(true);
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(stored.clone())));
        store
    }

    #[tokio::test]
    async fn a_store_that_publishes_gets_every_version_encoded_in_its_commit() {
        // Arrange
        let mut store = publishing_store_of(per_cycle_started());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        store.expect_commit().times(1).returning(move |c| {
            sink.lock().expect("lock").extend(c.publish.clone());
            Ok(None)
        });
        let svc = SessionService::new(
            Arc::new(store),
            Arc::new(encoding_bus()),
            Arc::new(clock_at(25_000)),
        );

        // Act
        let done = svc
            .execute(&host(), sid(), Command::Pause, None)
            .await
            .expect("paused");

        // Assert: one message per version, each with its own events and
        // instant, in version order; the bus published nothing itself.
        assert_eq!(done.view.version, 5);
        let seen = seen.lock().expect("lock");
        let channel = format!("ch:{}", sid());
        let channels: Vec<&str> = seen.iter().map(|m| m.channel.as_str()).collect();
        assert_eq!(channels, [channel.as_str(); 3]);
        let payloads: Vec<String> = seen
            .iter()
            .map(|m| String::from_utf8(m.payload.clone()).expect("utf-8"))
            .collect();
        assert_eq!(
            payloads,
            [
                format!("3:CycleTimeout@{}", at(10_000)),
                format!("4:CycleTimeout@{}", at(20_000)),
                format!("5:SessionPaused@{}", at(25_000)),
            ]
        );
    }

    #[tokio::test]
    async fn a_store_that_publishes_on_a_bus_that_cannot_encode_leaves_the_publish_to_the_bus() {
        // Arrange
        let mut store = publishing_store_of(per_cycle_started());
        store
            .expect_commit()
            .times(1)
            .withf(|c| c.publish.is_empty() && c.state.version == 5)
            .returning(|_| Ok(None));
        let (mut bus, log) = recording_bus();
        bus.expect_encode_update().returning(|_, _, _| None);
        let svc = SessionService::new(Arc::new(store), Arc::new(bus), Arc::new(clock_at(25_000)));

        // Act
        svc.execute(&host(), sid(), Command::Pause, None)
            .await
            .expect("paused");

        // Assert
        let versions: Vec<u64> = published(&log).into_iter().map(|(v, _)| v).collect();
        assert_eq!(versions, [3, 4, 5]);
    }

    #[tokio::test]
    async fn a_late_switch_through_the_service_reports_the_expired_participant() {
        // Arrange
        let stored = running_chess();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(stored.clone())));
        store
            .expect_commit()
            .times(1)
            .withf(|c| c.state.version == 3 && c.state.status == Status::Expired)
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(301_000));

        // Act
        let done = svc
            .execute(
                &host(),
                sid(),
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await
            .expect("judged as of the deadline");

        // Assert
        assert_eq!(done.expired_participant_id, Some(pid("white")));
        assert_eq!(done.view.session_completed_at_ms, Some(at(300_000)));
        assert_eq!(
            published(&log),
            [(
                3,
                vec![EventType::ParticipantExpired, EventType::SessionExpired]
            )]
        );
    }

    #[tokio::test]
    async fn a_viewer_may_read_but_not_act_and_a_player_may_switch_only_their_own_clock() {
        // Arrange
        let stored = running_chess();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .returning(move |_| Ok(Some(stored.clone())));
        store.expect_commit().times(1).returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(1_000));

        // Act
        let read = svc.get(&viewer(), sid()).await;
        let pause = svc.execute(&viewer(), sid(), Command::Pause, None).await;
        let switch = svc
            .execute(
                &viewer(),
                sid(),
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await;
        let black = svc
            .execute(
                &player("black"),
                sid(),
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await;
        let white = svc
            .execute(
                &player("white"),
                sid(),
                Command::Switch {
                    next: None,
                    lag_ms: None,
                },
                None,
            )
            .await;

        // Assert
        assert_eq!(read.expect("readable").version, 2);
        assert!(
            matches!(pause, Err(ServiceError::Forbidden(_))),
            "{pause:?}"
        );
        assert!(
            matches!(switch, Err(ServiceError::Forbidden(_))),
            "{switch:?}"
        );
        assert!(
            matches!(black, Err(ServiceError::Forbidden(_))),
            "{black:?}"
        );
        assert_eq!(white.expect("white is active").view.version, 3);
        assert_eq!(published(&log), [(3, vec![EventType::CycleSwitched])]);
    }

    #[tokio::test]
    async fn missing_sessions_and_store_failures_are_told_apart() {
        // Arrange
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(StoreError::Unavailable("down".into())));
        let stored = running_chess();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(stored.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(StoreError::Other("corrupt".into())));
        let mut bus = MockEventBus::new();
        bus.expect_publish().never();
        let svc = service(store, bus, clock_at(1_000));

        // Act
        let missing = svc.execute(&host(), sid(), Command::Pause, None).await;
        let down = svc.execute(&host(), sid(), Command::Pause, None).await;
        let broken = svc.execute(&host(), sid(), Command::Pause, None).await;

        // Assert
        assert_eq!(missing, Err(ServiceError::NotFound(sid())));
        assert_eq!(down, Err(ServiceError::Unavailable("down".into())));
        assert!(
            matches!(broken, Err(ServiceError::Internal(_))),
            "{broken:?}"
        );
    }

    #[tokio::test]
    async fn fire_due_commits_due_deadlines_once_and_ignores_sessions_with_none() {
        // Arrange
        let stored = running_chess();
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        // One load: the second fire starts from the copy the first load
        // left in the instance's cache (a local timer's one round trip).
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(stored.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 2 && c.state.version == 3 && c.deadline.is_none())
            .returning(|_| Ok(None));
        let mut clock = MockClock::new();
        let mut ticks = vec![at(350_000), at(100_000)];
        clock
            .expect_now_ms()
            .returning(move || ticks.pop().expect("two reads"));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock);

        // Act
        let none = svc.fire_due(sid()).await.expect("nothing due");
        let fired = svc.fire_due(sid()).await.expect("fired");

        // Assert
        assert_eq!(none, Vec::<i64>::new());
        assert_eq!(fired, [at(300_000)]);
        assert_eq!(
            published(&log),
            [(
                3,
                vec![EventType::ParticipantExpired, EventType::SessionExpired]
            )]
        );
    }

    #[tokio::test]
    async fn fire_claimed_uses_the_claimed_state_without_a_load() {
        // Arrange: the claim carried the current state, so nothing is loaded.
        let stored = running_chess();
        let mut store = MockSessionStore::new();
        store.expect_load().times(0);
        store
            .expect_commit()
            .times(1)
            .withf(|c| c.expected_version == 2 && c.state.version == 3 && c.deadline.is_none())
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(350_000));

        // Act
        let fired = svc
            .fire_claimed(Claimed {
                id: sid(),
                state: Some(stored),
            })
            .await
            .expect("fired");

        // Assert
        assert_eq!(fired, [at(300_000)]);
        assert_eq!(
            published(&log),
            [(
                3,
                vec![EventType::ParticipantExpired, EventType::SessionExpired]
            )]
        );
    }

    #[tokio::test]
    async fn fire_claimed_with_a_stale_state_reloads_after_the_conflict() {
        // Arrange: white switched at 100 s after the claim read version 2;
        // the stale decision loses the compare-and-set, the reload decides
        // on version 3 (black's clock, due at 400 s).
        let stale = running_chess();
        let current = machine::decide(
            &stale,
            &Command::Switch {
                next: None,
                lag_ms: None,
            },
            None,
            at(100_000),
        )
        .expect("switch")
        .state;
        assert_eq!(next_deadline(&current), Some(at(400_000)));
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 2)
            .returning(|_| Err(StoreError::VersionConflict(None)));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(current.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 3 && c.state.version == 4 && c.deadline.is_none())
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(450_000));

        // Act
        let fired = svc
            .fire_claimed(Claimed {
                id: sid(),
                state: Some(stale),
            })
            .await
            .expect("fired");

        // Assert: black's deadline, once; white's stale one never.
        assert_eq!(fired, [at(400_000)]);
        assert_eq!(
            published(&log),
            [(
                4,
                vec![EventType::ParticipantExpired, EventType::SessionExpired]
            )]
        );
    }

    #[tokio::test]
    async fn delete_cancels_a_live_session_then_removes_it() {
        // Arrange
        let stored = running_chess();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(2)
            .returning(move |_| Ok(Some(stored.clone())));
        store
            .expect_commit()
            .times(1)
            .withf(|c| c.state.status == Status::Cancelled && c.state.version == 3)
            .returning(|_| Ok(None));
        store.expect_delete().times(1).returning(|_| Ok(true));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let mut bus = MockEventBus::new();
        bus.expect_publish()
            .returning(move |m| sink.lock().expect("lock").push(m));
        let svc = service(store, bus, clock_at(2_000));

        // Act
        svc.delete(&host(), sid()).await.expect("deleted");

        // Assert
        let log = log.lock().expect("lock");
        assert_eq!(log.len(), 2);
        assert!(
            matches!(&log[0], BusMessage::Updated { state, .. } if state.status == Status::Cancelled)
        );
        assert_eq!(
            log[1],
            BusMessage::Deleted {
                session_id: sid(),
                at_ms: at(2_000)
            }
        );
    }

    // --- The reads and idempotent delete the service offers in place of its ports ---

    fn admin() -> Actor {
        Actor {
            sub: Some("admin-1".into()),
            role: Role::Admin,
            sid: None,
            pid: None,
        }
    }

    /// A host who does not own the chess session.
    fn other_host() -> Actor {
        Actor {
            sub: Some("host-2".into()),
            ..host()
        }
    }

    /// A store holding `state` (or nothing), loaded any number of times,
    /// that no call here may write to.
    fn read_only_store(state: Option<Session>) -> MockSessionStore {
        let mut store = MockSessionStore::new();
        store.expect_load().returning(move |_| Ok(state.clone()));
        store.expect_commit().never();
        store.expect_delete().never();
        store
    }

    fn silent_bus() -> MockEventBus {
        let mut bus = MockEventBus::new();
        bus.expect_publish().never();
        bus
    }

    /// The chess session's audit trail: created and started, newest first.
    fn trail() -> Vec<Event> {
        let cfg = SessionConfig::parse(&chess()).expect("valid");
        let (s, created) = machine::create(cfg, sid(), Some("host-1".into()), at(0));
        let started = machine::decide(&s, &Command::Start, None, at(0)).expect("start");
        let mut events = vec![created];
        events.extend(started.events);
        events.reverse();
        events
    }

    /// An audit trail answering `history(sid(), 50, Some(at(9_000)))` with
    /// `answer`, `times` times.
    fn audit(times: usize, answer: Result<Vec<Event>, AuditError>) -> Arc<MockAuditSink> {
        let mut audit = MockAuditSink::new();
        audit
            .expect_history()
            .times(times)
            .withf(|id, limit, before| {
                *id == sid() && *limit == 50 && *before == Some(super::at(9_000))
            })
            .returning(move |_, _, _| answer.clone());
        Arc::new(audit)
    }

    #[tokio::test]
    async fn history_needs_the_right_to_read_events_while_the_session_exists() {
        // Arrange: the trail is consulted only for the owner and the admin.
        let svc = service(
            read_only_store(Some(running_chess())),
            silent_bus(),
            clock_at(1_000),
        )
        .with_audit(audit(2, Ok(trail())));

        // Act
        let viewer = svc.history(&viewer(), sid(), 50, Some(at(9_000))).await;
        let player = svc
            .history(&player("white"), sid(), 50, Some(at(9_000)))
            .await;
        let stranger = svc.history(&other_host(), sid(), 50, Some(at(9_000))).await;
        let owner = svc.history(&host(), sid(), 50, Some(at(9_000))).await;
        let admin = svc.history(&admin(), sid(), 50, Some(at(9_000))).await;

        // Assert
        for (who, r) in [("viewer", viewer), ("player", player), ("host-2", stranger)] {
            assert!(matches!(r, Err(ServiceError::Forbidden(_))), "{who}: {r:?}");
        }
        assert_eq!(owner, Ok(trail()));
        assert_eq!(admin, Ok(trail()));
    }

    #[tokio::test]
    async fn history_after_deletion_is_for_an_admin_only() {
        // Arrange: the store no longer has the session; the trail kept it.
        let svc = service(read_only_store(None), silent_bus(), clock_at(1_000))
            .with_audit(audit(1, Ok(trail())));

        // Act
        let owner = svc.history(&host(), sid(), 50, Some(at(9_000))).await;
        let viewer = svc.history(&viewer(), sid(), 50, Some(at(9_000))).await;
        let admin = svc.history(&admin(), sid(), 50, Some(at(9_000))).await;

        // Assert
        assert_eq!(owner, Err(ServiceError::NotFound(sid())));
        assert_eq!(viewer, Err(ServiceError::NotFound(sid())));
        assert_eq!(admin, Ok(trail()));
    }

    #[tokio::test]
    async fn history_of_a_session_neither_stored_nor_in_the_trail_is_not_found() {
        // Arrange: an empty trail is an answer for a session that exists,
        // and "not found" for one that does not.
        let gone = service(read_only_store(None), silent_bus(), clock_at(1_000))
            .with_audit(audit(1, Ok(Vec::new())));
        let live = service(
            read_only_store(Some(running_chess())),
            silent_bus(),
            clock_at(1_000),
        )
        .with_audit(audit(1, Ok(Vec::new())));

        // Act
        let gone = gone.history(&admin(), sid(), 50, Some(at(9_000))).await;
        let live = live.history(&admin(), sid(), 50, Some(at(9_000))).await;

        // Assert
        assert_eq!(gone, Err(ServiceError::NotFound(sid())));
        assert_eq!(live, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn history_without_an_audit_trail_is_disabled_and_audit_faults_are_unavailable() {
        // Arrange
        let none = service(
            read_only_store(Some(running_chess())),
            silent_bus(),
            clock_at(1_000),
        );
        let down = service(
            read_only_store(Some(running_chess())),
            silent_bus(),
            clock_at(1_000),
        )
        .with_audit(audit(1, Err(AuditError::Unavailable("db down".into()))));
        let broken = service(read_only_store(None), silent_bus(), clock_at(1_000))
            .with_audit(audit(1, Err(AuditError::Other("bad row".into()))));

        // Act
        let disabled = none.history(&host(), sid(), 50, Some(at(9_000))).await;
        let unavailable = down.history(&host(), sid(), 50, Some(at(9_000))).await;
        let faulty = broken.history(&admin(), sid(), 50, Some(at(9_000))).await;

        // Assert
        assert!(!none.has_audit());
        assert!(down.has_audit());
        assert_eq!(disabled, Err(ServiceError::AuditDisabled));
        assert_eq!(
            unavailable,
            Err(ServiceError::AuditUnavailable("db down".into()))
        );
        assert_eq!(
            faulty,
            Err(ServiceError::AuditUnavailable("bad row".into()))
        );
    }

    #[tokio::test]
    async fn deleting_an_unknown_session_is_ok_for_admin_and_host_and_forbidden_to_others() {
        // Arrange: nothing stored, so nothing is removed and nobody is told.
        let svc = service(read_only_store(None), silent_bus(), clock_at(1_000));

        // Act
        let admin = svc.delete(&admin(), sid()).await;
        let host = svc.delete(&host(), sid()).await;
        let player = svc.delete(&player("white"), sid()).await;
        let viewer = svc.delete(&viewer(), sid()).await;

        // Assert
        assert_eq!(admin, Ok(()));
        assert_eq!(host, Ok(()));
        assert!(
            matches!(player, Err(ServiceError::Forbidden(_))),
            "{player:?}"
        );
        assert!(
            matches!(viewer, Err(ServiceError::Forbidden(_))),
            "{viewer:?}"
        );
    }

    #[tokio::test]
    async fn deleting_twice_is_ok_and_removes_and_announces_once() {
        // Arrange: a completed session, then nothing once it is removed.
        let ended = machine::decide(&running_chess(), &Command::Complete, None, at(1_000))
            .expect("complete")
            .state;
        let mut seq = Sequence::new();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(ended.clone())));
        store
            .expect_delete()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(true));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        store.expect_commit().never();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let mut bus = MockEventBus::new();
        bus.expect_publish()
            .returning(move |m| sink.lock().expect("lock").push(m));
        let svc = service(store, bus, clock_at(2_000));

        // Act
        let first = svc.delete(&host(), sid()).await;
        let second = svc.delete(&host(), sid()).await;

        // Assert
        assert_eq!((first, second), (Ok(()), Ok(())));
        assert_eq!(
            *log.lock().expect("lock"),
            [BusMessage::Deleted {
                session_id: sid(),
                at_ms: at(2_000)
            }]
        );
    }

    #[tokio::test]
    async fn snapshot_is_the_stored_state_at_now_for_a_reader_of_that_session_only() {
        // Arrange
        let stored = running_chess();
        let other: kairos_domain::SessionId = "00000000-0000-4000-8000-000000000001"
            .parse()
            .expect("uuid");
        assert_ne!(other, sid());
        let svc = service(
            read_only_store(Some(stored.clone())),
            silent_bus(),
            clock_at(1_000),
        );
        let missing = service(read_only_store(None), silent_bus(), clock_at(1_000));

        // Act
        let read = svc
            .snapshot(&Actor::session_reader(sid()), sid())
            .await
            .expect("readable");
        let scoped_elsewhere = svc.snapshot(&Actor::session_reader(other), sid()).await;
        let admin_scoped_elsewhere = svc
            .snapshot(
                &Actor {
                    sid: Some(other),
                    ..admin()
                },
                sid(),
            )
            .await;
        let not_found = missing.snapshot(&admin(), sid()).await;

        // Assert
        assert_eq!((read.state, read.now_ms), (stored, at(1_000)));
        assert!(
            matches!(scoped_elsewhere, Err(ServiceError::Forbidden(_))),
            "{scoped_elsewhere:?}"
        );
        assert!(
            matches!(admin_scoped_elsewhere, Err(ServiceError::Forbidden(_))),
            "{admin_scoped_elsewhere:?}"
        );
        assert_eq!(not_found, Err(ServiceError::NotFound(sid())));
    }

    #[tokio::test]
    async fn claim_due_claims_what_is_due_at_the_clocks_now() {
        // Arrange: the store is asked for what is due at the clock's now,
        // with the caller's limit and lease.
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        store
            .expect_claim_due()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|now, limit, lease| (*now, *limit, *lease) == (super::at(350_000), 16, 5_000))
            .returning(|_, _, _| Ok(vec![Claimed::id_only(sid())]));
        store
            .expect_claim_due()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Err(StoreError::Unavailable("down".into())));
        let svc = service(store, silent_bus(), clock_at(350_000));

        // Act
        let due = svc.claim_due(16, 5_000).await;
        let down = svc.claim_due(16, 5_000).await;

        // Assert
        assert_eq!(due, Ok(vec![Claimed::id_only(sid())]));
        assert_eq!(down, Err(ServiceError::Unavailable("down".into())));
    }

    // --- One store round trip per command on a session the instance knows.

    fn switch() -> Command {
        Command::Switch {
            next: None,
            lag_ms: None,
        }
    }

    /// `state` after one switch at `ms`.
    fn switched(state: &Session, ms: i64) -> Session {
        machine::decide(state, &switch(), None, at(ms))
            .expect("switch")
            .state
    }

    #[tokio::test]
    async fn a_second_command_decides_on_the_cached_copy_without_a_load() {
        // Arrange: one load ever; two commits, each on the version before.
        let v2 = running_chess();
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(v2.clone())));
        let mut seq = Sequence::new();
        for expected in [2, 3] {
            store
                .expect_commit()
                .times(1)
                .in_sequence(&mut seq)
                .withf(move |c| c.expected_version == expected && c.rate.is_none())
                .returning(|_| Ok(None));
        }
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(1_000));

        // Act
        let first = svc.execute(&host(), sid(), switch(), None).await;
        let second = svc.execute(&host(), sid(), switch(), None).await;

        // Assert
        assert_eq!(first.expect("first").view.version, 3);
        assert_eq!(second.expect("second").view.version, 4);
        assert_eq!(
            published(&log),
            [
                (3, vec![EventType::CycleSwitched]),
                (4, vec![EventType::CycleSwitched])
            ]
        );
    }

    #[tokio::test]
    async fn a_stale_copy_costs_one_retry_on_the_state_the_conflict_returns() {
        // Arrange: the instance loaded v2 once (for a refused command);
        // another instance committed v3 since.
        let v2 = running_chess();
        let v3 = switched(&v2, 5_000);
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(v2.clone())));
        let mut seq = Sequence::new();
        let current = v3.clone();
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 2)
            .returning(move |_| Err(StoreError::VersionConflict(Some(Box::new(current.clone())))));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 3 && c.state.version == 4)
            .returning(|_| Ok(None));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(10_000));
        let refused = svc.execute(&host(), sid(), Command::Resume, None).await;
        assert!(
            matches!(refused, Err(ServiceError::Transition(_))),
            "{refused:?}"
        );

        // Act
        let done = svc.execute(&host(), sid(), switch(), None).await;

        // Assert: no second load; black's 5 s charged on v3.
        let done = done.expect("retried");
        assert_eq!(done.view.version, 4);
        assert_eq!(done.view.active_participant_id, Some(pid("white")));
        assert_eq!(published(&log), [(4, vec![EventType::CycleSwitched])]);
    }

    #[tokio::test]
    async fn a_refusal_decided_on_a_cached_copy_is_decided_again_on_the_store() {
        // Arrange: the instance holds v3; the store holds v4, which the
        // client expects. On the copy that is a version conflict; on the
        // store's state it is the command.
        let v2 = running_chess();
        let v3 = switched(&v2, 1_000);
        let v4 = switched(&v3, 2_000);
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        let first = v3.clone();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(first.clone())));
        let fresh = v4.clone();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(fresh.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 4 && c.state.version == 5)
            .returning(|_| Ok(None));
        let (bus, _log) = recording_bus();
        let svc = service(store, bus, clock_at(3_000));
        // A read does not fill the cache; a refused command's load does.
        let refused = svc.execute(&viewer(), sid(), Command::Pause, None).await;
        assert!(
            matches!(refused, Err(ServiceError::Forbidden(_))),
            "{refused:?}"
        );

        // Act
        let paused = svc.execute(&host(), sid(), Command::Pause, Some(4)).await;

        // Assert
        let paused = paused.expect("paused on the store's version");
        assert_eq!(
            (paused.view.version, paused.view.status),
            (5, Status::Paused)
        );
    }

    #[tokio::test]
    async fn the_switch_limit_travels_with_the_commit_and_its_refusal_changes_nothing() {
        // Arrange
        let v2 = running_chess();
        let limit = kairos_domain::Limit::per_second(10);
        let allowed = kairos_domain::RateDecision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset_ms: 100,
            retry_after_ms: 0,
        };
        let refused = kairos_domain::RateDecision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_ms: 1_000,
            retry_after_ms: 100,
        };
        let mut store = MockSessionStore::new();
        store
            .expect_load()
            .times(1)
            .returning(move |_| Ok(Some(v2.clone())));
        let mut seq = Sequence::new();
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |c| {
                c.rate
                    == Some(kairos_domain::RateCheck {
                        limit,
                        now_ms: at(1_000),
                    })
            })
            .returning(move |_| Ok(Some(allowed)));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|c| c.expected_version == 3)
            .returning(move |_| Err(StoreError::RateLimited(refused)));
        let (bus, log) = recording_bus();
        let svc = service(store, bus, clock_at(1_000));

        // Act
        let first = svc
            .execute_limited(&host(), sid(), switch(), None, Some(limit))
            .await;
        let second = svc
            .execute_limited(&host(), sid(), switch(), None, Some(limit))
            .await;

        // Assert
        assert_eq!(first.expect("allowed").rate, Some(allowed));
        assert_eq!(
            second,
            Err(ServiceError::RateLimited {
                decision: refused,
                limit
            })
        );
        assert_eq!(published(&log), [(3, vec![EventType::CycleSwitched])]);
    }

    #[tokio::test]
    async fn a_copy_deleted_elsewhere_is_not_found_and_a_deletion_on_the_bus_drops_it() {
        // Arrange: two sessions known from a load each; one was deleted
        // elsewhere (its commit finds no key), the other's deletion came by
        // the bus (its next command loads and finds nothing).
        let v2 = running_chess();
        let mut store = MockSessionStore::new();
        let mut seq = Sequence::new();
        let known = v2.clone();
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(known.clone())));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        store
            .expect_commit()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(StoreError::VersionConflict(None)));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(Some(v2.clone())));
        store
            .expect_load()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(None));
        let (bus, _log) = recording_bus();
        let svc = service(store, bus, clock_at(1_000));
        svc.execute(&host(), sid(), switch(), None)
            .await
            .expect("known now");

        // Act
        let gone = svc.execute(&host(), sid(), switch(), None).await;
        let reloaded = svc.execute(&host(), sid(), Command::Pause, Some(9)).await;
        svc.observe(&BusMessage::Deleted {
            session_id: sid(),
            at_ms: at(1_000),
        });
        let deleted = svc.execute(&host(), sid(), switch(), None).await;

        // Assert
        assert_eq!(gone, Err(ServiceError::NotFound(sid())));
        assert!(
            matches!(
                reloaded,
                Err(ServiceError::Transition(TransitionError::Conflict { .. }))
            ),
            "{reloaded:?}"
        );
        assert_eq!(deleted, Err(ServiceError::NotFound(sid())));
    }
}
