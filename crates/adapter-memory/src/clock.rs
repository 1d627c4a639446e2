//! The host clock, for a single instance. Several instances need one shared
//! authority instead (the Redis adapter tracks Redis `TIME`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kairos_domain::Clock;

/// Milliseconds since the Unix epoch from the host clock, clamped so that it
/// never goes backwards when NTP steps the clock back (a session's time would
/// otherwise appear to flow in reverse).
#[derive(Debug, Default)]
pub struct SystemClock {
    last: AtomicI64,
}

impl SystemClock {
    /// A new clock.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Reads the host's wall clock in ms since the Unix epoch (0 before 1970).
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = wall_clock_ms();
        let prev = self.last.fetch_max(now, Ordering::AcqRel);
        prev.max(now)
    }

    /// The wall clock to the µs, never before the start of the last
    /// `now_ms` handed out.
    fn now_us(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        now.max(self.last.load(Ordering::Acquire).saturating_mul(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_and_tracks_the_wall_clock() {
        let c = SystemClock::new();
        let a = c.now_ms();
        let b = c.now_ms();
        assert!(b >= a);
        // 2020-01-01 as a sanity floor: the clock reads real epoch milliseconds.
        assert!(a > 1_577_836_800_000);
        let (ms, us) = (c.now_ms(), c.now_us());
        assert!(
            us >= ms * 1000 && us < (ms + 1_000) * 1000,
            "{us} µs, {ms} ms"
        );
        c.last.store(i64::MAX / 2000, Ordering::SeqCst);
        assert_eq!(
            c.now_us(),
            (i64::MAX / 2000) * 1000,
            "not before the last ms"
        );
        c.last.store(i64::MAX - 1, Ordering::SeqCst);
        assert_eq!(c.now_ms(), i64::MAX - 1);
    }
}
