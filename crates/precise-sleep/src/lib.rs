//! Sleeping to the microsecond.
//!
//! Tokio's timer wheel wakes a sleep at its next millisecond tick, so
//! whatever waits on it (a deadline to fire, a request to send at its due
//! instant) starts up to a millisecond late. [`PreciseSleep`] waits on a
//! Linux `timerfd` that the runtime's reactor watches instead: the kernel's
//! high-resolution timer wakes it within the timer slack (50 µs by default)
//! of the instant asked, on the waiting task's own runtime thread, with no
//! thread of its own to hand over from.
//!
//! Used by the server's local timers (`server::timers`) and by the load
//! generator's open loops. Elsewhere than Linux, [`PreciseSleep::new`]
//! fails and the caller falls back to tokio's sleep.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::time::Instant;

/// One `timerfd`, re-armed by each [`PreciseSleep::until`]; for one task.
#[derive(Debug)]
pub struct PreciseSleep {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl PreciseSleep {
    /// A sleeper on a new `timerfd`. Call within a tokio runtime with its
    /// I/O driver enabled (the `timerfd` registers with its reactor).
    ///
    /// # Errors
    ///
    /// If the `timerfd` cannot be made or registered, and always elsewhere
    /// than Linux.
    pub fn new() -> io::Result<Self> {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            Ok(Self { fd: register(fd)? })
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "timerfd is Linux's",
        ))
    }

    /// Returns at `at`, or at once if it has passed. Cancel-safe: a wait
    /// dropped half way leaves nothing that the next would take for its
    /// own (arming the `timerfd` again clears what it counted).
    ///
    /// # Errors
    ///
    /// If the `timerfd` cannot be armed or read.
    pub async fn until(&self, at: Instant) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let wait = at.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(());
            }
            arm(self.fd.get_ref(), wait)?;
            loop {
                let mut ready = self.fd.readable().await?;
                // The expirations count: reading it empties the `timerfd`.
                let mut count = [0_u8; 8];
                match rustix::io::read(self.fd.get_ref(), &mut count) {
                    Ok(_) => return Ok(()),
                    // Readiness left from an earlier arming: wait again.
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = at;
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "timerfd is Linux's",
            ))
        }
    }
}

/// Registers the `timerfd` with the runtime's reactor.
///
/// `AsyncFd::register` is `unsafe` (this workspace forbids unsafe code)
/// because an arbitrary `T` might hand out a different or closed descriptor
/// over its life; an `OwnedFd` owns one open descriptor until it is
/// dropped, which is all that contract asks. The safe constructor says the
/// same, and is deprecated (tokio 1.54) only for the other `T`s.
#[cfg(target_os = "linux")]
#[allow(deprecated)]
fn register(
    fd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Arms `fd` to expire once, `wait` from now (`wait` is not zero: a zero
/// value would disarm it).
#[cfg(target_os = "linux")]
fn arm(fd: &std::os::fd::OwnedFd, wait: std::time::Duration) -> rustix::io::Result<()> {
    use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
    let value = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(wait.subsec_nanos()),
        },
    };
    timerfd_settime(fd, TimerfdTimerFlags::empty(), &value).map(|_| ())
}
