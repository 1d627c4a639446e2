//! Sleeping to the microsecond, for the local timers.
//!
//! Tokio's timer wheel wakes a sleep at its next millisecond tick, so a
//! deadline fired through it is 0 to 1 ms late before any work starts, and
//! a wait computed in whole milliseconds adds up to another. On Linux,
//! [`PreciseSleep`] waits on a `timerfd` registered with the runtime's
//! reactor instead: the kernel's high-resolution timer wakes it within the
//! timer slack (50 µs by default) of the instant asked. Elsewhere, or if
//! the `timerfd` cannot be made, it is tokio's sleep.

use std::time::Duration;

use tokio::time::Instant;

/// One sleeper, re-armed by each [`PreciseSleep::until`]; for one task.
#[derive(Debug)]
pub(crate) struct PreciseSleep {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl PreciseSleep {
    /// A sleeper on a `timerfd` where there is one, tokio's sleep otherwise.
    /// Call within a tokio runtime (the `timerfd` registers with its
    /// reactor).
    pub(crate) fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
            let timer = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )
            .map_err(std::io::Error::from)
            .and_then(register);
            match timer {
                Ok(timer) => Self { timer: Some(timer) },
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd: local timers wake on tokio's millisecond ticks");
                    Self { timer: None }
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        Self {}
    }

    /// Returns at `at` (at once if it has passed). Cancel-safe: a dropped
    /// wait leaves nothing behind that the next one would mistake for its
    /// own (arming the `timerfd` again clears what it counted).
    pub(crate) async fn until(&self, at: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(timer) = &self.timer {
            let wait = at.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return;
            }
            if arm(timer.get_ref(), wait).is_ok() {
                loop {
                    let Ok(mut ready) = timer.readable().await else {
                        break;
                    };
                    let mut expirations = [0u8; 8];
                    match ready.try_io(|fd| {
                        rustix::io::read(fd.get_ref(), &mut expirations)
                            .map_err(std::io::Error::from)
                    }) {
                        // Expired (or unreadable for good: do not spin on it).
                        Ok(_) => return,
                        // Readiness was stale: wait again.
                        Err(_would_block) => {}
                    }
                }
            }
        }
        tokio::time::sleep_until(at).await;
    }
}

/// Registers the `timerfd` with the runtime's reactor, for reading.
///
/// `AsyncFd::register_with_interest` is `unsafe` (this workspace forbids
/// unsafe code) because an arbitrary `T` might hand out a different or
/// closed descriptor over its life; an `OwnedFd` owns one open descriptor
/// until it is dropped, which is all that contract asks. The safe
/// constructor says the same, and is deprecated only for the other `T`s.
#[cfg(target_os = "linux")]
#[allow(deprecated)]
fn register(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Arms `fd` to expire once, `wait` from now (`wait` is not zero: a zero
/// value would disarm it).
#[cfg(target_os = "linux")]
fn arm(fd: &std::os::fd::OwnedFd, wait: Duration) -> rustix::io::Result<()> {
    use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
    let spec = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(wait.subsec_nanos()),
        },
    };
    timerfd_settime(fd, TimerfdTimerFlags::empty(), &spec).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wakes at or after the instant asked, never before, and a wait that
    /// was dropped half way does not cut the next one short.
    #[tokio::test]
    async fn wakes_no_earlier_than_asked_and_a_dropped_wait_leaves_nothing() {
        let sleep = PreciseSleep::new();
        #[cfg(target_os = "linux")]
        assert!(sleep.timer.is_some(), "this host has timerfd");
        for micros in [1, 300, 1_500, 4_000] {
            let at = Instant::now() + Duration::from_micros(micros);
            sleep.until(at).await;
            assert!(Instant::now() >= at, "woke before {micros} µs");
        }
        // Armed for 1 ms, dropped after 0.1 ms ...
        let short = Instant::now() + Duration::from_millis(1);
        let _ = tokio::time::timeout(Duration::from_micros(100), sleep.until(short)).await;
        // ... and expired meanwhile: the next wait still waits its own time.
        std::thread::sleep(Duration::from_millis(2));
        let at = Instant::now() + Duration::from_millis(20);
        sleep.until(at).await;
        assert!(Instant::now() >= at, "the stale expiry ended the next wait");
        // An instant already past returns at once.
        sleep.until(Instant::now()).await;
    }
}
