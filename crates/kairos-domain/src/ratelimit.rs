//! Rate limiting by GCRA (the generic cell rate algorithm): one number per
//! key, the theoretical arrival time (TAT), so a check is one atomic
//! read-modify-write wherever the number lives (a map, a Redis script).
//!
//! Pure math; where the TATs live is a port (`RateLimiter` in `ports`, and
//! the per-session check a commit carries).
//!
//! TATs are kept in microseconds while the clock counts milliseconds: the
//! spacing of a limit above 1,000 a second (a quarter of a millisecond at
//! 4,000 a second) is then still exact, where whole milliseconds allowed
//! at most one request per millisecond after the burst, whatever the limit.

/// `count` requests per `period_ms`, with a burst of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per period.
    pub count: u32,
    /// The period in ms.
    pub period_ms: i64,
}

impl Limit {
    /// `count` per second.
    pub const fn per_second(count: u32) -> Self {
        Self {
            count,
            period_ms: 1_000,
        }
    }

    /// `count` per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self {
            count,
            period_ms: 60_000,
        }
    }

    /// Time between two requests at the sustained rate, in µs (rounded
    /// down, at least 1): the step of a TAT.
    pub fn interval_us(self) -> i64 {
        (self.period_ms.saturating_mul(US_PER_MS) / i64::from(self.count.max(1))).max(1)
    }

    /// The burst tolerance in µs: one period.
    pub fn burst_us(self) -> i64 {
        self.period_ms.saturating_mul(US_PER_MS)
    }
}

/// Microseconds in a millisecond: a TAT's unit over the clock's.
pub const US_PER_MS: i64 = 1_000;

/// `us` in whole milliseconds, rounded up (for `Retry-After` and reset
/// headers: never sooner than true).
fn ceil_ms(us: i64) -> i64 {
    us.saturating_add(US_PER_MS - 1).div_euclid(US_PER_MS)
}

/// The outcome of one check, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit's `count`.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Ms until the full burst is available again.
    pub reset_ms: i64,
    /// When refused: ms until one request would be allowed.
    pub retry_after_ms: i64,
}

/// One GCRA step: given the stored TAT in µs (`None` for a new key) and
/// `now_ms`, returns the decision and the TAT to store, in µs (unchanged
/// when refused). The decision's durations are whole ms, rounded up.
///
/// ```
/// use kairos_domain::ratelimit::{gcra, Limit};
/// let limit = Limit::per_second(10);
/// let mut tat = None;
/// let mut allowed = 0;
/// for _ in 0..11 {
///     let (d, next) = gcra(tat, 0, limit);
///     tat = Some(next);
///     allowed += u32::from(d.allowed);
/// }
/// assert_eq!(allowed, 10); // the 11th within the second is refused
/// let (d, _) = gcra(tat, 100, limit);
/// assert!(d.allowed); // 100 ms later one more fits
/// ```
pub fn gcra(tat: Option<i64>, now_ms: i64, limit: Limit) -> (RateDecision, i64) {
    let interval = limit.interval_us();
    let burst = limit.burst_us();
    let now = now_ms.saturating_mul(US_PER_MS);
    let base = tat.unwrap_or(now).max(now);
    let new_tat = base.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(burst);
    if now < allow_at {
        let used = base.saturating_sub(now);
        return (
            RateDecision {
                allowed: false,
                limit: limit.count,
                remaining: 0,
                reset_ms: ceil_ms(used.max(0)),
                retry_after_ms: ceil_ms(allow_at.saturating_sub(now)).max(1),
            },
            tat.unwrap_or(now),
        );
    }
    let used = new_tat.saturating_sub(now);
    let free = burst.saturating_sub(used).max(0) / interval;
    (
        RateDecision {
            allowed: true,
            limit: limit.count,
            remaining: u32::try_from(free).unwrap_or(u32::MAX).min(limit.count),
            reset_ms: ceil_ms(used),
            retry_after_ms: 0,
        },
        new_tat,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limit = Limit::per_minute(5);
        let mut tat = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (d, next) = gcra(tat, 1_000, limit);
            tat = Some(next);
            seen.push((d.allowed, d.remaining));
        }
        assert_eq!(
            seen,
            [
                (true, 4),
                (true, 3),
                (true, 2),
                (true, 1),
                (true, 0),
                (false, 0)
            ]
        );
        let (refused, _) = gcra(tat, 1_000, limit);
        assert_eq!(refused.retry_after_ms, 12_000);
        assert_eq!(refused.reset_ms, 60_000);
        // One interval later exactly one more is allowed.
        let (d, _) = gcra(tat, 13_000, limit);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // After a full period everything is back.
        let (d, _) = gcra(tat, 61_000, limit);
        assert_eq!((d.allowed, d.remaining), (true, 4));
    }

    /// Above 1,000 a second the spacing is below a millisecond: 4,000 a
    /// second is 4 requests per millisecond once the burst is spent, not 1.
    #[test]
    fn limits_above_a_thousand_a_second_hold_their_rate() {
        let limit = Limit::per_second(4_000);
        let mut tat = None;
        let mut allowed_at = |now_ms: i64, tries: usize| {
            let mut n = 0;
            for _ in 0..tries {
                let (d, next) = gcra(tat, now_ms, limit);
                if d.allowed {
                    tat = Some(next);
                    n += 1;
                }
            }
            n
        };
        assert_eq!(allowed_at(0, 5_000), 4_000, "the burst");
        for ms in 1..=1_000 {
            assert_eq!(allowed_at(ms, 10), 4, "at {ms} ms");
        }
        // The refusal names the next quarter millisecond, rounded up to 1 ms.
        let (refused, _) = gcra(tat, 1_000, limit);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 1);
        assert_eq!(refused.reset_ms, 1_000);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let (d, t) = gcra(Some(i64::MAX), i64::MAX, Limit::per_second(10));
        assert!(d.reset_ms >= 0);
        assert!(t >= 0);
        let (d, _) = gcra(None, i64::MIN, Limit::per_second(1));
        assert!(d.allowed);
    }
}
