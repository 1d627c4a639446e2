//! Properties of the time model over random configs and command sequences: versions rise by one per change, nothing is negative, reads equal committed timeouts, lateness never shows.

use std::collections::HashSet;

use kairos_domain::machine::{self, next_deadline};
use kairos_domain::view::{SessionView, view};
use kairos_domain::{
    Command, Decision, Event, EventType, ParticipantId, Session, SessionConfig, SessionId, Status,
    SyncMode, TransitionError,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// A realistic epoch instant; every generated time is after it.
const T0: i64 = 1_760_970_600_000;

fn sid() -> SessionId {
    "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("a valid uuid")
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// One participant-facing knob set; turned into a JSON config by [`config_json`].
#[derive(Debug, Clone)]
struct Setup {
    mode: SyncMode,
    timeout: &'static str,
    auto_advance: bool,
    participants: usize,
    groups: usize,
    banks: Vec<i64>,
    increment_ms: i64,
    max_time_ms: Option<i64>,
    cycle_ms: i64,
    total_ms: i64,
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
        prop_oneof![Just("end_session"), Just("skip_cycle"), Just("auto_action")],
        any::<bool>(),
        0usize..=4,
        1usize..=3,
        prop::collection::vec(1_000i64..=20_000, 4),
        prop_oneof![Just(0i64), 1i64..=3_000],
        prop::option::of(1_000i64..=40_000),
        1_000i64..=10_000,
        1_000i64..=60_000,
    )
        .prop_map(
            |(
                mode,
                timeout,
                auto_advance,
                n,
                groups,
                banks,
                increment_ms,
                max_time_ms,
                cycle_ms,
                total_ms,
            )| {
                // Modes with turns need someone; global and count_up may have nobody.
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
                    banks,
                    increment_ms,
                    max_time_ms,
                    cycle_ms,
                    total_ms,
                }
            },
        )
}

fn config_json(s: &Setup) -> Value {
    let participants: Vec<Value> = (0..s.participants)
        .map(|i| {
            let mut p = json!({"participant_id": format!("p{i}")});
            if s.mode == SyncMode::PerParticipant {
                p["total_time_ms"] = json!(s.banks[i]);
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
        "action_on_timeout": {"type": s.timeout, "action": "fold", "penalty": 1},
        "auto_advance": s.auto_advance,
    });
    if let Some(max) = s.max_time_ms {
        c["max_time_ms"] = json!(max);
    }
    match s.mode {
        SyncMode::PerCycle => c["time_per_cycle_ms"] = json!(s.cycle_ms),
        SyncMode::PerGroup => {
            c["groups"] = (0..s.groups)
                .map(|g| json!({"group_id": format!("g{g}"), "total_time_ms": s.banks[g]}))
                .collect();
        }
        SyncMode::Global => c["total_time_ms"] = json!(s.total_ms),
        SyncMode::PerParticipant | SyncMode::CountUp => {}
    }
    c
}

fn create(s: &Setup, at: i64) -> Session {
    let cfg = SessionConfig::parse(&config_json(s)).expect("generated configs are valid");
    machine::create(cfg, sid(), None, at).0
}

/// A client command (or the scheduler's timeout) in a random sequence.
#[derive(Debug, Clone)]
enum Op {
    Start,
    Switch,
    SwitchTo(usize),
    Pause,
    Resume,
    Complete,
    Cancel,
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        8 => Just(Op::Switch),
        2 => (0usize..6).prop_map(Op::SwitchTo),
        2 => Just(Op::Pause),
        3 => Just(Op::Resume),
        1 => Just(Op::Complete),
        1 => Just(Op::Cancel),
        3 => Just(Op::Timeout),
    ]
}

impl Op {
    fn command(&self) -> Command {
        match self {
            Op::Start => Command::Start,
            Op::Switch => Command::Switch {
                next: None,
                lag_ms: None,
            },
            Op::SwitchTo(i) => Command::Switch {
                next: Some(ParticipantId::parse(&format!("p{i}")).expect("valid")),
                lag_ms: None,
            },
            Op::Pause => Command::Pause,
            Op::Resume => Command::Resume,
            Op::Complete => Command::Complete,
            Op::Cancel => Command::Cancel,
            Op::Timeout => Command::Timeout,
        }
    }
}

/// How a step sets `expected_version`.
#[derive(Debug, Clone, Copy)]
enum Expect {
    None,
    Stored,
    Wrong,
}

/// One step: wait `wait_ms`, then run `op`; `late_ms` and `later_ms` pick
/// instants for the lateness and read checks.
#[derive(Debug, Clone)]
struct Step {
    wait_ms: i64,
    op: Op,
    expect: Expect,
    late_ms: i64,
    later_ms: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0i64), 0i64..=8_000, 8_000i64..=40_000],
        op(),
        prop_oneof![6 => Just(Expect::None), 2 => Just(Expect::Stored), 1 => Just(Expect::Wrong)],
        0i64..=30_000,
        0i64..=30_000,
    )
        .prop_map(|(wait_ms, op, expect, late_ms, later_ms)| Step {
            wait_ms,
            op,
            expect,
            late_ms,
            later_ms,
        })
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Nothing in a view is negative, and the mode's own bookkeeping adds up,
/// at any instant (even one before the last change).
fn check_view(v: &SessionView) -> Result<(), TestCaseError> {
    prop_assert!(v.elapsed_ms >= 0, "elapsed {}", v.elapsed_ms);
    prop_assert!(v.time_remaining_ms.is_none_or(|t| t >= 0));
    for p in &v.participants {
        prop_assert!(
            p.total_time_ms >= 0 && p.time_used_ms >= 0 && p.time_remaining_ms >= 0,
            "{p:?}"
        );
    }
    for g in &v.groups {
        prop_assert!(
            g.total_time_ms >= 0 && g.time_used_ms >= 0 && g.time_remaining_ms >= 0,
            "{g:?}"
        );
        prop_assert_eq!(
            g.time_remaining_ms,
            (g.total_time_ms - g.time_used_ms).max(0)
        );
        // A group that ran out used exactly its bank.
        if g.has_expired {
            prop_assert_eq!(g.time_used_ms, g.total_time_ms, "{:?}", g);
        }
    }
    match v.sync_mode {
        SyncMode::PerParticipant => {
            // Every ms of running time is charged to exactly one participant.
            let used: i128 = v
                .participants
                .iter()
                .map(|p| i128::from(p.time_used_ms))
                .sum();
            prop_assert_eq!(
                used,
                i128::from(v.elapsed_ms),
                "sum of time_used_ms vs elapsed_ms"
            );
            for p in &v.participants {
                prop_assert_eq!(
                    p.time_remaining_ms,
                    (p.total_time_ms - p.time_used_ms).max(0)
                );
                // Nobody runs over their bank; who ran out used exactly the bank.
                prop_assert!(p.time_used_ms <= p.total_time_ms, "{p:?}");
                if p.has_expired {
                    prop_assert_eq!(p.time_used_ms, p.total_time_ms, "{:?}", p);
                }
            }
        }
        SyncMode::PerCycle => {
            let cycle = v.time_per_cycle_ms.expect("per_cycle has a cycle length");
            for p in &v.participants {
                prop_assert!(p.time_remaining_ms <= cycle);
                if !p.is_active {
                    prop_assert_eq!(p.time_remaining_ms, cycle);
                }
            }
        }
        SyncMode::PerGroup => {
            let used: i128 = v.groups.iter().map(|g| i128::from(g.time_used_ms)).sum();
            prop_assert_eq!(
                used,
                i128::from(v.elapsed_ms),
                "sum of groups' time_used_ms vs elapsed_ms"
            );
        }
        SyncMode::Global => {
            let total = v.total_time_ms.expect("global has a bank");
            prop_assert_eq!(v.time_remaining_ms, Some((total - v.elapsed_ms).max(0)));
            prop_assert!(v.elapsed_ms <= total);
        }
        SyncMode::CountUp => {
            if let Some(max) = v.max_time_ms {
                prop_assert!(v.elapsed_ms <= max);
            }
        }
    }
    Ok(())
}

/// Running time never exceeds the wall time since the start (for reads at
/// or after every change, as in [`run`]).
fn check_wall_time(v: &SessionView) -> Result<(), TestCaseError> {
    if let Some(start) = v.session_started_at_ms {
        let end = v.session_completed_at_ms.unwrap_or(v.server_time_ms);
        prop_assert!(
            v.elapsed_ms <= end.saturating_sub(start).max(0),
            "running time beyond wall time"
        );
    }
    Ok(())
}

/// A successful decision raises the version by exactly one per change.
fn check_versions(before: &Session, d: &Decision) -> Result<(), TestCaseError> {
    prop_assert!(d.state.version > before.version);
    let versions: Vec<u64> = d.events.iter().map(|e| e.version).collect();
    let expected: Vec<u64> = (before.version + 1..=d.state.version).collect();
    let mut distinct = versions.clone();
    distinct.dedup();
    prop_assert!(
        versions.is_sorted(),
        "events out of version order: {versions:?}"
    );
    prop_assert_eq!(
        &distinct,
        &expected,
        "every version has events, none skipped"
    );
    let intermediate: Vec<u64> = d.intermediate.iter().map(|s| s.version).collect();
    prop_assert_eq!(&intermediate[..], &expected[..expected.len() - 1]);
    // Timeouts are applied as of their deadlines, in order, each its own version.
    prop_assert!(d.fired_deadlines.is_sorted());
    for (k, deadline) in d.fired_deadlines.iter().enumerate() {
        let v = before.version + 1 + k as u64;
        prop_assert!(
            d.events
                .iter()
                .filter(|e| e.version == v)
                .all(|e| e.at_ms == *deadline),
            "events of version {} not at its deadline {}",
            v,
            deadline
        );
    }
    Ok(())
}

/// Event durations are never negative, timeouts leave nothing on the clock,
/// and event ids never repeat within a session.
fn check_events(events: &[Event], seen: &mut HashSet<u128>) -> Result<(), TestCaseError> {
    for e in events {
        prop_assert!(e.time_remaining_ms.is_none_or(|t| t >= 0), "{e:?}");
        prop_assert!(e.time_elapsed_ms.is_none_or(|t| t >= 0), "{e:?}");
        prop_assert!(
            seen.insert(e.event_id.as_u128()),
            "duplicate event id {}",
            e.event_id
        );
        if e.event_type.is_timeout() {
            prop_assert_eq!(e.time_remaining_ms.unwrap_or(0), 0);
        }
    }
    Ok(())
}

/// The read at `t` equals the state with every due deadline committed, read at `t`.
fn check_read_equals_commit(state: &Session, t: i64) -> Result<(), TestCaseError> {
    let read = view(state, t);
    match machine::decide(state, &Command::Timeout, None, t) {
        Ok(d) => {
            prop_assert!(d.fired_deadlines.iter().all(|&x| x <= t));
            prop_assert_eq!(view(&d.state, t), read.clone());
            prop_assert_eq!(d.state.version, read.version);
            prop_assert!(next_deadline(&d.state).is_none_or(|x| x > t));
        }
        Err(e) => {
            prop_assert_eq!(e, TransitionError::NothingDue);
            prop_assert!(next_deadline(state).is_none_or(|x| x > t));
            prop_assert_eq!(read.version, state.version);
        }
    }
    Ok(())
}

/// Committing the next timeout late gives what committing it on time gives.
fn check_lateness(state: &Session, late_ms: i64, later_ms: i64) -> Result<(), TestCaseError> {
    let Some(deadline) = next_deadline(state) else {
        return Ok(());
    };
    let on_time = machine::decide(state, &Command::Timeout, None, deadline).expect("due on time");
    let late =
        machine::decide(state, &Command::Timeout, None, deadline + late_ms).expect("due late");
    prop_assert_eq!(on_time.fired_deadlines[0], deadline);
    prop_assert_eq!(late.fired_deadlines[0], deadline);
    prop_assert!(on_time.events.iter().all(|e| e.at_ms == deadline));
    // When the timeout ends the session, the clock that ran out stays at zero.
    let at_deadline = view(&on_time.state, deadline);
    if let (Status::Expired, Some(p)) = (at_deadline.status, state.active_participant()) {
        let shown = at_deadline
            .participants
            .iter()
            .find(|v| v.participant_id == p.id)
            .expect("the participant is in the view");
        prop_assert_eq!(shown.time_remaining_ms, 0, "{:?}", shown);
    }
    let read_at = deadline + late_ms + later_ms;
    prop_assert_eq!(view(&on_time.state, read_at), view(&late.state, read_at));
    // A late switch is judged as of the deadline too: same as the timeout alone.
    let switch = machine::decide(
        state,
        &Command::Switch {
            next: None,
            lag_ms: None,
        },
        None,
        deadline + late_ms,
    )
    .expect("absorbed into the timeout");
    prop_assert_eq!(&switch.state, &late.state);
    prop_assert_eq!(
        switch.expired_participant_id,
        state.active_participant().map(|p| p.id.clone())
    );
    Ok(())
}

fn run(setup: &Setup, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut t = T0;
    let mut state = create(setup, t);
    let mut seen = HashSet::new();
    let mut last_at = t;
    check_view(&view(&state, t))?;
    for step in steps {
        t += step.wait_ms;

        // Reads at t are consistent, whatever happened since the last commit.
        let read = view(&state, t);
        check_view(&read)?;
        check_wall_time(&read)?;
        check_view(&view(&state, t + step.later_ms))?;
        check_read_equals_commit(&state, t)?;
        check_lateness(&state, step.late_ms, step.later_ms)?;
        prop_assert!(view(&state, t + step.later_ms).elapsed_ms >= read.elapsed_ms);

        // The command.
        let expected = match step.expect {
            Expect::None => None,
            Expect::Stored => Some(state.version),
            Expect::Wrong => Some(state.version + 100),
        };
        let command = step.op.command();
        match machine::decide(&state, &command, expected, t) {
            Ok(d) => {
                // expected_version is compared after the due deadlines.
                prop_assert!(
                    expected.is_none_or(|e| e == read.version),
                    "should have conflicted"
                );
                check_versions(&state, &d)?;
                check_events(&d.events, &mut seen)?;
                for e in &d.events {
                    // Only auto_action timeouts carry the client's action.
                    if e.action.is_some() {
                        prop_assert_eq!(setup.timeout, "auto_action");
                        prop_assert!(e.event_type.is_timeout(), "{:?}", e);
                    }
                    prop_assert!(e.at_ms >= last_at, "event instants go back: {e:?}");
                    last_at = e.at_ms;
                }
                if matches!(command, Command::Switch { .. })
                    && expected.is_none()
                    && !d.fired_deadlines.is_empty()
                {
                    // Judged as of the deadline: the switch itself is not applied.
                    prop_assert!(
                        d.events
                            .iter()
                            .all(|e| e.event_type != EventType::CycleSwitched),
                        "switch applied"
                    );
                    prop_assert!(d.expired_participant_id.is_some() || state.active.is_none());
                }
                check_view(&view(&d.state, t))?;
                state = d.state;
            }
            Err(TransitionError::Conflict {
                expected: e,
                actual,
            }) => {
                prop_assert_eq!(Some(e), expected);
                // The actual version is the one a read at t shows.
                prop_assert_eq!(actual, read.version);
                prop_assert_ne!(e, actual);
            }
            Err(TransitionError::InvalidTransition {
                status,
                command: name,
            }) => {
                prop_assert_eq!(status, read.status);
                prop_assert_eq!(name, command.name());
            }
            Err(TransitionError::NothingDue) => {
                prop_assert!(matches!(command, Command::Timeout), "only a timeout");
            }
            Err(
                TransitionError::UnknownParticipant(_) | TransitionError::ParticipantExpired(_),
            ) => {
                prop_assert!(
                    matches!(
                        command,
                        Command::Switch {
                            next: Some(_),
                            lag_ms: None
                        }
                    ),
                    "a named next"
                );
                prop_assert_eq!(read.status, Status::Running);
            }
            // Joining and leaving have properties of their own (tests/participants.rs).
            Err(
                e
                @ (TransitionError::ParticipantExists(_) | TransitionError::InvalidParticipant(_)),
            ) => {
                prop_assert!(false, "no participant joins in these sequences: {e:?}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_keep_every_invariant(
        setup in setup(),
        steps in prop::collection::vec(step(), 1..30),
    ) {
        run(&setup, &steps)?;
    }

    #[test]
    fn sessions_that_always_start_keep_every_invariant(
        setup in setup(),
        steps in prop::collection::vec(step(), 1..30),
    ) {
        // Most random sequences start early; this one starts at once so the
        // running states get most of the cases.
        let mut steps = steps;
        steps.insert(0, Step { wait_ms: 0, op: Op::Start, expect: Expect::None, late_ms: 0, later_ms: 0 });
        run(&setup, &steps)?;
    }
}

/// An instant anywhere in `i64`, the edges and zero made likely.
fn any_instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0i64),
        -100_000i64..=100_000,
        any::<i64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_instants_never_panic_and_never_go_negative(
        setup in setup(),
        created in any_instant(),
        ops in prop::collection::vec((op(), any_instant()), 1..12),
        reads in prop::collection::vec(any_instant(), 1..4),
    ) {
        // per_cycle with skipping timeouts and auto_advance has one deadline
        // per cycle forever: across the i64 range every read runs the whole
        // catch-up bound. Its extremes are covered once in tests/modes.rs.
        let mut setup = setup;
        if setup.mode == SyncMode::PerCycle && setup.timeout != "end_session" {
            setup.auto_advance = false;
        }
        let mut state = create(&setup, created);
        let mut seen = HashSet::new();
        for (op, now) in &ops {
            if let Ok(d) = machine::decide(&state, &op.command(), None, *now) {
                check_versions(&state, &d)?;
                check_events(&d.events, &mut seen)?;
                state = d.state;
            }
            for &r in &reads {
                check_view(&view(&state, r))?;
            }
        }
    }
}
