//! Fuzz target: arbitrary command sequences through the state machine.
//!
//! A session of any sync mode, timeout kind and `auto_advance`, built from a
//! few fixed configs, takes a structured sequence of steps (a command, a
//! time step that may go backwards, an `expected_version`, a next
//! participant) applied with [`machine::decide`]. After every step:
//!
//! - nothing panicked (with overflow checks on: `cargo fuzz build -a`);
//! - a committed decision raised `version` by exactly one per change (each
//!   deadline applied, plus the command unless a timeout absorbed it), its
//!   intermediate states and events cover those versions in order, and a
//!   refusal is the one the state calls for;
//! - the stored state survives a JSON round trip (what stores keep);
//! - reads at the step's instant and at a later one show no negative
//!   number, and equal the read of the state a `Timeout` decision at that
//!   instant commits when a deadline is due (a read applies deadlines as of
//!   their deadline, architecture.md), or `Timeout` finds nothing due.

#![no_main]

use arbitrary::Arbitrary;
use kairos_domain::machine::{self, Command, Decision, MAX_CATCH_UP, TransitionError};
use kairos_domain::{
    GroupId, Joiner, ParticipantId, Session, SessionConfig, SessionId, SessionView, view,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Longest sequence tried; longer inputs are cut.
const MAX_STEPS: usize = 64;

/// The session as the fuzzer sets it up.
#[derive(Debug, Arbitrary)]
struct Input {
    setup: Setup,
    start: Start,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Mode {
    PerParticipant,
    PerCycle,
    PerGroup,
    Global,
    CountUp,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum TimeoutKind {
    EndSession,
    SkipCycle,
    AutoAction,
}

/// Bank sizes: the shortest the contract allows, one per participant
/// rising, or a minute.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Banks {
    Shortest,
    Rising,
    Minute,
}

#[derive(Debug, Arbitrary)]
struct Setup {
    mode: Mode,
    timeout: TimeoutKind,
    auto_advance: bool,
    /// Participants: 1 to 4 (0 to 4 in `global` and `count_up`).
    players: u8,
    banks: Banks,
    /// `increment_ms` of 700 rather than 0.
    increment: bool,
    /// `max_time_ms` of 2500 (a bank cap; the stopwatch limit in `count_up`).
    cap: bool,
    /// Rotation order opposite to list order (`participant_index`).
    reversed: bool,
}

/// The creation instant.
#[derive(Debug, Arbitrary)]
enum Start {
    /// 2025-10-20T14:30:00Z.
    Now,
    Epoch,
    Any(i64),
}

#[derive(Debug, Arbitrary)]
struct Step {
    command: Cmd,
    delta: Delta,
    expected: Expected,
    /// Index into the participants, or (one past the end) an unknown id.
    next: Option<u8>,
    /// How far after the step to read again, in ms.
    probe: u16,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Cmd {
    Start,
    Switch,
    Pause,
    Resume,
    Complete,
    Cancel,
    Timeout,
    /// A participant joins: `next` names an existing one (refused) or a new one.
    Join,
    /// The participant `next` names leaves (or an unknown one, refused).
    Leave,
}

/// How the clock moves before the step. Jumps stay under five minutes, so
/// that one step applies at most a few hundred deadlines (1 s cycles): the
/// catch-up bound `MAX_CATCH_UP` (10 000 per call) is left to the unit
/// tests, as inputs that reach it run a thousand times slower.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Delta {
    Millis(u16),
    Seconds(u8),
    /// A clock that stepped back.
    Back(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Expected {
    None,
    /// The stored version (stale if a deadline passed since).
    Stored,
    /// The version a read at the step's instant shows.
    Settled,
    Behind(u8),
    Ahead(u8),
    Any(u64),
}

fuzz_target!(|input: Input| {
    let config =
        SessionConfig::parse(&config_json(&input.setup)).expect("the fixed configs are valid");
    let t0 = match input.start {
        Start::Now => 1_760_970_600_000,
        Start::Epoch => 0,
        Start::Any(t) => t,
    };
    let (mut state, _) =
        machine::create(config, SessionId::from_uuid(Default::default()), None, t0);
    let mut now = t0;
    check_reads(&state, now);
    for step in input.steps.iter().take(MAX_STEPS) {
        now = match step.delta {
            Delta::Millis(ms) => now.saturating_add(i64::from(ms)),
            Delta::Seconds(s) => now.saturating_add(i64::from(s) * 1000),
            Delta::Back(ms) => now.saturating_sub(i64::from(ms)),
        };
        state = apply(state, step, now);
        let stored: Session =
            serde_json::from_value(serde_json::to_value(&state).expect("a session serializes"))
                .expect("a stored session reads back");
        assert_eq!(stored, state, "JSON round trip");
        check_reads(&state, now);
        check_reads(&state, now.saturating_add(i64::from(step.probe)));
    }
});

/// The session config for `setup`, as a client would send it.
fn config_json(setup: &Setup) -> Value {
    let unbounded = matches!(setup.mode, Mode::Global | Mode::CountUp);
    let players = usize::from(setup.players % 5);
    let players = if unbounded { players } else { players.max(1) };
    let bank = |i: usize| -> i64 {
        match setup.banks {
            Banks::Shortest => 1_000,
            Banks::Rising => 1_000 * (i64::try_from(i).unwrap_or(0) + 1),
            Banks::Minute => 60_000,
        }
    };
    let groups = players.min(2);
    let participants: Vec<Value> = (0..players)
        .map(|i| {
            let mut p = json!({"participant_id": format!("p{i}")});
            if setup.reversed {
                p["participant_index"] = json!(players - 1 - i);
            }
            match setup.mode {
                Mode::PerParticipant => p["total_time_ms"] = json!(bank(i)),
                Mode::PerGroup => p["group_id"] = json!(format!("g{}", i % groups)),
                _ => {}
            }
            p
        })
        .collect();
    let (kind, action) = match setup.timeout {
        TimeoutKind::EndSession => ("end_session", None),
        TimeoutKind::SkipCycle => ("skip_cycle", None),
        TimeoutKind::AutoAction => ("auto_action", Some("fold")),
    };
    let mut timeout = json!({"type": kind});
    if let Some(action) = action {
        timeout["action"] = json!(action);
    }
    let mut config = json!({
        "participants": participants,
        "action_on_timeout": timeout,
        "auto_advance": setup.auto_advance,
        "increment_ms": if setup.increment { 700 } else { 0 },
    });
    if setup.cap {
        config["max_time_ms"] = json!(2_500);
    }
    config["sync_mode"] = json!(match setup.mode {
        Mode::PerParticipant => "per_participant",
        Mode::PerCycle => {
            config["time_per_cycle_ms"] = json!(bank(0));
            "per_cycle"
        }
        Mode::PerGroup => {
            let list: Vec<Value> = (0..groups)
                .map(|g| json!({"group_id": format!("g{g}"), "total_time_ms": bank(g)}))
                .collect();
            config["groups"] = json!(list);
            "per_group"
        }
        Mode::Global => {
            config["total_time_ms"] = json!(bank(1));
            "global"
        }
        Mode::CountUp => "count_up",
    });
    config
}

/// Applies one step at `now`, checks what `decide` said, and returns the
/// state to continue from (unchanged when the command was refused).
fn apply(state: Session, step: &Step, now: i64) -> Session {
    let settled = || machine::settle_deadlines(&state, now);
    let expected = match step.expected {
        Expected::None => None,
        Expected::Stored => Some(state.version),
        Expected::Settled => Some(settled().version),
        Expected::Behind(n) => Some(state.version.saturating_sub(u64::from(n))),
        Expected::Ahead(n) => Some(settled().version.saturating_add(u64::from(n))),
        Expected::Any(v) => Some(v),
    };
    let unknown = ParticipantId::parse("nobody").expect("a valid id");
    let next = step.next.map(|k| {
        state
            .participants
            .get(usize::from(k) % (state.participants.len() + 1))
            .map_or_else(|| unknown.clone(), |p| p.id.clone())
    });
    let command = match step.command {
        Cmd::Start => Command::Start,
        Cmd::Switch => Command::Switch { next, lag_ms: None },
        Cmd::Pause => Command::Pause,
        Cmd::Resume => Command::Resume,
        Cmd::Complete => Command::Complete,
        Cmd::Cancel => Command::Cancel,
        Cmd::Timeout => Command::Timeout,
        Cmd::Join => {
            let k = step.next.unwrap_or(0);
            let fresh = ParticipantId::parse(&format!("j{k}")).expect("a valid id");
            let id = next.clone().filter(|n| *n != unknown).unwrap_or(fresh);
            Command::Join(Joiner {
                id,
                index: (k % 3 != 0).then_some(u32::from(k % 5)),
                total_time_ms: Some(2_000),
                group_id: Some(GroupId::parse("g0").expect("a valid id")),
            })
        }
        Cmd::Leave => Command::Leave {
            participant_id: next.clone().unwrap_or(unknown.clone()),
        },
    };
    match machine::decide(&state, &command, expected, now) {
        Ok(decision) => {
            check_decision(&state, &command, expected, now, &decision);
            decision.state
        }
        Err(refusal) => {
            check_refusal(&settled(), &command, expected, &refusal);
            state
        }
    }
}

/// A committed decision changes `version` by exactly one per change.
fn check_decision(
    before: &Session,
    command: &Command,
    expected: Option<u64>,
    now: i64,
    d: &Decision,
) {
    let fired = d.fired_deadlines.len() as u64;
    let absorbed = match command {
        Command::Timeout => true,
        Command::Switch { .. } => fired > 0 && expected.is_none(),
        _ => false,
    };
    let changes = fired + u64::from(!absorbed);
    assert!(changes >= 1, "a decision without a change");
    assert_eq!(
        d.state.version,
        before.version + changes,
        "one version per change"
    );
    if let Some(expected) = expected {
        assert_eq!(
            expected,
            before.version + fired,
            "expected_version was checked"
        );
    }
    assert_eq!(d.intermediate.len() as u64, changes - 1);
    for (k, s) in d.intermediate.iter().enumerate() {
        assert_eq!(
            s.version,
            before.version + 1 + k as u64,
            "intermediate versions in order"
        );
    }
    assert!(
        d.fired_deadlines.windows(2).all(|w| w[0] <= w[1]),
        "deadlines in order"
    );
    assert!(
        d.fired_deadlines.iter().all(|&t| t <= now),
        "a deadline fired early"
    );
    // Every version in between has its events, in version order.
    let versions: Vec<u64> = d.events.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "events out of order: {versions:?}"
    );
    let mut distinct = versions.clone();
    distinct.dedup();
    let wanted: Vec<u64> = (before.version + 1..=d.state.version).collect();
    assert_eq!(distinct, wanted, "events of every new version");
    assert!(d.events.iter().all(|e| e.session_id == before.id));
}

/// A refusal is the one the (settled) state calls for.
fn check_refusal(settled: &Session, command: &Command, expected: Option<u64>, e: &TransitionError) {
    match e {
        TransitionError::Conflict {
            expected: sent,
            actual,
        } => {
            assert_eq!(Some(*sent), expected);
            assert_eq!(*actual, settled.version);
            assert_ne!(sent, actual);
        }
        TransitionError::NothingDue => assert_eq!(*command, Command::Timeout),
        TransitionError::ParticipantExists(id) => {
            assert!(matches!(command, Command::Join(_)), "only a join");
            assert!(settled.participant_position(id).is_some(), "{id} is unknown");
        }
        TransitionError::InvalidParticipant(fields) => {
            assert!(matches!(command, Command::Join(_)), "only a join: {fields:?}");
        }
        TransitionError::UnknownParticipant(id) => {
            assert!(settled.participant_position(id).is_none(), "{id} exists");
        }
        TransitionError::ParticipantExpired(id) => {
            assert!(
                settled.participant_position(id).is_some(),
                "{id} is unknown"
            );
        }
        TransitionError::InvalidTransition {
            status,
            command: name,
        } => {
            assert_eq!(*name, command.name());
            assert_eq!(*status, settled.status);
        }
    }
}

/// A read at `t` shows no negative number and equals the read of what a
/// `Timeout` at `t` commits.
fn check_reads(state: &Session, t: i64) {
    let v = view::view(state, t);
    non_negative(&v);
    assert!(v.version >= state.version);
    match machine::next_deadline(state) {
        Some(deadline) if deadline <= t => {
            let d = machine::decide(state, &Command::Timeout, None, t)
                .expect("a due deadline times out");
            assert!(!d.fired_deadlines.is_empty());
            if d.fired_deadlines.len() < MAX_CATCH_UP {
                assert_eq!(
                    view::view(&d.state, t),
                    v,
                    "a read differs from the timeout it implies"
                );
                let left = machine::next_deadline(&d.state);
                assert!(
                    left.is_none_or(|n| n > t),
                    "a due deadline was left: {left:?}"
                );
            }
        }
        _ => {
            assert_eq!(
                machine::decide(state, &Command::Timeout, None, t),
                Err(TransitionError::NothingDue)
            );
            assert_eq!(
                v.version, state.version,
                "a read without a due deadline changed the version"
            );
        }
    }
}

/// Every number of a view is non-negative.
fn non_negative(v: &SessionView) {
    assert!(v.elapsed_ms >= 0, "elapsed_ms {}", v.elapsed_ms);
    if let Some(left) = v.time_remaining_ms {
        assert!(left >= 0, "time_remaining_ms {left}");
    }
    for p in &v.participants {
        assert!(
            p.total_time_ms >= 0,
            "{}: total {}",
            p.participant_id,
            p.total_time_ms
        );
        assert!(
            p.time_used_ms >= 0,
            "{}: used {}",
            p.participant_id,
            p.time_used_ms
        );
        assert!(
            p.time_remaining_ms >= 0,
            "{}: remaining {}",
            p.participant_id,
            p.time_remaining_ms
        );
    }
    for g in &v.groups {
        assert!(
            g.total_time_ms >= 0,
            "{}: total {}",
            g.group_id,
            g.total_time_ms
        );
        assert!(
            g.time_used_ms >= 0,
            "{}: used {}",
            g.group_id,
            g.time_used_ms
        );
        assert!(
            g.time_remaining_ms >= 0,
            "{}: remaining {}",
            g.group_id,
            g.time_remaining_ms
        );
    }
}
