//! Properties of the webhook retry rule (contract section 9) over random schedules, attempts, jitter and `Retry-After`: a retry lands within ±20% of its step and never before now, `Retry-After` never shortens the wait and is capped at 24 h, 410 always disables, an attempt past the schedule disables, 2xx is always done; and the RFC 3339 timestamps of bodies round-trip to the instant.

use kairos_domain::webhook::{
    AttemptOutcome, MAX_RETRY_DELAY_MS, NextStep, RetrySchedule, next_step, rfc3339_ms,
};
use proptest::prelude::*;

fn schedule() -> impl Strategy<Value = RetrySchedule> {
    prop::collection::vec(1i64..=MAX_RETRY_DELAY_MS, 1..=10)
        .prop_map(|steps| RetrySchedule::new(steps).expect("steps in range"))
}

fn failed(retry_after_ms: Option<i64>) -> AttemptOutcome {
    AttemptOutcome::Failed {
        status: Some(500),
        error: "HTTP 500".to_owned(),
        retry_after_ms,
    }
}

const NOW_MAX: i64 = 4_000_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Within the schedule, a failure without `Retry-After` retries within
    /// ±20% of its step (one ms of rounding), strictly after now.
    #[test]
    fn a_retry_is_within_twenty_percent_of_its_step(
        s in schedule(),
        pick in 0usize..10,
        now in 0i64..NOW_MAX,
        jitter in -1.0f64..=1.0,
    ) {
        let attempt = (pick % s.steps().len()) as u32 + 1;
        let step = s.steps()[attempt as usize - 1];
        let NextStep::RetryAt(at) = next_step(&s, attempt, &failed(None), now, jitter) else {
            return Err(TestCaseError::fail("a failure inside the schedule retries"));
        };
        prop_assert!(at > now);
        let delay = at - now;
        let low = (step as f64 * 0.8).floor() as i64;
        let high = (step as f64 * 1.2).ceil() as i64;
        prop_assert!(delay >= low.max(1) && delay <= high, "step {step}, delay {delay}");
    }

    /// `Retry-After` never makes the retry earlier than without it, the retry
    /// is never before `now + Retry-After` up to 24 h, and a `Retry-After`
    /// beyond 24 h waits no longer than 24 h or the jittered step.
    #[test]
    fn retry_after_never_shortens_and_is_capped(
        s in schedule(),
        pick in 0usize..10,
        now in 0i64..NOW_MAX,
        jitter in -1.0f64..=1.0,
        retry_after in prop_oneof![-1_000i64..=0, 0i64..=2 * MAX_RETRY_DELAY_MS, Just(i64::MAX)],
    ) {
        let attempt = (pick % s.steps().len()) as u32 + 1;
        let plain = next_step(&s, attempt, &failed(None), now, jitter);
        let honoured = next_step(&s, attempt, &failed(Some(retry_after)), now, jitter);
        let (NextStep::RetryAt(plain), NextStep::RetryAt(honoured)) = (plain, honoured) else {
            return Err(TestCaseError::fail("a failure inside the schedule retries"));
        };
        prop_assert!(honoured >= plain);
        prop_assert!(honoured >= now + retry_after.clamp(0, MAX_RETRY_DELAY_MS));
        prop_assert!(honoured - now <= plain.max(now + MAX_RETRY_DELAY_MS) - now);
        prop_assert_eq!(honoured, plain.max(now + retry_after.clamp(0, MAX_RETRY_DELAY_MS)));
    }

    /// 410 disables at once, whatever the attempt; 2xx is done, whatever the attempt.
    #[test]
    fn gone_disables_and_success_is_done(
        s in schedule(),
        attempt in 0u32..=64,
        now in 0i64..NOW_MAX,
        jitter in -1.0f64..=1.0,
        status in 200u16..=299,
    ) {
        prop_assert!(matches!(
            next_step(&s, attempt, &AttemptOutcome::Gone, now, jitter),
            NextStep::Disable(_)
        ));
        prop_assert_eq!(
            next_step(&s, attempt, &AttemptOutcome::from_status(410, Some(5)), now, jitter),
            next_step(&s, attempt, &AttemptOutcome::Gone, now, jitter)
        );
        prop_assert_eq!(
            next_step(&s, attempt, &AttemptOutcome::from_status(status, None), now, jitter),
            NextStep::Done
        );
    }

    /// A failure of an attempt past the schedule disables; one inside retries.
    #[test]
    fn the_schedule_bounds_the_attempts(
        s in schedule(),
        attempt in 1u32..=64,
        now in 0i64..NOW_MAX,
        jitter in -1.0f64..=1.0,
        retry_after in prop::option::of(0i64..=MAX_RETRY_DELAY_MS),
    ) {
        let step = next_step(&s, attempt, &failed(retry_after), now, jitter);
        if attempt < s.max_attempts() {
            prop_assert!(matches!(step, NextStep::RetryAt(_)), "{step:?}");
        } else {
            prop_assert!(matches!(step, NextStep::Disable(_)), "{step:?}");
        }
    }

    /// Any status other than 2xx and 410 is a failure that follows the schedule.
    #[test]
    fn other_statuses_are_failures(
        status in prop_oneof![100u16..=199, 300u16..=409, 411u16..=599],
    ) {
        prop_assert!(
            matches!(
                AttemptOutcome::from_status(status, None),
                AttemptOutcome::Failed { status: Some(s), .. } if s == status
            ),
            "status {}", status
        );
    }

    /// A schedule prints as the comma list it parses from.
    #[test]
    fn a_schedule_round_trips_through_text(s in schedule()) {
        prop_assert_eq!(RetrySchedule::parse(&s.to_string()), Ok(s));
    }

    /// The body's timestamp reads back as the instant, and sorts as it does.
    #[test]
    fn timestamps_round_trip_and_sort(a in 0i64..253_402_300_799_999, b in 0i64..253_402_300_799_999) {
        prop_assert_eq!(parse_rfc3339_ms(&rfc3339_ms(a)), a);
        prop_assert_eq!(rfc3339_ms(a).cmp(&rfc3339_ms(b)), a.cmp(&b));
        prop_assert_eq!(rfc3339_ms(a).len(), 24);
    }
}

/// An independent reading of `YYYY-MM-DDTHH:MM:SS.mmmZ`: days counted year
/// by year and month by month, not with the formatter's algorithm.
fn parse_rfc3339_ms(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect("digits");
    let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
    let (h, mi, sec, ms) = (n(11..13), n(14..16), n(17..19), n(20..23));
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0i64;
    if y >= 1970 {
        for year in 1970..y {
            days += if leap(year) { 366 } else { 365 };
        }
    } else {
        for year in y..1970 {
            days -= if leap(year) { 366 } else { 365 };
        }
    }
    let month_len = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_len[..(mo - 1) as usize].iter().sum::<i64>() + d - 1;
    ((days * 24 + h) * 60 + mi) * 60_000 + sec * 1_000 + ms
}
