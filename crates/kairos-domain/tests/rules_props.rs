//! Properties of the rules of contract section 8 over random configs (stages, delay, lag compensation, warnings, scheduled start) and random command timings: banks add up, a read equals applying the deadlines then reading, warnings come exactly once per turn and threshold, delay is never banked, lag quotas stay in bounds, stage time is added exactly once per stage entered.

use std::collections::{BTreeMap, HashSet};

use kairos_domain::clock::lag_gain_ms;
use kairos_domain::machine::{self, next_deadline};
use kairos_domain::view::{SessionView, view};
use kairos_domain::{
    AddMs, AddTarget, Command, DelayMode, Event, EventType, ParticipantId, Session, SessionConfig,
    SessionId, Status, SyncMode, TransitionError,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const T0: i64 = 1_760_970_600_000;

/// Cases per property; the three properties run 3 x this many sessions of
/// up to 40 commands each (about 5 s in a debug build).
const CASES: u32 = 1024;

#[derive(Debug, Clone)]
struct StageSpec {
    moves: i64,
    add_ms: i64,
    increment_ms: i64,
    delay_ms: i64,
    delay_mode: &'static str,
}

#[derive(Debug, Clone)]
struct Setup {
    mode: SyncMode,
    participants: usize,
    bank: i64,
    stages: Vec<StageSpec>,
    increment_ms: i64,
    delay_ms: i64,
    delay_mode: &'static str,
    lag: bool,
    warnings: Vec<i64>,
    start_in: Option<i64>,
    max_time_ms: Option<i64>,
    timeout: &'static str,
    auto_advance: bool,
}

fn delay() -> impl Strategy<Value = (i64, &'static str)> {
    prop_oneof![
        Just((0i64, "none")),
        (
            300i64..=3_000,
            prop_oneof![Just("simple"), Just("bronstein")]
        ),
    ]
}

fn stage() -> impl Strategy<Value = StageSpec> {
    (1i64..=3, 0i64..=6_000, 0i64..=2_000, delay()).prop_map(
        |(moves, add_ms, increment_ms, (delay_ms, delay_mode))| StageSpec {
            moves,
            add_ms,
            increment_ms,
            delay_ms,
            delay_mode,
        },
    )
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            3 => Just(SyncMode::PerParticipant),
            2 => Just(SyncMode::PerGroup),
            1 => Just(SyncMode::Global),
        ],
        2usize..=3,
        2_000i64..=20_000,
        prop::option::of(prop::collection::vec(stage(), 1..=3)),
        prop_oneof![Just(0i64), 1i64..=2_000],
        delay(),
        any::<bool>(),
        prop::sample::subsequence(vec![1_000i64, 2_500, 5_000, 12_000], 0..=4),
        prop::option::of(0i64..=6_000),
        prop::option::of(5_000i64..=40_000),
        prop_oneof![Just("end_session"), Just("skip_cycle")],
        any::<bool>(),
    )
        .prop_map(
            |(
                mode,
                participants,
                bank,
                stages,
                increment_ms,
                (delay_ms, delay_mode),
                lag,
                warnings,
                start_in,
                max_time_ms,
                timeout,
                auto_advance,
            )| {
                let timed = matches!(mode, SyncMode::PerParticipant | SyncMode::PerGroup);
                let stages = stages.filter(|_| timed).unwrap_or_default();
                let staged = !stages.is_empty();
                Setup {
                    mode,
                    participants,
                    bank,
                    stages,
                    increment_ms: if staged { 0 } else { increment_ms },
                    delay_ms: if staged || !timed { 0 } else { delay_ms },
                    delay_mode: if staged || !timed { "none" } else { delay_mode },
                    lag: lag && timed,
                    warnings,
                    start_in,
                    max_time_ms,
                    timeout,
                    auto_advance,
                }
            },
        )
}

fn config_json(s: &Setup) -> Value {
    let mut cfg = json!({
        "sync_mode": s.mode.as_str(),
        "increment_ms": s.increment_ms,
        "max_time_ms": s.max_time_ms,
        "action_on_timeout": {"type": s.timeout},
        "auto_advance": s.auto_advance,
        "lag_compensation": {"enabled": s.lag},
        "warnings_ms": s.warnings,
        "start_at_ms": s.start_in.map(|d| T0 + d),
    });
    let participants: Vec<Value> = (0..s.participants)
        .map(|i| match s.mode {
            SyncMode::PerGroup => json!({"participant_id": format!("p{i}"), "group_id": format!("g{}", i % 2)}),
            _ => json!({"participant_id": format!("p{i}"), "total_time_ms": s.bank + 1_000 * i as i64}),
        })
        .collect();
    cfg["participants"] = json!(participants);
    match s.mode {
        SyncMode::PerGroup => {
            cfg["groups"] = json!([
                {"group_id": "g0", "total_time_ms": s.bank},
                {"group_id": "g1", "total_time_ms": s.bank + 1_000}
            ]);
        }
        SyncMode::Global => cfg["total_time_ms"] = json!(s.bank),
        _ => {}
    }
    if s.delay_ms > 0 {
        cfg["delay_ms"] = json!(s.delay_ms);
        cfg["delay_mode"] = json!(s.delay_mode);
    }
    if !s.stages.is_empty() {
        let last = s.stages.len() - 1;
        let stages: Vec<Value> = s
            .stages
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let mut v = json!({"increment_ms": st.increment_ms});
                if i < last {
                    v["moves"] = json!(st.moves);
                }
                if i > 0 {
                    v["add_ms"] = json!(st.add_ms);
                }
                if st.delay_ms > 0 {
                    v["delay_ms"] = json!(st.delay_ms);
                    v["delay_mode"] = json!(st.delay_mode);
                }
                v
            })
            .collect();
        cfg["stages"] = json!(stages);
    }
    cfg
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Switch(Option<u32>),
    Pause,
    Resume,
    AddTime(usize, i64),
    Timeout,
    Complete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        6 => Just(Op::Switch(None)),
        3 => (0u32..=3_000).prop_map(|lag| Op::Switch(Some(lag))),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        1 => (0usize..3, 1_000i64..=20_000).prop_map(|(i, ms)| Op::AddTime(i, ms)),
        3 => Just(Op::Timeout),
        1 => Just(Op::Complete),
    ]
}

fn steps(started: bool) -> impl Strategy<Value = Vec<(i64, Op)>> {
    prop::collection::vec((0i64..=4_000, op()), 1..=40).prop_map(move |mut v| {
        if started {
            v.insert(0, (0, Op::Start));
        }
        v
    })
}

fn command(op: &Op, n: usize) -> Command {
    match op {
        Op::Start => Command::Start,
        Op::Switch(lag_ms) => Command::Switch {
            next: None,
            lag_ms: *lag_ms,
        },
        Op::Pause => Command::Pause,
        Op::Resume => Command::Resume,
        Op::AddTime(i, ms) => Command::AddTime {
            target: AddTarget::Participant(
                ParticipantId::parse(&format!("p{}", i % n)).expect("valid"),
            ),
            ms: AddMs::new(*ms).expect("in range"),
            reason: None,
        },
        Op::Timeout => Command::Timeout,
        Op::Complete => Command::Complete,
    }
}

fn sid() -> SessionId {
    "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("uuid")
}

/// The stage rules of the model, from the setup (not from the domain).
fn stage_of(setup: &Setup, index: u32) -> (i64, Option<i64>, i64, &'static str) {
    match setup.stages.get(index as usize) {
        None if setup.stages.is_empty() => {
            (setup.increment_ms, None, setup.delay_ms, setup.delay_mode)
        }
        None => (0, None, 0, "none"),
        Some(st) => {
            let last = index as usize + 1 == setup.stages.len();
            (
                st.increment_ms,
                (!last).then_some(st.moves),
                st.delay_ms,
                st.delay_mode,
            )
        }
    }
}

fn raise(bank: i64, add: i64, cap: Option<i64>) -> i64 {
    let raised = bank + add;
    cap.map_or(raised, |c| raised.min(c).max(bank))
}

/// Banks add up; nothing negative; quotas in [0, 7 x gain].
fn check_view(setup: &Setup, s: &Session, v: &SessionView) -> Result<(), TestCaseError> {
    for (i, p) in v.participants.iter().enumerate() {
        prop_assert!(p.time_used_ms >= 0 && p.time_remaining_ms >= 0, "{p:?}");
        if setup.mode == SyncMode::PerParticipant {
            prop_assert_eq!(
                p.time_used_ms + p.time_remaining_ms,
                p.total_time_ms,
                "{:?}",
                p
            );
        }
        match (setup.lag, p.lag_quota_ms) {
            (false, q) => prop_assert_eq!(q, None),
            (true, Some(q)) => {
                let bank = s.participants[i].lag_gain_ms;
                let first_inc = setup
                    .stages
                    .first()
                    .map_or(setup.increment_ms, |st| st.increment_ms);
                let played_on = match setup.mode {
                    SyncMode::PerGroup => setup.bank + 1_000 * (i % 2) as i64,
                    _ => setup.bank + 1_000 * i as i64,
                };
                let gain = lag_gain_ms(played_on, first_inc);
                prop_assert_eq!(bank, gain);
                prop_assert!((0..=7 * gain).contains(&q), "quota {q} gain {gain}");
            }
            (true, None) => prop_assert!(false, "lag compensation on but no quota"),
        }
        if let Some(d) = p.delay_remaining_ms {
            prop_assert!(d >= 0 && p.is_active);
        }
    }
    for g in &v.groups {
        prop_assert!(g.time_used_ms >= 0 && g.time_remaining_ms >= 0);
        prop_assert_eq!(
            g.time_used_ms + g.time_remaining_ms,
            g.total_time_ms,
            "{:?}",
            g
        );
    }
    if let Some(r) = v.time_remaining_ms {
        prop_assert!(r >= 0);
    }
    Ok(())
}

/// A read at `t` equals applying every deadline up to `t`, then reading.
fn check_read_equals_apply(s: &Session, t: i64) -> Result<(), TestCaseError> {
    let read = view(s, t);
    match machine::decide(s, &Command::Timeout, None, t) {
        Ok(d) => {
            prop_assert_eq!(view(&d.state, t), read);
            prop_assert!(d.fired_deadlines.iter().all(|&f| f <= t));
            prop_assert!(d.fired_deadlines.windows(2).all(|w| w[0] <= w[1]));
        }
        Err(TransitionError::NothingDue) => {
            prop_assert!(next_deadline(s).is_none_or(|d| d > t));
            prop_assert_eq!(view(s, t).version, s.version);
        }
        Err(e) => prop_assert!(false, "timeout failed: {e}"),
    }
    Ok(())
}

/// The active clock's remaining time in `s` at `t`.
fn active_left(s: &Session, t: i64) -> Option<(ParticipantId, u32, i64)> {
    let v = view(s, t);
    let p = v.participants.iter().find(|p| p.is_active)?;
    Some((p.participant_id.clone(), p.cycle_count, p.time_remaining_ms))
}

/// What a run saw: every committed state by version, every event.
#[derive(Default)]
struct Log {
    states: BTreeMap<u64, Session>,
    events: Vec<Event>,
}

/// Warnings: as of the instant the threshold is reached, exactly once per
/// (participant, turn, threshold), never for a threshold the turn started
/// at or below.
fn check_warnings(setup: &Setup, log: &Log) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    for ev in log
        .events
        .iter()
        .filter(|e| e.event_type == EventType::TimeWarning)
    {
        let w = ev.time_remaining_ms.unwrap_or(-1);
        prop_assert!(setup.warnings.contains(&w));
        let s = &log.states[&ev.version];
        let (who, turn, left) = active_left(s, ev.at_ms).expect("an active clock");
        prop_assert_eq!(Some(&who), ev.participant_id.as_ref());
        prop_assert_eq!(left, w, "the warning's instant is when the clock shows it");
        prop_assert!(seen.insert((who.clone(), turn, w)), "twice: {ev:?}");
        // The state where this turn began, at its beginning.
        let start = log
            .states
            .values()
            .find(|st| {
                st.active_participant().map(|p| (&p.id, p.cycle_count)) == Some((&who, turn))
            })
            .expect("the turn's first state");
        let at = start.cycle_started_at_ms.unwrap_or(start.updated_at_ms);
        let (_, _, r0) = active_left(start, at).expect("active");
        prop_assert!(w < r0, "warned {w} in a turn that started at {r0}");
    }
    Ok(())
}

/// After every step at `t`: every threshold the running clock went below
/// in a turn that started above it has been warned.
fn check_warnings_complete(log: &Log, s: &Session, t: i64) -> Result<(), TestCaseError> {
    if s.status != Status::Running {
        return Ok(());
    }
    let Some((who, turn, left)) = active_left(s, t) else {
        return Ok(());
    };
    // A turn begins when its cycle does, running or not (after a skipped
    // cycle without auto_advance it begins paused).
    let Some(start) = log
        .states
        .values()
        .find(|st| st.active_participant().map(|p| (&p.id, p.cycle_count)) == Some((&who, turn)))
    else {
        return Ok(());
    };
    let at = start.cycle_started_at_ms.unwrap_or(start.updated_at_ms);
    let (_, _, r0) = active_left(start, at).expect("active");
    let added = log
        .events
        .iter()
        .any(|e| e.event_type == EventType::TimeAdded && e.version > start.version);
    for &w in &s.warnings_ms {
        if w < r0 && left < w && !added {
            prop_assert!(
                log.events
                    .iter()
                    .any(|e| e.event_type == EventType::TimeWarning
                        && e.participant_id.as_ref() == Some(&who)
                        && e.time_remaining_ms == Some(w)
                        && log.states[&e.version]
                            .active_participant()
                            .is_some_and(|p| p.cycle_count == turn)),
                "no warning for {w} (turn began at {r0}, now {left})"
            );
        }
    }
    Ok(())
}

/// Moves: charged the time beyond the delay less the compensation, never
/// negative (delay never banked); the bank gains the stage's increment,
/// and the next stage's add_ms exactly when the move completes the stage.
fn check_moves(setup: &Setup, log: &Log, events: &[Event]) -> Result<(), TestCaseError> {
    for ev in events
        .iter()
        .filter(|e| e.event_type == EventType::CycleSwitched)
    {
        let (Some(before), Some(after)) = (
            log.states.get(&(ev.version - 1)),
            log.states.get(&ev.version),
        ) else {
            continue;
        };
        let who = ev.participant_id.as_ref().expect("a mover");
        let i = before.participant_position(who).expect("known");
        let comp = ev
            .metadata
            .get("lag_compensated_ms")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        prop_assert!(comp >= 0);
        if !setup.lag {
            prop_assert_eq!(comp, 0);
        }
        let elapsed = ev.time_elapsed_ms.expect("elapsed");
        let (owner_before, owner_after, used_before, used_after) = match setup.mode {
            SyncMode::PerGroup => {
                let g = before
                    .group_position(before.participants[i].group_id.as_ref().expect("group"))
                    .expect("group");
                (
                    (
                        before.groups[g].total_time_ms,
                        before.groups[g].stage_index,
                        before.groups[g].stage_moves,
                    ),
                    (
                        after.groups[g].total_time_ms,
                        after.groups[g].stage_index,
                        after.groups[g].stage_moves,
                    ),
                    before.groups[g].time_used_ms,
                    after.groups[g].time_used_ms,
                )
            }
            SyncMode::PerParticipant => (
                (
                    before.participants[i].total_time_ms,
                    before.participants[i].stage_index,
                    before.participants[i].stage_moves,
                ),
                (
                    after.participants[i].total_time_ms,
                    after.participants[i].stage_index,
                    after.participants[i].stage_moves,
                ),
                before.participants[i].time_used_ms,
                after.participants[i].time_used_ms,
            ),
            _ => continue,
        };
        let (increment, moves, delay_ms, mode) = stage_of(setup, owner_before.1);
        let d = if mode == "none" { 0 } else { delay_ms };
        // Charged exactly the time beyond the delay, less the compensation.
        prop_assert_eq!(
            used_after - used_before,
            (elapsed - d).max(0).saturating_sub(comp).max(0)
        );
        // The stage's increment, then the next stage's add_ms when entered.
        let completes = moves.is_some_and(|m| i64::from(owner_before.2) + 1 >= m);
        let mut expected = raise(owner_before.0, increment, setup.max_time_ms);
        if completes {
            let add = setup.stages[owner_before.1 as usize + 1].add_ms;
            expected = raise(expected, add, setup.max_time_ms);
            prop_assert_eq!(owner_after.1, owner_before.1 + 1);
            prop_assert_eq!(owner_after.2, 0);
        } else {
            prop_assert_eq!(owner_after.1, owner_before.1);
        }
        prop_assert_eq!(owner_after.0, expected, "bank after the move");
        // The delay mode in force was the stage's.
        let shown = DelayMode::parse(mode).expect("a mode");
        prop_assert!(d == 0 || shown != DelayMode::None);
    }
    Ok(())
}

fn run(setup: &Setup, steps: &[(i64, Op)]) -> Result<(), TestCaseError> {
    let cfg = SessionConfig::parse(&config_json(setup))
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let (mut s, created) = machine::create(cfg, sid(), None, T0);
    let mut log = Log::default();
    log.states.insert(s.version, s.clone());
    log.events.push(created);
    let mut t = T0;
    let mut manual_start: Option<i64> = None;
    let mut stored_used: Vec<i64> = vec![0; s.participants.len()];
    for (dt, op) in steps {
        t += dt;
        // Reads at, and a little after, the step's instant.
        for probe in [t, t + dt / 2] {
            check_view(setup, &s, &view(&s, probe))?;
            check_read_equals_apply(&s, probe)?;
        }
        let cmd = command(op, setup.participants);
        match machine::decide(&s, &cmd, None, t) {
            Ok(d) => {
                if matches!(op, Op::Start) && s.status == Status::Pending && manual_start.is_none()
                {
                    manual_start = Some(t);
                }
                prop_assert!(d.state.version > s.version || d.events.is_empty());
                for st in &d.intermediate {
                    log.states.insert(st.version, st.clone());
                }
                log.states.insert(d.state.version, d.state.clone());
                log.events.extend(d.events.iter().cloned());
                check_moves(setup, &log, &d.events)?;
                s = d.state;
            }
            Err(TransitionError::NothingDue | TransitionError::InvalidTransition { .. }) => {
                // Refused; but the deadlines due are applied by any read.
                let settled = machine::settle_deadlines(&s, t).into_owned();
                if settled.version != s.version {
                    let d = machine::decide(&s, &Command::Timeout, None, t).expect("due");
                    for st in &d.intermediate {
                        log.states.insert(st.version, st.clone());
                    }
                    log.states.insert(d.state.version, d.state.clone());
                    log.events.extend(d.events.iter().cloned());
                    s = d.state;
                }
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
        // Charges are never negative: stored time used never falls.
        for (i, p) in s.participants.iter().enumerate() {
            prop_assert!(p.time_used_ms >= stored_used[i], "time used fell");
            stored_used[i] = p.time_used_ms;
        }
        check_view(setup, &s, &view(&s, t))?;
        check_warnings_complete(&log, &s, t)?;
    }
    check_warnings(setup, &log)?;
    // A scheduled start happens as of its instant.
    if let Some(start_in) = setup.start_in {
        let start_at = T0 + start_in;
        let started = log
            .events
            .iter()
            .find(|e| e.event_type == EventType::SessionStarted);
        let ended_pending = log
            .events
            .iter()
            .take_while(|e| e.event_type != EventType::SessionStarted)
            .any(|e| matches!(e.event_type, EventType::SessionCompleted));
        match manual_start {
            _ if ended_pending => prop_assert!(started.is_none()),
            Some(m) if m < start_at => {
                prop_assert_eq!(started.map(|e| e.at_ms), Some(m));
            }
            _ if t >= start_at => {
                prop_assert_eq!(started.map(|e| e.at_ms), Some(start_at));
                prop_assert_eq!(
                    log.states
                        .values()
                        .find(|st| st.status != Status::Pending)
                        .and_then(|st| st.session_started_at_ms),
                    Some(start_at)
                );
            }
            _ => prop_assert!(started.is_none()),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_time_controls_keep_every_rule(setup in setup(), steps in steps(false)) {
        run(&setup, &steps)?;
    }

    #[test]
    fn started_time_controls_keep_every_rule(setup in setup(), steps in steps(true)) {
        run(&setup, &steps)?;
    }

    #[test]
    fn lag_and_delay_controls_keep_every_rule(
        setup in setup().prop_filter("lag or delay", |s| s.lag || s.delay_ms > 0 || !s.stages.is_empty()),
        steps in steps(true),
    ) {
        run(&setup, &steps)?;
    }
}
