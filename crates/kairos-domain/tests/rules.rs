//! The time controls of real events (contract section 8) with concrete numbers: the worked examples and anchors (FIDE 90/40+30, US delay, Bronstein, scalachess's lag quota), warnings, added time and scheduled starts, each rule by a test that fails without it.

use std::sync::Arc;

use kairos_domain::auth::authorize;
use kairos_domain::clock::{DueKind, lag_gain_ms, next_due};
use kairos_domain::machine::{self, next_deadline};
use kairos_domain::view::view;
use kairos_domain::{
    Action, Actor, AddMs, AddTarget, Claimed, Command, Commit, Decision, Event, EventType, GroupId,
    MockClock, MockEventBus, MockSessionStore, ParticipantId, ParticipantView, Role, ServiceError,
    Session, SessionConfig, SessionId, SessionService, SessionView, Status, TransitionError,
};
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

struct Sim {
    state: Session,
    events: Vec<Event>,
}

impl Sim {
    fn new(config: Value) -> Self {
        let cfg = SessionConfig::parse(&config).expect("a valid config");
        let (state, created) = machine::create(cfg, sid(), Some("host-1".into()), at(0));
        Self {
            state,
            events: vec![created],
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
        self.events.extend(d.events.iter().cloned());
        d
    }

    fn switch(&mut self, ms: i64) -> Decision {
        self.cmd(switch(None), ms)
    }

    fn switch_lag(&mut self, lag: u32, ms: i64) -> Decision {
        self.cmd(switch(Some(lag)), ms)
    }

    fn view(&self, ms: i64) -> SessionView {
        view(&self.state, at(ms))
    }

    fn p(&self, who: &str, ms: i64) -> ParticipantView {
        participant(&self.view(ms), who)
    }

    fn deadline(&self) -> Option<i64> {
        next_deadline(&self.state).map(|d| d - T0)
    }

    fn of_type(&self, ty: EventType) -> Vec<&Event> {
        self.events.iter().filter(|e| e.event_type == ty).collect()
    }
}

fn switch(lag_ms: Option<u32>) -> Command {
    Command::Switch { next: None, lag_ms }
}

fn add_time(who: &str, ms: i64, reason: Option<&str>) -> Command {
    Command::AddTime {
        target: AddTarget::Participant(pid(who)),
        ms: AddMs::new(ms).expect("in range"),
        reason: reason.map(str::to_owned),
    }
}

fn participant(v: &SessionView, who: &str) -> ParticipantView {
    v.participants
        .iter()
        .find(|p| p.participant_id.as_str() == who)
        .cloned()
        .unwrap_or_else(|| panic!("no participant {who}"))
}

fn two(bank: i64, extra: Value) -> Value {
    let mut cfg = json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": bank},
            {"participant_id": "black", "total_time_ms": bank}
        ]
    });
    if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
        cfg.extend(extra.clone());
    }
    cfg
}

fn fields(v: Value) -> Vec<String> {
    SessionConfig::parse(&v)
        .expect_err("invalid")
        .into_iter()
        .map(|f| f.field)
        .collect()
}

fn fide() -> Value {
    two(
        5_400_000,
        json!({"stages": [
            {"moves": 40, "increment_ms": 30000},
            {"add_ms": 1800000, "increment_ms": 30000}
        ]}),
    )
}

// ---------------------------------------------------------------------------
// Stages
// ---------------------------------------------------------------------------

#[test]
fn fide_90_40_30_the_40th_move_earns_30_min_and_30_s() {
    // Arrange: both players move after 1 s, every time.
    let mut sim = Sim::started(fide());
    let mut t = 0;
    for _ in 0..39 {
        t += 1_000;
        sim.switch(t); // white
        t += 1_000;
        sim.switch(t); // black
    }
    let before = sim.p("white", t);
    assert_eq!(before.total_time_ms, 5_400_000 + 39 * 30_000);
    assert_eq!(
        (before.stage_index, before.moves_to_next_stage),
        (0, Some(1))
    );

    // Act: white's 40th move.
    t += 1_000;
    sim.switch(t);

    // Assert
    let after = sim.p("white", t);
    assert_eq!(
        after.total_time_ms - before.total_time_ms,
        1_800_000 + 30_000
    );
    assert_eq!((after.stage_index, after.moves_to_next_stage), (1, None));
    assert_eq!(after.time_used_ms, 40_000);
    assert_eq!(
        after.time_remaining_ms,
        5_400_000 + 40 * 30_000 + 1_800_000 - 40_000
    );
    // Black, 39 moves in, is still in the first stage; its 40th move is next.
    let black = sim.p("black", t);
    assert_eq!((black.stage_index, black.moves_to_next_stage), (0, Some(1)));
    // The last stage lasts: the 41st move earns the increment only.
    t += 1_000;
    sim.switch(t);
    t += 1_000;
    sim.switch(t);
    let later = sim.p("white", t);
    assert_eq!(later.total_time_ms - after.total_time_ms, 30_000);
    assert_eq!(later.stage_index, 1);
}

#[test]
fn stage_time_is_capped_at_max_time_and_added_once() {
    // Arrange: 2 moves in stage 0, then +50 s; the cap is 70 s.
    let mut sim = Sim::started(two(
        60_000,
        json!({"max_time_ms": 70_000, "stages": [
            {"moves": 2, "increment_ms": 1000},
            {"add_ms": 50000, "increment_ms": 0}
        ]}),
    ));

    // Act
    for k in 1..=8 {
        sim.switch(k * 1_000);
    }

    // Assert: white made 4 moves; stage 1 entered once, capped at 70 s.
    let w = sim.p("white", 8_000);
    assert_eq!(w.total_time_ms, 70_000);
    assert_eq!(w.stage_index, 1);
}

#[test]
fn per_group_stages_count_the_groups_moves() {
    // Arrange
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "participants": [
            {"participant_id": "a1", "group_id": "red"},
            {"participant_id": "a2", "group_id": "red"},
            {"participant_id": "b1", "group_id": "blue"}
        ],
        "groups": [{"group_id": "red", "total_time_ms": 60000},
                   {"group_id": "blue", "total_time_ms": 60000}],
        "stages": [{"moves": 2, "increment_ms": 500}, {"add_ms": 10000}]
    }));

    // Act: red, blue, red moves.
    sim.switch(1_000);
    sim.switch(2_000);
    let v1 = sim.view(2_000);
    sim.switch(3_000);

    // Assert
    let red = |v: &SessionView| v.groups[0].clone();
    assert_eq!(
        (red(&v1).stage_index, red(&v1).moves_to_next_stage),
        (0, Some(1))
    );
    let v = sim.view(3_000);
    assert_eq!(red(&v).stage_index, 1);
    assert_eq!(red(&v).moves_to_next_stage, None);
    assert_eq!(red(&v).total_time_ms, 60_000 + 500 + 500 + 10_000);
    assert_eq!(participant(&v, "a2").stage_index, 1);
    assert_eq!(v.groups[1].total_time_ms, 60_500);
}

#[test]
fn stages_are_validated_field_by_field() {
    let bad = two(
        60_000,
        json!({"increment_ms": 2000, "stages": [
            {"moves": 0, "add_ms": 5},
            {"increment_ms": 3600001},
            {"moves": 3, "delay_ms": 1000}
        ]}),
    );
    assert_eq!(
        fields(bad),
        [
            "increment_ms",
            "stages[0].moves",
            "stages[0].add_ms",
            "stages[1].moves",
            "stages[1].increment_ms",
            "stages[2].moves",
            "stages[2].delay_mode"
        ]
    );
    let eleven: Vec<Value> = (0..11).map(|_| json!({"moves": 1})).collect();
    assert_eq!(fields(two(60_000, json!({"stages": eleven}))), ["stages"]);
    assert_eq!(fields(two(60_000, json!({"stages": []}))), ["stages"]);
    assert_eq!(
        fields(json!({"sync_mode": "global", "total_time_ms": 5000, "stages": [{}]})),
        ["stages"]
    );
    assert_eq!(
        fields(two(
            60_000,
            json!({"delay_ms": 1000, "delay_mode": "simple", "stages": [{}]})
        )),
        ["delay_ms"]
    );
    assert_eq!(
        fields(two(
            60_000,
            json!({"delay_ms": 600001, "delay_mode": "fast"})
        )),
        ["delay_ms", "delay_mode"]
    );
    assert_eq!(
        fields(two(
            60_000,
            json!({"delay_mode": "bronstein", "stages": [{}]})
        )),
        ["delay_mode"]
    );
    // The FIDE control and increment 0 with stages are fine.
    assert!(SessionConfig::parse(&fide()).is_ok());
    let mut zero = fide();
    zero["increment_ms"] = json!(0);
    assert!(SessionConfig::parse(&zero).is_ok());
}

// ---------------------------------------------------------------------------
// Delay: the R = 10 s, d = 5 s table of contract section 8.
// ---------------------------------------------------------------------------

fn delayed(mode: &str) -> Sim {
    Sim::started(two(10_000, json!({"delay_ms": 5000, "delay_mode": mode})))
}

#[test]
fn delay_table_a_move_after_3_s_leaves_10_s_and_after_8_s_leaves_7_s() {
    for mode in ["simple", "bronstein"] {
        for (e, left) in [
            (3_000, 10_000),
            (8_000, 7_000),
            (5_000, 10_000),
            (0, 10_000),
        ] {
            // Arrange
            let mut sim = delayed(mode);

            // Act
            sim.switch(e);

            // Assert
            let w = sim.p("white", e);
            assert_eq!(w.time_remaining_ms, left, "{mode} after {e}");
            assert_eq!(
                w.total_time_ms, 10_000,
                "{mode}: unused delay is never banked"
            );
            assert_eq!(w.time_used_ms + w.time_remaining_ms, w.total_time_ms);
        }
    }
}

#[test]
fn delay_table_with_no_move_simple_expires_at_15_s_and_bronstein_at_10_s() {
    for (mode, expiry) in [("simple", 15_000), ("bronstein", 10_000)] {
        // Arrange
        let mut sim = delayed(mode);

        // Act
        let deadline = sim.deadline();
        let before = sim.view(expiry - 1);
        let d = sim.cmd(Command::Timeout, expiry);

        // Assert
        assert_eq!(deadline, Some(expiry), "{mode}");
        assert_eq!(before.status, Status::Running, "{mode}");
        assert_eq!(d.fired_deadlines, [at(expiry)]);
        let v = sim.view(expiry + 5_000);
        assert_eq!(v.status, Status::Expired, "{mode}");
        assert_eq!(v.session_completed_at_ms, Some(at(expiry)));
        let w = participant(&v, "white");
        assert_eq!((w.time_used_ms, w.time_remaining_ms), (10_000, 0), "{mode}");
    }
}

#[test]
fn simple_delay_holds_the_clock_at_r_while_it_runs_and_bronstein_runs() {
    // Simple: the clock shows R for 5 s, then runs.
    let sim = delayed("simple");
    let w = sim.p("white", 2_000);
    assert_eq!(
        (w.time_remaining_ms, w.time_used_ms, w.delay_remaining_ms),
        (10_000, 0, Some(3_000))
    );
    let w = sim.p("white", 7_000);
    assert_eq!(
        (w.time_remaining_ms, w.delay_remaining_ms),
        (8_000, Some(0))
    );
    assert_eq!(sim.p("black", 2_000).delay_remaining_ms, None);
    // Bronstein: the clock runs from the start; the delay shows what a move gets back.
    let sim = delayed("bronstein");
    let w = sim.p("white", 2_000);
    assert_eq!(
        (w.time_remaining_ms, w.time_used_ms, w.delay_remaining_ms),
        (8_000, 2_000, Some(3_000))
    );
    // No delay configured: null.
    let sim = Sim::started(two(10_000, json!({})));
    assert_eq!(sim.p("white", 2_000).delay_remaining_ms, None);
}

#[test]
fn a_pause_keeps_the_delay_that_was_left() {
    // Arrange
    let mut sim = delayed("simple");

    // Act: 2 s of delay used, a long pause, then resume.
    sim.cmd(Command::Pause, 2_000);
    let paused = sim.p("white", 9_000);
    sim.cmd(Command::Resume, 10_000);

    // Assert
    assert_eq!(paused.delay_remaining_ms, Some(3_000));
    let w = sim.p("white", 11_000);
    assert_eq!(
        (w.delay_remaining_ms, w.time_remaining_ms),
        (Some(2_000), 10_000)
    );
    assert_eq!(sim.deadline(), Some(10_000 + 3_000 + 10_000));
    // A move 4 s after the resume: 3 s of delay, then 1 s charged.
    sim.switch(14_000);
    assert_eq!(sim.p("white", 14_000).time_remaining_ms, 9_000);
}

#[test]
fn us_chess_g90_d5_charges_only_what_exceeds_the_delay() {
    // Arrange
    let mut sim = Sim::started(two(
        5_400_000,
        json!({"delay_ms": 5000, "delay_mode": "simple"}),
    ));

    // Act: white moves after 4 s, black after 65 s, white after 5 s.
    sim.switch(4_000);
    sim.switch(69_000);
    sim.switch(74_000);

    // Assert
    assert_eq!(sim.p("white", 74_000).time_remaining_ms, 5_400_000);
    assert_eq!(sim.p("black", 74_000).time_remaining_ms, 5_400_000 - 60_000);
    // The switch event reports the whole turn and what is left.
    let sw = sim.of_type(EventType::CycleSwitched);
    assert_eq!(sw[1].time_elapsed_ms, Some(65_000));
    assert_eq!(sw[1].time_remaining_ms, Some(5_340_000));
}

#[test]
fn stage_delay_applies_in_its_stage_only() {
    // Arrange: no delay for 1 move, then a 5 s Bronstein delay.
    let mut sim = Sim::started(two(
        60_000,
        json!({"stages": [{"moves": 1}, {"delay_ms": 5000, "delay_mode": "bronstein"}]}),
    ));

    // Act
    sim.switch(3_000); // white's first move: no delay
    sim.switch(6_000); // black's first move: no delay
    let delay_shown = sim.p("white", 7_000).delay_remaining_ms;
    sim.switch(9_000); // white, in stage 1: 3 s, all given back

    // Assert
    assert_eq!(delay_shown, Some(4_000));
    assert_eq!(sim.p("white", 9_000).time_remaining_ms, 57_000);
    assert_eq!(sim.p("black", 9_000).time_remaining_ms, 57_000);
}

// ---------------------------------------------------------------------------
// Lag compensation
// ---------------------------------------------------------------------------

#[test]
fn scalachess_quota_gain_figures() {
    assert_eq!(lag_gain_ms(60_000, 0), 390); // 1+0
    assert_eq!(lag_gain_ms(180_000, 2_000), 1000); // 3+2: E = 260
    assert_eq!(lag_gain_ms(300_000, 0), 1000); // 5+0 caps at 1 s
    assert_eq!(lag_gain_ms(5_400_000, 30_000), 1000);
    assert_eq!(lag_gain_ms(15_000, 0), 210); // E = 15: 4E + 150
}

fn bullet() -> Sim {
    Sim::started(two(60_000, json!({"lag_compensation": {"enabled": true}})))
}

#[test]
fn lag_quota_starts_at_three_gains_pays_the_lag_and_caps_at_seven() {
    // Arrange: 1+0, gain 390, quota 1170.
    let mut sim = bullet();
    assert_eq!(sim.p("white", 0).lag_quota_ms, Some(1_170));

    // Act: white moves after 2 s reporting 500 ms of lag.
    let d = sim.switch_lag(500, 2_000);

    // Assert
    let w = sim.p("white", 2_000);
    assert_eq!(w.time_remaining_ms, 60_000 - 1_500);
    assert_eq!(w.lag_quota_ms, Some(1_170 + 390 - 500));
    let ev = &d.events[0];
    assert_eq!(ev.event_type, EventType::CycleSwitched);
    assert_eq!(ev.metadata["lag_compensated_ms"], json!(500));
    assert_eq!(ev.time_elapsed_ms, Some(2_000));

    // A lag above the quota is paid up to the quota.
    sim.switch(3_000);
    let d = sim.switch_lag(10_000, 8_000);
    assert_eq!(d.events[0].metadata["lag_compensated_ms"], json!(1_060));
    assert_eq!(sim.p("white", 8_000).lag_quota_ms, Some(390));
    // Never above 7 gains.
    let mut t = 8_000;
    for _ in 0..20 {
        t += 100;
        sim.switch(t);
    }
    assert_eq!(sim.p("white", t).lag_quota_ms, Some(7 * 390));
    // Compensation never charges negative: 100 ms of play, 2 s of lag.
    let before = sim.p("black", t);
    t += 100;
    sim.switch_lag(2_000, t);
    let after = sim.p("black", t);
    assert_eq!(after.time_used_ms, before.time_used_ms);
}

#[test]
fn without_lag_compensation_lag_ms_is_ignored_and_the_quota_is_null() {
    let mut sim = Sim::started(two(60_000, json!({})));
    let d = sim.switch_lag(500, 2_000);
    assert_eq!(sim.p("white", 2_000).time_remaining_ms, 58_000);
    assert_eq!(sim.p("white", 2_000).lag_quota_ms, None);
    assert!(!d.events[0].metadata.contains_key("lag_compensated_ms"));
}

#[test]
fn the_grace_delays_an_expiry_which_still_takes_effect_as_of_t() {
    // Arrange: white's minute runs out at T = 60 s; quota 1170 ms of grace.
    let sim = bullet();
    let due = next_due(&sim.state).expect("a deadline");

    // Assert
    assert_eq!(due.kind, DueKind::Expiry);
    assert_eq!((due.effect_at, due.fire_at), (at(60_000), at(61_170)));
    // In the grace the clock shows zero and has not expired.
    let v = sim.view(60_500);
    assert_eq!(v.status, Status::Running);
    let w = participant(&v, "white");
    assert_eq!((w.time_remaining_ms, w.time_used_ms), (0, 60_000));
    // At the grace's end it expires, as of T.
    let v = sim.view(61_170);
    assert_eq!(v.status, Status::Expired);
    assert_eq!(v.session_completed_at_ms, Some(at(60_000)));
    let mut timed = Sim::started(two(60_000, json!({"lag_compensation": {"enabled": true}})));
    let d = timed.cmd(Command::Timeout, 61_170);
    assert_eq!(d.fired_deadlines, [at(61_170)]);
    assert!(d.events.iter().all(|e| e.at_ms == at(60_000)));
    assert_eq!(timed.view(61_170), sim.view(61_170));
}

#[test]
fn a_switch_in_the_grace_is_accepted_when_its_compensated_charge_leaves_time() {
    // Accepted: 60.5 s of play less 1 s of lag leaves 0.5 s.
    let mut sim = bullet();
    let d = sim.switch_lag(1_000, 60_500);
    assert_eq!(d.expired_participant_id, None);
    let w = sim.p("white", 60_500);
    assert_eq!((w.time_remaining_ms, w.has_expired), (500, false));
    assert_eq!(sim.view(60_500).active_participant_id, Some(pid("black")));

    // Refused: without enough lag it is judged as of T.
    let mut sim = bullet();
    let d = sim.switch_lag(400, 60_500);
    assert_eq!(d.expired_participant_id, Some(pid("white")));
    assert_eq!(sim.view(60_500).status, Status::Expired);
    assert_eq!(sim.view(60_500).session_completed_at_ms, Some(at(60_000)));
    assert!(d.events.iter().all(|e| e.at_ms == at(60_000)));

    // Any other command in the grace finds the clock run out as of T.
    let sim = bullet();
    assert_eq!(
        sim.try_cmd(Command::Pause, 60_500),
        Err(TransitionError::InvalidTransition {
            status: Status::Expired,
            command: "pause"
        })
    );
    let skip = Sim::started(two(
        60_000,
        json!({"lag_compensation": {"enabled": true},
               "action_on_timeout": {"type": "skip_cycle"}, "auto_advance": true}),
    ));
    let d = skip
        .try_cmd(add_time("white", 60_000, None), 60_500)
        .expect("added to an expired participant's bank");
    assert_eq!(d.expired_participant_id, Some(pid("white")));
    assert_eq!(d.events[0].event_type, EventType::ParticipantExpired);
    assert_eq!(d.events[0].at_ms, at(60_000));
    let v = view(&d.state, at(60_500));
    assert_eq!(v.cycle_started_at_ms, Some(at(60_000)));
    assert_eq!(participant(&v, "black").time_used_ms, 500);
}

// ---------------------------------------------------------------------------
// Warnings
// ---------------------------------------------------------------------------

fn warned() -> Sim {
    Sim::started(two(60_000, json!({"warnings_ms": [10000, 30000]})))
}

#[test]
fn a_warning_is_its_own_version_as_of_the_instant_the_threshold_is_reached() {
    // Arrange
    let mut sim = warned();
    assert_eq!(sim.deadline(), Some(30_000));

    // Act: the scheduler is 700 ms late.
    let d = sim.cmd(Command::Timeout, 30_700);

    // Assert
    assert_eq!(d.fired_deadlines, [at(30_000)]);
    assert_eq!(d.state.version, 3);
    let ev = &d.events[0];
    assert_eq!(ev.event_type, EventType::TimeWarning);
    assert_eq!(ev.participant_id, Some(pid("white")));
    assert_eq!((ev.time_remaining_ms, ev.at_ms), (Some(30_000), at(30_000)));
    assert_eq!(ev.version, 3);
    assert_eq!(sim.deadline(), Some(50_000));
    // Nothing else is due before 50 s; the warning fires once.
    assert_eq!(
        sim.try_cmd(Command::Timeout, 49_999),
        Err(TransitionError::NothingDue)
    );
    sim.cmd(Command::Timeout, 50_000);
    assert_eq!(sim.of_type(EventType::TimeWarning).len(), 2);
    assert_eq!(sim.deadline(), Some(60_000));
}

#[test]
fn a_read_shows_the_warnings_due_and_a_switch_after_one_is_still_a_move() {
    // Arrange
    let sim = warned();

    // Act: nobody ran the scheduler; a read at 40 s, and a switch at 40 s.
    let v = sim.view(40_000);
    let d = sim.try_cmd(switch(None), 40_000).expect("a move");

    // Assert: the read counts the warning's version; the switch is applied.
    assert_eq!(v.version, 3);
    assert_eq!(d.state.version, 4);
    assert_eq!(d.expired_participant_id, None);
    assert_eq!(d.events.len(), 2);
    assert_eq!(d.events[0].event_type, EventType::TimeWarning);
    assert_eq!(d.events[1].event_type, EventType::CycleSwitched);
    assert_eq!(
        view(&d.state, at(40_000)).active_participant_id,
        Some(pid("black"))
    );
}

#[test]
fn no_warning_for_a_threshold_the_turn_started_at_or_below() {
    // Arrange: white uses 55 s on its first move.
    let mut sim = warned();
    sim.cmd(Command::Timeout, 30_000);
    sim.cmd(Command::Timeout, 50_000);
    sim.switch(55_000);
    // Black's whole minute: warnings at 30 s and 10 s left.
    sim.switch(60_000);
    let warnings_before = sim.of_type(EventType::TimeWarning).len();

    // Act: white's turn starts at 5 s left and runs out.
    let deadline = sim.deadline();
    sim.cmd(Command::Timeout, 70_000);

    // Assert: white's second turn had nothing to warn about.
    assert_eq!(deadline, Some(60_000 + 5_000));
    assert_eq!(warnings_before, 2);
    assert_eq!(sim.of_type(EventType::TimeWarning).len(), 2);
    assert_eq!(sim.view(70_000).status, Status::Expired);
    // A turn that starts exactly at a threshold does not warn for it.
    let mut sim = warned();
    sim.cmd(Command::Timeout, 30_000);
    sim.switch(30_000);
    sim.switch(31_000);
    assert_eq!(sim.deadline(), Some(31_000 + 20_000));
}

#[test]
fn warnings_follow_the_delay_and_fire_once_per_turn() {
    // Arrange: simple delay 5 s; the 10 s warning comes at 5 + (10 - ... ) s.
    let mut sim = Sim::started(two(
        20_000,
        json!({"warnings_ms": [10000], "delay_ms": 5000, "delay_mode": "simple"}),
    ));

    // Assert: R = 20 s reaches 10 s after 5 s of delay and 10 s of clock.
    assert_eq!(sim.deadline(), Some(15_000));
    let d = sim.cmd(Command::Timeout, 15_000);
    assert_eq!(d.events[0].time_remaining_ms, Some(10_000));
    assert_eq!(sim.p("white", 15_000).time_remaining_ms, 10_000);
    // Added time lifts the clock above the threshold again: no second warning.
    sim.cmd(add_time("white", 30_000, None), 16_000);
    assert_eq!(sim.deadline(), Some(5_000 + 20_000 + 30_000));
}

#[test]
fn warnings_are_validated() {
    assert_eq!(
        fields(two(60_000, json!({"warnings_ms": [1, 2, 3, 4, 5, 6]}))),
        ["warnings_ms"]
    );
    assert_eq!(
        fields(two(
            60_000,
            json!({"warnings_ms": [999, 5000, 5000, 3600001, "x"]})
        )),
        [
            "warnings_ms[0]",
            "warnings_ms[2]",
            "warnings_ms[3]",
            "warnings_ms[4]"
        ]
    );
    let cfg =
        SessionConfig::parse(&two(60_000, json!({"warnings_ms": [1000, 3600000]}))).expect("valid");
    assert_eq!(cfg.warnings_ms, [3_600_000, 1_000]);
}

#[test]
fn global_mode_warns_on_the_session_clock() {
    let mut sim = Sim::started(json!({
        "sync_mode": "global", "total_time_ms": 20000, "warnings_ms": [5000],
        "participants": [{"participant_id": "a"}, {"participant_id": "b"}]
    }));
    sim.switch(3_000);
    assert_eq!(sim.deadline(), Some(15_000));
    let d = sim.cmd(Command::Timeout, 15_000);
    assert_eq!(d.events[0].participant_id, Some(pid("b")));
    assert_eq!(d.events[0].time_remaining_ms, Some(5_000));
}

// ---------------------------------------------------------------------------
// Added time
// ---------------------------------------------------------------------------

#[test]
fn added_time_raises_the_bank_in_one_version_capped_at_max_time() {
    // Arrange
    let mut sim = Sim::started(two(60_000, json!({"max_time_ms": 150_000})));

    // Act
    let d = sim.cmd(add_time("black", 120_000, Some("arbiter")), 5_000);

    // Assert
    assert_eq!(d.state.version, 3);
    let ev = &d.events[0];
    assert_eq!(ev.event_type, EventType::TimeAdded);
    assert_eq!(ev.participant_id, Some(pid("black")));
    assert_eq!(ev.metadata["ms"], json!(120_000));
    assert_eq!(ev.metadata["reason"], json!("arbiter"));
    assert_eq!(ev.time_remaining_ms, Some(150_000));
    assert_eq!(sim.p("black", 5_000).total_time_ms, 150_000);
    // The running clock's deadline moves with its bank.
    sim.cmd(add_time("white", 60_000, None), 6_000);
    assert_eq!(sim.deadline(), Some(120_000));
    assert_eq!(
        sim.of_type(EventType::TimeAdded)[1].metadata["reason"],
        Value::Null
    );
}

#[test]
fn added_time_works_in_any_status_but_ended() {
    let mut sim = Sim::new(two(60_000, json!({})));
    sim.cmd(add_time("white", 1_000, None), 0);
    assert_eq!(sim.p("white", 0).total_time_ms, 61_000);
    sim.cmd(Command::Start, 0);
    sim.cmd(Command::Pause, 1_000);
    sim.cmd(add_time("white", 1_000, None), 2_000);
    sim.cmd(Command::Complete, 3_000);
    assert!(matches!(
        sim.try_cmd(add_time("white", 1_000, None), 4_000),
        Err(TransitionError::InvalidTransition { .. })
    ));
    assert!(matches!(
        Sim::new(two(60_000, json!({}))).try_cmd(add_time("nobody", 1_000, None), 0),
        Err(TransitionError::UnknownParticipant(_))
    ));
    assert_eq!(AddMs::new(0), None);
    assert_eq!(AddMs::new(3_600_001), None);
}

#[test]
fn added_time_to_a_group() {
    let mut sim = Sim::started(json!({
        "sync_mode": "per_group",
        "participants": [{"participant_id": "a", "group_id": "red"},
                         {"participant_id": "b", "group_id": "blue"}],
        "groups": [{"group_id": "red", "total_time_ms": 60000},
                   {"group_id": "blue", "total_time_ms": 60000}]
    }));
    let d = sim.cmd(
        Command::AddTime {
            target: AddTarget::Group(GroupId::parse("blue").expect("id")),
            ms: AddMs::new(5_000).expect("in range"),
            reason: None,
        },
        1_000,
    );
    assert_eq!(d.events[0].group_id, GroupId::parse("blue").ok());
    assert_eq!(d.events[0].time_remaining_ms, Some(65_000));
    assert_eq!(sim.view(1_000).groups[1].total_time_ms, 65_000);
}

#[test]
fn added_time_is_for_the_owner_and_admins() {
    let s = Sim::new(two(60_000, json!({}))).state;
    let actor = |role, sub: &str| Actor {
        sub: Some(sub.into()),
        role,
        sid: None,
        pid: Some(pid("white")),
    };
    assert!(authorize(
        &actor(Role::Admin, "x"),
        Action::AddTime,
        Some(&s)
    ));
    assert!(authorize(
        &actor(Role::Host, "host-1"),
        Action::AddTime,
        Some(&s)
    ));
    assert!(!authorize(
        &actor(Role::Host, "other"),
        Action::AddTime,
        Some(&s)
    ));
    assert!(!authorize(
        &actor(Role::Player, "p"),
        Action::AddTime,
        Some(&s)
    ));
    assert!(!authorize(
        &actor(Role::Viewer, "v"),
        Action::AddTime,
        Some(&s)
    ));
}

// ---------------------------------------------------------------------------
// Scheduled start
// ---------------------------------------------------------------------------

fn scheduled() -> Sim {
    Sim::new(two(60_000, json!({"start_at_ms": at(10_000)})))
}

#[test]
fn a_scheduled_session_starts_by_itself_at_exactly_start_at() {
    // Arrange
    let mut sim = scheduled();
    assert_eq!(sim.deadline(), Some(10_000));
    assert_eq!(sim.view(9_999).status, Status::Pending);

    // Act: the scheduler runs 2 s late.
    let d = sim.cmd(Command::Timeout, 12_000);

    // Assert
    assert_eq!(d.fired_deadlines, [at(10_000)]);
    let ev = &d.events[0];
    assert_eq!(ev.event_type, EventType::SessionStarted);
    assert_eq!(ev.at_ms, at(10_000));
    assert_eq!(ev.metadata["scheduled"], json!(true));
    let v = sim.view(12_000);
    assert_eq!(v.session_started_at_ms, Some(at(10_000)));
    assert_eq!(participant(&v, "white").time_remaining_ms, 58_000);
    // A read before any worker ran shows the same.
    assert_eq!(scheduled().view(12_000), v);
}

#[test]
fn a_manual_start_before_start_at_starts_at_once_and_after_it_changes_nothing() {
    let mut early = scheduled();
    early.cmd(Command::Start, 4_000);
    assert_eq!(early.view(4_000).session_started_at_ms, Some(at(4_000)));
    assert_eq!(early.deadline(), Some(64_000));

    let mut late = scheduled();
    let d = late.cmd(Command::Start, 11_000);
    assert_eq!(d.state.version, 2);
    assert_eq!(late.view(11_000).session_started_at_ms, Some(at(10_000)));
}

#[test]
fn start_at_is_validated_against_now() {
    let body = |start: i64| json!({"sync_mode": "count_up", "start_at_ms": start});
    assert!(SessionConfig::parse_at(&body(at(0)), at(0)).is_ok());
    assert!(SessionConfig::parse_at(&body(at(7 * 86_400_000)), at(0)).is_ok());
    for bad in [at(-1), at(7 * 86_400_000 + 1)] {
        let errors = SessionConfig::parse_at(&body(bad), at(0)).expect_err("out of window");
        assert_eq!(errors[0].field, "start_at_ms");
    }
    // parse alone checks the type; parse_at adds the window to other errors.
    assert!(SessionConfig::parse(&body(at(-1))).is_ok());
    let errors = SessionConfig::parse_at(
        &json!({"sync_mode": "count_up", "increment_ms": -1, "start_at_ms": 5}),
        at(0),
    )
    .expect_err("two errors");
    let names: Vec<_> = errors.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(names, ["increment_ms", "start_at_ms"]);
    assert_eq!(
        fields(json!({"sync_mode": "count_up", "start_at_ms": "soon"})),
        ["start_at_ms"]
    );
}

#[tokio::test]
async fn the_service_refuses_a_start_at_in_the_past() {
    // Arrange
    let mut store = MockSessionStore::new();
    store.expect_publishes_commits().return_const(false);
    store.expect_create().never();
    let mut bus = MockEventBus::new();
    bus.expect_publish().never();
    let mut clock = MockClock::new();
    clock.expect_now_ms().return_const(at(0));
    let svc = SessionService::new(Arc::new(store), Arc::new(bus), Arc::new(clock));
    let cfg = SessionConfig::parse(&two(60_000, json!({"start_at_ms": at(-5)})))
        .expect("valid without now");

    // Act
    let r = svc.create(&Actor::anonymous_admin(), cfg, sid()).await;

    // Assert
    match r {
        Err(ServiceError::Invalid(errors)) => assert_eq!(errors[0].field, "start_at_ms"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Config of the other rules, and old sessions.
// ---------------------------------------------------------------------------

#[test]
fn lag_compensation_is_validated() {
    assert_eq!(
        fields(two(60_000, json!({"lag_compensation": {"enabled": "yes"}}))),
        ["lag_compensation.enabled"]
    );
    assert_eq!(
        fields(two(60_000, json!({"lag_compensation": true}))),
        ["lag_compensation"]
    );
    assert_eq!(
        fields(json!({"sync_mode": "count_up", "lag_compensation": {"enabled": true}})),
        ["lag_compensation"]
    );
    let off = SessionConfig::parse(&two(
        60_000,
        json!({"lag_compensation": {"enabled": false}}),
    ))
    .expect("valid");
    assert!(!off.lag_compensation);
}

#[test]
fn the_view_fields_of_a_session_without_the_new_rules() {
    let sim = Sim::started(two(60_000, json!({"increment_ms": 2000})));
    let w = sim.p("white", 1_000);
    assert_eq!(
        (
            w.stage_index,
            w.moves_to_next_stage,
            w.delay_remaining_ms,
            w.lag_quota_ms
        ),
        (0, None, None, None)
    );
    let v = sim.view(1_000);
    assert!(v.stages.is_empty() && v.warnings_ms.is_empty() && v.start_at_ms.is_none());
}

#[test]
fn delay_and_lag_need_a_mode_with_banks_and_new_events_have_wire_names() {
    assert_eq!(
        fields(json!({"sync_mode": "per_cycle", "time_per_cycle_ms": 5000,
            "participants": [{"participant_id": "a"}], "delay_ms": 1000, "delay_mode": "simple"})),
        ["delay_ms"]
    );
    for (ty, name) in [
        (EventType::TimeWarning, "time_warning"),
        (EventType::TimeAdded, "time_added"),
    ] {
        assert_eq!(ty.as_str(), name);
        assert_eq!(EventType::parse(name), Some(ty));
        assert!(ty.is_notable() && !ty.is_timeout());
    }
    assert!(EventType::SessionExpired.is_notable());
    assert!(!EventType::CycleSwitched.is_notable());
}

/// The scheduler's path: each new deadline is in the commit's deadline
/// (the index), `fire_claimed` applies it once, and a second claim of the
/// same state finds nothing due.
#[tokio::test]
async fn warnings_and_scheduled_starts_go_through_the_deadline_index_once() {
    let sim = Sim::new(two(
        60_000,
        json!({"start_at_ms": at(10_000), "warnings_ms": [30000]}),
    ));
    let stored = sim.state.clone();
    assert_eq!(next_deadline(&stored), Some(at(10_000)));
    let commits: Arc<std::sync::Mutex<Vec<Commit>>> = Arc::default();
    let mut store = MockSessionStore::new();
    store.expect_publishes_commits().return_const(false);
    let log = commits.clone();
    store.expect_commit().times(1).returning(move |c| {
        log.lock().expect("lock").push(c.clone());
        Ok(None)
    });
    let mut bus = MockEventBus::new();
    bus.expect_publish().returning(|_| ());
    let mut clock = MockClock::new();
    clock.expect_now_ms().return_const(at(40_500));
    let svc = SessionService::new(Arc::new(store), Arc::new(bus), Arc::new(clock));

    // The scheduled start, then (same catch-up) white's 30 s warning at 40 s.
    let fired = svc
        .fire_claimed(Claimed {
            id: sid(),
            state: Some(stored.clone()),
        })
        .await
        .expect("fired");
    assert_eq!(fired, [at(10_000), at(40_000)]);
    let first = commits.lock().expect("lock")[0].clone();
    let types: Vec<_> = first.events.iter().map(|e| e.event_type).collect();
    assert_eq!(types, [EventType::SessionStarted, EventType::TimeWarning]);
    assert_eq!(first.deadline, Some(at(70_000)));
    assert_eq!(first.state.version, 3);
    // Another instance holding the old claim loses the race in the store;
    // with the committed state, nothing is due.
    let again = svc
        .fire_claimed(Claimed {
            id: sid(),
            state: Some(first.state.clone()),
        })
        .await
        .expect("nothing due");
    assert!(again.is_empty());
    // An added time moves the indexed deadline with the bank.
    assert_eq!(commits.lock().expect("lock").len(), 1);
    let d = machine::decide(
        &first.state,
        &add_time("white", 5_000, None),
        None,
        at(41_000),
    )
    .expect("added");
    assert_eq!(next_deadline(&d.state), Some(at(75_000)));
}
