//! Properties of the auto-pause of contract section 9 over random configs,
//! absences and command timings: a pause comes exactly once, as of
//! `max(absent since, start of the running segment) + period`, never
//! before; deadlines before that instant come first; a resume gives a
//! still-absent participant a full period again; a participant whose turn
//! it is not, or a session that does not run, is never paused.

use kairos_domain::presence::auto_pause_due;
use kairos_domain::view::view;
use kairos_domain::{
    Command, EventType, ParticipantId, Session, SessionConfig, SessionId, Status, TransitionError,
    machine,
};
use proptest::prelude::*;
use serde_json::json;

const T0: i64 = 1_760_970_600_000;

fn id() -> SessionId {
    "123e4567-e89b-12d3-a456-426614174000"
        .parse()
        .expect("a uuid")
}

fn pid(s: &str) -> ParticipantId {
    s.parse().expect("a participant id")
}

/// A started `per_participant` game of two, `a` to play from `T0`.
fn started(bank: i64, period: i64, warnings: &[i64]) -> Session {
    let cfg = SessionConfig::parse(&json!({
        "sync_mode": "per_participant",
        "auto_pause_on_disconnect_ms": period,
        "warnings_ms": warnings,
        "participants": [
            {"participant_id": "a", "total_time_ms": bank},
            {"participant_id": "b", "total_time_ms": bank}
        ]
    }))
    .expect("a valid config");
    let (s, _) = machine::create(cfg, id(), None, T0 - 1_000);
    machine::decide(&s, &Command::Start, None, T0)
        .expect("starts")
        .state
}

fn auto_pause(who: &str, absent_since_ms: i64) -> Command {
    Command::AutoPause {
        participant_id: pid(who),
        absent_since_ms,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// With a bank that outlasts it, the pause is due exactly at
    /// max(absent since, turn start) + period: refused before, one pause
    /// as of that instant after (clocks settled to it, whenever the
    /// command runs), and refused once paused.
    #[test]
    fn pauses_once_as_of_its_instant(
        period in 1_000i64..=600_000,
        absent_offset in -5_000i64..=60_000,
        late in 0i64..=120_000,
        early in 1i64..=1_000,
    ) {
        let s = started(86_400_000, period, &[]);
        let absent = T0 + absent_offset;
        let due = absent.max(T0) + period;
        prop_assert_eq!(auto_pause_due(&s, &pid("a"), absent), Some(due));

        let before = machine::decide(&s, &auto_pause("a", absent), None, due - early);
        prop_assert_eq!(before.unwrap_err(), TransitionError::NothingDue);

        let d = machine::decide(&s, &auto_pause("a", absent), None, due + late).expect("due");
        prop_assert_eq!(d.state.status, Status::Paused);
        prop_assert_eq!(d.state.version, s.version + 1);
        prop_assert_eq!(d.events.len(), 1);
        let e = &d.events[0];
        prop_assert_eq!(e.event_type, EventType::SessionPaused);
        prop_assert_eq!(e.at_ms, due);
        prop_assert_eq!(&e.metadata["reason"], "disconnected");
        prop_assert_eq!(&e.metadata["absent_since_ms"], &json!(absent));
        prop_assert_eq!(e.participant_id.as_ref(), Some(&pid("a")));
        // Clocks stopped at the instant, not when the command ran.
        let v = view(&d.state, due + late + 1_000);
        prop_assert_eq!(v.participants[0].time_used_ms, due - T0);

        // Exactly once: a second instance deciding on the new state.
        let again = machine::decide(&d.state, &auto_pause("a", absent), None, due + late + 5);
        prop_assert_eq!(again.unwrap_err(), TransitionError::NothingDue);
    }

    /// A resume gives a still-absent participant a full period from the
    /// resume; one whose turn it is not is never paused.
    #[test]
    fn a_resume_restarts_the_period_and_only_the_active_one_counts(
        period in 1_000i64..=60_000,
        paused_for in 0i64..=100_000,
        late in 0i64..=10_000,
    ) {
        let s = started(86_400_000, period, &[]);
        let absent = T0;
        let first = machine::decide(&s, &auto_pause("a", absent), None, T0 + period)
            .expect("due")
            .state;
        let resumed_at = T0 + period + paused_for;
        let resumed = machine::decide(&first, &Command::Resume, None, resumed_at)
            .expect("resumes")
            .state;
        let not_yet = machine::decide(&resumed, &auto_pause("a", absent), None, resumed_at + period - 1);
        prop_assert_eq!(not_yet.unwrap_err(), TransitionError::NothingDue);
        let second = machine::decide(&resumed, &auto_pause("a", absent), None, resumed_at + period + late)
            .expect("due again");
        prop_assert_eq!(second.events[0].at_ms, resumed_at + period);

        let other = machine::decide(&resumed, &auto_pause("b", absent), None, resumed_at + 10 * period);
        prop_assert_eq!(other.unwrap_err(), TransitionError::NothingDue);
    }

    /// A turn that comes to an absent participant starts its period then;
    /// a deadline before the pause's instant (an expiry, a warning) is
    /// applied first, as of its own instant, and the pause never precedes
    /// an event of the same decision.
    #[test]
    fn deadlines_before_the_instant_come_first(
        bank in 2_000i64..=30_000,
        period in 1_000i64..=30_000,
        switch_after in 0i64..=1_500,
        warn in prop::option::of(1_000i64..=1_999),
        late in 0i64..=40_000,
    ) {
        let warnings: Vec<i64> = warn.into_iter().collect();
        let s = started(bank, period, &warnings);
        // `b` left before its turn came.
        let absent = T0 - 10_000;
        let turn = T0 + switch_after;
        let s = machine::decide(&s, &Command::Switch { next: None, lag_ms: None }, None, turn)
            .expect("a switch")
            .state;
        let due = turn + period;
        prop_assert_eq!(auto_pause_due(&s, &pid("b"), absent), Some(due));
        match machine::decide(&s, &auto_pause("b", absent), None, due + late) {
            Ok(d) => {
                // Paused: b's clock had time left at the instant.
                prop_assert!(due < turn + bank);
                let last = d.events.last().expect("the pause");
                prop_assert_eq!(last.event_type, EventType::SessionPaused);
                prop_assert_eq!(last.at_ms, due);
                prop_assert!(d.events.iter().all(|e| e.at_ms <= due));
                prop_assert_eq!(d.state.version, s.version + d.events.len() as u64);
                let v = view(&d.state, due + late);
                prop_assert_eq!(v.participants[1].time_remaining_ms, turn + bank - due);
            }
            Err(e) => {
                // b's clock ran out first: the session ended then, no pause.
                prop_assert_eq!(e, TransitionError::NothingDue);
                prop_assert!(due >= turn + bank);
                prop_assert_eq!(view(&s, due + late).status, Status::Expired);
            }
        }
    }
}

/// A session without `auto_pause_on_disconnect_ms` never pauses by itself.
#[test]
fn without_the_setting_nothing_is_ever_due() {
    let cfg = SessionConfig::parse(&json!({
        "sync_mode": "per_participant",
        "participants": [{"participant_id": "a", "total_time_ms": 60_000}]
    }))
    .expect("a valid config");
    let (s, _) = machine::create(cfg, id(), None, T0);
    let s = machine::decide(&s, &Command::Start, None, T0)
        .expect("starts")
        .state;
    assert_eq!(auto_pause_due(&s, &pid("a"), T0), None);
    assert_eq!(
        machine::decide(&s, &auto_pause("a", T0), None, T0 + 50_000).unwrap_err(),
        TransitionError::NothingDue
    );
}

/// The config's bounds, with the contract's field errors.
#[test]
fn the_period_is_checked_with_field_errors() {
    for (value, ok) in [
        (json!(999), false),
        (json!(1_000), true),
        (json!(600_000), true),
        (json!(600_001), false),
        (json!("5s"), false),
        (json!(null), true),
    ] {
        let parsed = SessionConfig::parse(&json!({
            "sync_mode": "count_up",
            "auto_pause_on_disconnect_ms": value,
        }));
        match parsed {
            Ok(cfg) => {
                assert!(ok, "{value} accepted");
                assert_eq!(cfg.auto_pause_on_disconnect_ms, value.as_i64());
            }
            Err(errors) => {
                assert!(!ok, "{value} refused");
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].field, "auto_pause_on_disconnect_ms");
                let expected = if value.is_i64() {
                    "must be between 1000 and 600000"
                } else {
                    "must be an integer number of milliseconds"
                };
                assert_eq!(errors[0].message, expected);
            }
        }
    }
}
