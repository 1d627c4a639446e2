//! Local timers: the instance that commits a deadline fires it when it is
//! due, instead of every instance sweeping the deadline index on a short
//! period. The service tells [`LocalTimers`] each deadline it commits (its
//! [`DeadlineObserver`] seam); one task, [`timer_worker`], sleeps until the
//! earliest one and applies it through [`Service::fire_due`], the same
//! compare-and-set as every other change, so a deadline still takes effect
//! exactly once whoever else fires it. With nothing armed the task sleeps
//! until a deadline is armed: an idle instance does not wake up.
//!
//! A timer lives only in its instance: if the instance dies, the sweep of
//! the deadline index (`workers::timeout_worker`, every `TIMEOUT_SWEEP_MS`,
//! for deadlines more than `TIMEOUT_SWEEP_GRACE_MS` past) applies them on
//! another instance. A timer armed for a session that another instance
//! committed since costs one load that finds nothing due.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kairos_domain::timers::TimerQueue;
use kairos_domain::{DeadlineObserver, DynSessionService as Service, SessionId};
use prometheus::IntGauge;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::workers::WorkerMetrics;
use precise_sleep::PreciseSleep;

/// Timeouts applied concurrently by the local timers.
const FIRE_CONCURRENCY: usize = 64;
/// A timeout whose commit failed (a store call timed out) is tried once
/// more this much later, rather than waiting for the sweep's grace.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// The deadlines this instance committed, by session, and the wake-up of
/// the task that fires them.
#[derive(Debug)]
pub struct LocalTimers {
    queue: Mutex<TimerQueue<SessionId>>,
    /// Notified when a deadline earlier than every armed one is armed.
    earlier: Notify,
    /// Timers armed (`kairos_timers_armed`).
    armed: IntGauge,
}

impl LocalTimers {
    /// No timer armed; `armed` reports how many are.
    pub fn new(armed: IntGauge) -> Self {
        armed.set(0);
        Self {
            queue: Mutex::new(TimerQueue::new()),
            earlier: Notify::new(),
            armed,
        }
    }

    /// Arms (replacing any previous one) or, with `None`, disarms the
    /// session's timer; wakes the firing task if it now has to wake sooner.
    pub fn set(&self, id: SessionId, deadline: Option<i64>) {
        let mut queue = self.queue();
        let before = queue.next_at();
        queue.set(id, deadline);
        self.armed.set(gauge(queue.len()));
        drop(queue);
        if deadline.is_some_and(|at| before.is_none_or(|b| at < b)) {
            self.earlier.notify_one();
        }
    }

    /// The observer to give the service: every committed deadline arms this
    /// instance's timer for the session, then `also` runs (the audit
    /// worker's nudge).
    pub fn observer(self: &Arc<Self>, also: impl Fn() + Send + Sync + 'static) -> DeadlineObserver {
        let timers = self.clone();
        Arc::new(move |id, deadline| {
            timers.set(id, deadline);
            also();
        })
    }

    /// Sessions with a timer armed.
    pub fn armed(&self) -> usize {
        self.queue().len()
    }

    /// The deadline armed for a session, if any.
    pub fn get(&self, id: SessionId) -> Option<i64> {
        self.queue().get(&id)
    }

    /// Takes the earliest timer if it is due at `now`.
    fn pop_due(&self, now: i64) -> Option<(SessionId, i64)> {
        let mut queue = self.queue();
        let due = queue.pop_due(now)?;
        self.armed.set(gauge(queue.len()));
        Some(due)
    }

    fn queue(&self) -> MutexGuard<'_, TimerQueue<SessionId>> {
        // Every operation leaves the queue consistent before it can panic
        // (they do not), so a poisoned lock still holds a valid queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Fires the local timers as they fall due until `shutdown` turns true,
/// then waits for the timeouts already firing and returns (the rest are
/// the other instances' sweeps' to apply).
///
/// The task sleeps until the earliest armed deadline, or until one earlier
/// is armed; at most `FIRE_CONCURRENCY` timeouts are applied at once, the
/// rest wait their turn in deadline order.
pub async fn timer_worker(
    service: Service,
    timers: Arc<LocalTimers>,
    metrics: WorkerMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut stopping = *shutdown.borrow();
    let mut sleep = match PreciseSleep::new() {
        Ok(sleep) => Some(sleep),
        Err(e) => {
            tracing::warn!(error = %e, "no timerfd: local timers wake on tokio's millisecond ticks");
            None
        }
    };
    loop {
        if stopping {
            while running.join_next().await.is_some() {}
            return;
        }
        // `now` on the service's clock, the one deadlines are in. Read
        // before popping: a timer is never fired before it is due, and a
        // fire decides at a later `now` still (the clock is monotonic).
        let now = service.now_ms();
        while running.len() < FIRE_CONCURRENCY {
            let Some((id, at)) = timers.pop_due(now) else {
                break;
            };
            running.spawn(fire(service.clone(), metrics.clone(), id, at));
        }
        let full = running.len() >= FIRE_CONCURRENCY;
        // When to look again: at the start of the next deadline's
        // millisecond, converted from the service's clock to the local
        // monotonic one to the µs. Woken early (the offset moved), the loop
        // finds nothing due and sleeps the rest.
        let wake_at = timers
            .queue()
            .next_at()
            .map(|at| Instant::now() + wait_until_us(at, service.now_us()));
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "applying a timeout panicked");
                }
            }
            slept = sleep_until(sleep.as_ref(), wake_at), if !full => {
                if let Err(e) = slept {
                    // Once: from here on, tokio's ticks.
                    tracing::warn!(error = %e, "the timerfd failed; local timers wake on tokio's millisecond ticks");
                    sleep = None;
                }
            }
            () = timers.earlier.notified(), if !full => {}
            changed = shutdown.changed() => {
                stopping = changed.is_err() || *shutdown.borrow();
            }
        }
    }
}

/// Sleeps until `at` (to the µs with a `timerfd`, else on tokio's
/// millisecond ticks), or forever for `None`. A `timerfd` that fails is
/// reported after the wait, made on tokio's ticks instead.
async fn sleep_until(sleep: Option<&PreciseSleep>, at: Option<Instant>) -> std::io::Result<()> {
    match (at, sleep) {
        (Some(at), Some(sleep)) => {
            let slept = sleep.until(at.into_std()).await;
            if slept.is_err() {
                tokio::time::sleep_until(at).await;
            }
            slept
        }
        (Some(at), None) => {
            tokio::time::sleep_until(at).await;
            Ok(())
        }
        (None, _) => std::future::pending().await,
    }
}

/// How long from `now_us` until the millisecond `at_ms` begins, both on the
/// service's clock; zero when it has begun.
fn wait_until_us(at_ms: i64, now_us: i64) -> Duration {
    Duration::from_micros(
        u64::try_from(at_ms.saturating_mul(1000).saturating_sub(now_us)).unwrap_or(0),
    )
}

/// Applies one session's due deadlines as of the timer that fell due, and
/// records them. A failure is retried once after [`RETRY_AFTER`]; a second
/// one is left to the sweep, which claims the deadline once it is
/// `TIMEOUT_SWEEP_GRACE_MS` past.
async fn fire(service: Service, metrics: WorkerMetrics, id: SessionId, at: i64) {
    for retry in [false, true] {
        match service.fire_due(id).await {
            Ok(fired) => {
                metrics.record_fired(&fired, service.now_ms());
                return;
            }
            Err(e) => {
                metrics.store_errors.inc();
                if retry {
                    tracing::warn!(session_id = %id, deadline_ms = at, error = %e, "applying a timeout failed twice; the sweep retries it");
                } else {
                    tracing::debug!(session_id = %id, deadline_ms = at, error = %e, "applying a timeout failed; trying once more");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use adapter_memory::{MemoryBus, MemoryStore, SystemClock};
    use kairos_domain::{Actor, Command, SessionConfig, Status};

    use super::*;
    use crate::workers::tests::test_metrics as metrics;

    fn timers() -> LocalTimers {
        LocalTimers::new(
            IntGauge::new("kairos_timers_armed", "Timers armed").expect("a valid metric"),
        )
    }

    fn id() -> SessionId {
        SessionId::from_uuid(uuid::Uuid::new_v4())
    }

    #[test]
    fn a_later_deadline_replaces_the_earlier_and_none_disarms() {
        let timers = timers();
        let (a, b) = (id(), id());
        timers.set(a, Some(100));
        timers.set(b, Some(50));
        timers.set(a, Some(300));
        assert_eq!(timers.get(a), Some(300));
        assert_eq!(timers.armed(), 2);
        assert_eq!(timers.armed.get(), 2);
        timers.set(b, None);
        assert_eq!(timers.get(b), None);
        assert_eq!(timers.armed(), 1);
        assert_eq!(timers.pop_due(299), None);
        assert_eq!(timers.pop_due(300), Some((a, 300)));
        assert_eq!(timers.armed.get(), 0);
    }

    fn two_clocks(ms: i64) -> SessionConfig {
        SessionConfig::parse(&serde_json::json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "a", "total_time_ms": ms},
                {"participant_id": "b", "total_time_ms": ms}
            ]
        }))
        .expect("valid config")
    }

    /// The service tells the observer each committed deadline: a start arms
    /// the running clock's, a pause drops it, a resume arms it again.
    #[tokio::test]
    async fn the_service_arms_on_commit_and_disarms_when_the_deadline_goes() {
        let timers = Arc::new(timers());
        let nudges = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = nudges.clone();
        let service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            Arc::new(SystemClock::new()),
        )
        .with_deadline_observer(timers.observer(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        let admin = Actor::anonymous_admin();
        let s = id();
        service
            .create(&admin, two_clocks(60_000), s)
            .await
            .expect("created");
        // Pending without `start_at_ms`: no deadline.
        assert_eq!(timers.get(s), None);
        let started = service
            .execute(&admin, s, Command::Start, None)
            .await
            .expect("started");
        let deadline = started.at_ms + 60_000;
        assert_eq!(timers.get(s), Some(deadline));
        service
            .execute(&admin, s, Command::Pause, None)
            .await
            .expect("paused");
        assert_eq!(timers.get(s), None);
        assert_eq!(timers.armed(), 0);
        let resumed = service
            .execute(&admin, s, Command::Resume, None)
            .await
            .expect("resumed");
        let left = resumed.view.participants[0].time_remaining_ms;
        assert_eq!(timers.get(s), Some(resumed.at_ms + left));
        // Create, start, pause, resume: four commits, four nudges.
        assert_eq!(nudges.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    /// With no sweep at all, the local timers alone apply every deadline
    /// once (a clock runs out, then the other one, re-armed by the first
    /// timeout's commit), and the worker returns when told to stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_timers_alone_fire_each_deadline_once() {
        let timers = Arc::new(timers());
        let service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            Arc::new(SystemClock::new()),
        )
        .with_deadline_observer(timers.observer(|| {}));
        let metrics = metrics();
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(timer_worker(
            service.clone(),
            timers.clone(),
            metrics.clone(),
            stopped,
        ));
        let admin = Actor::anonymous_admin();
        let mut config = serde_json::json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "a", "total_time_ms": 1_000},
                {"participant_id": "b", "total_time_ms": 1_000}
            ],
            "action_on_timeout": {"type": "skip_cycle"},
            "auto_advance": true
        });
        let mut sessions = Vec::new();
        for k in 0..100_i64 {
            // Deadlines spread over 100 ms, so several fall due together.
            config["participants"][0]["total_time_ms"] = serde_json::json!(1_000 + k);
            let s = id();
            let config = SessionConfig::parse(&config).expect("valid config");
            service.create(&admin, config, s).await.expect("created");
            let started = service
                .execute(&admin, s, Command::Start, None)
                .await
                .expect("started");
            sessions.push((s, started.at_ms, 1_000 + k));
        }
        let give_up = Instant::now() + Duration::from_secs(20);
        while metrics.timeouts_fired.get() < 200 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).expect("worker listening");
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("the worker returns after the stop signal")
            .expect("no panic");
        assert_eq!(metrics.timeouts_fired.get(), 200);
        assert_eq!(metrics.timeouts_swept.get(), 0);
        assert_eq!(timers.armed(), 0);
        for (s, t0, a_ms) in sessions {
            let view = service.get(&admin, s).await.expect("readable");
            assert_eq!(view.status, Status::Expired, "{s}");
            // Created 1, started 2, a's timeout 3, b's 4: each applied once,
            // as of its deadline.
            assert_eq!(view.version, 4, "{s}");
            assert_eq!(view.session_completed_at_ms, Some(t0 + a_ms + 1_000), "{s}");
        }
    }
}
