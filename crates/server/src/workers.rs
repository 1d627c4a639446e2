//! Background workers: the timeout safety net (a sweep of the deadline
//! index for deadlines no local timer applied; the local timers themselves
//! are in the `timers` module), the audit drain and the bus statistics (the
//! webhook workers have a module of their own; their metrics are registered
//! here with the others), and the presence worker (leaves and auto-pauses). Each runs until the shutdown signal flips, then returns, so
//! shutdown can wait for them (no detached task is left behind).
//!
//! They depend on the core and on Prometheus, not on the transport: their
//! metrics ([`WorkerMetrics`]) are registered by the server in the registry
//! the transport's `/metrics` renders, and their audit status is a
//! [`kairos_domain::AuditHealth`] the transport reads through a closure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kairos_domain::{
    AbsenceCheck, AuditHealth, AuditSink, Claimed, DynSessionService as Service, Outbox,
};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How the safety net sweeps the deadline index (`TIMEOUT_SWEEP_MS`,
/// `TIMEOUT_SWEEP_GRACE_MS`). Deadlines are fired on time by the local
/// timer of the instance that committed them; the sweep is for those whose
/// instance died (or failed to apply them), so it runs rarely and leaves
/// each deadline to its timer for `grace` first. A dead instance's deadlines
/// are applied up to `every + grace` late: the price of a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Time between two sweeps (unless one filled its batch: then at once).
    pub every: Duration,
    /// Only deadlines at least this far past are claimed.
    pub grace: Duration,
}

/// Claimed sessions an instance holds at most (firing or waiting to fire).
const CLAIM_BATCH: usize = 256;
/// A claim hides a session from other instances this long; if the claimer
/// dies, another instance fires it after the lease.
const CLAIM_LEASE_MS: i64 = 5_000;
/// Timeouts applied concurrently.
const FIRE_CONCURRENCY: usize = 64;

/// Buckets in seconds for timeout lateness: 100 µs to 5 s (the transport's
/// latency buckets).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric the workers record. Names are prefixed `kairos_`; the
/// Grafana dashboard and the alert rules in `deploy/` name them, and every
/// one is listed in `docs/operations.md`.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Deadlines applied by this instance (local timers and sweep).
    pub timeouts_fired: IntCounter,
    /// Of those, the deadlines the sweep applied (no local timer did in time).
    pub timeouts_swept: IntCounter,
    /// From deadline to commit, for deadlines this instance applied.
    pub timeout_lateness: Histogram,
    /// Local timers armed: deadlines this instance committed, not yet due.
    pub timers_armed: IntGauge,
    /// Primary store errors: the transport's counter, shared.
    pub store_errors: IntCounter,
    /// Events waiting in the outbox for the audit trail.
    pub audit_backlog: IntGauge,
    /// Age in ms of the oldest event waiting for the audit trail.
    pub audit_backlog_age_ms: IntGauge,
    /// Events written to the audit trail.
    pub audit_written: IntCounter,
    /// 1 while the event bus can deliver (its subscriber connection is up).
    pub bus_subscriber_up: IntGauge,
    /// Bus messages that could not be published (failed or dropped), since start.
    pub bus_publish_failures: IntGauge,
    /// Webhook attempts by `outcome` (the webhooks module's `Outcome`).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook deliveries queued (shared by every instance).
    pub webhook_queue_depth: IntGauge,
    /// How long ago the oldest queued webhook delivery's event was committed.
    pub webhook_oldest_undelivered_seconds: IntGauge,
    /// `presence_left` events this instance sent (leaves it claimed and fired).
    pub presence_left: IntCounter,
    /// Sessions this instance paused because their active participant was
    /// disconnected (`auto_pause_on_disconnect_ms`).
    pub presence_auto_pauses: IntCounter,
}

impl WorkerMetrics {
    /// Registers the workers' metrics in `registry` (the one `/metrics`
    /// renders); `store_errors` is the counter already registered there.
    pub fn register(registry: &Registry, store_errors: IntCounter) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let timeout_lateness = Histogram::with_opts(
            HistogramOpts::new(
                "kairos_timeout_lateness_seconds",
                "From a deadline to the commit that applied it",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(timeout_lateness.clone()))?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "kairos_webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        Ok(Self {
            timeouts_fired: counter(
                "kairos_timeouts_fired_total",
                "Deadlines applied by this instance (local timers and the sweep)",
            )?,
            timeouts_swept: counter(
                "kairos_timeouts_swept_total",
                "Deadlines the safety-net sweep applied because no local timer had",
            )?,
            timeout_lateness,
            timers_armed: gauge(
                "kairos_timers_armed",
                "Local timers armed: deadlines this instance committed, not yet due",
            )?,
            store_errors,
            audit_backlog: gauge("kairos_audit_backlog", "Events waiting for the audit trail")?,
            audit_backlog_age_ms: gauge(
                "kairos_audit_backlog_age_ms",
                "Age of the oldest event waiting for the audit trail",
            )?,
            audit_written: counter(
                "kairos_audit_events_written_total",
                "Events written to the audit trail",
            )?,
            bus_subscriber_up: gauge(
                "kairos_bus_subscriber_up",
                "1 while the event bus subscriber connection is up",
            )?,
            bus_publish_failures: gauge(
                "kairos_bus_publish_failures_total",
                "Bus messages not published (failed or dropped) since start",
            )?,
            webhook_deliveries,
            webhook_queue_depth: gauge(
                "kairos_webhook_queue_depth",
                "Webhook deliveries queued, due or waiting for a retry",
            )?,
            webhook_oldest_undelivered_seconds: gauge(
                "kairos_webhook_oldest_undelivered_seconds",
                "Age of the oldest queued webhook delivery's event",
            )?,
            presence_left: counter(
                "kairos_presence_left_total",
                "presence_left events this instance sent",
            )?,
            presence_auto_pauses: counter(
                "kairos_presence_auto_pauses_total",
                "Sessions this instance paused because the active participant disconnected",
            )?,
        })
    }

    /// Records deadlines an instance applied at `now_ms`.
    pub fn record_fired(&self, fired: &[i64], now_ms: i64) {
        for deadline in fired {
            self.timeouts_fired.inc();
            let late_ms = now_ms.saturating_sub(*deadline).max(0);
            self.timeout_lateness.observe(late_ms as f64 / 1000.0);
        }
    }
}

/// The safety net: sweeps the deadline index every `sweep.every` for
/// deadlines more than `sweep.grace` past, and fires them, until `shutdown` turns true, then fires what it had
/// already claimed and returns.
///
/// Claiming and firing overlap: as soon as every claimed session has
/// started firing (at most `FIRE_CONCURRENCY` at once), the worker claims
/// again, up to `CLAIM_BATCH` in hand, so one slow commit never holds back
/// the next claim. It claims only once its queue is empty, so that an
/// instance never hoards more than it is about to fire while other
/// instances idle, and never re-scans the index for a handful of slots. A
/// claim that filled the room it was given is followed by another as soon as
/// the queue drains; otherwise the next sweep is `sweep.every` later.
pub async fn timeout_worker(
    service: Service,
    metrics: WorkerMetrics,
    sweep: Sweep,
    mut shutdown: watch::Receiver<bool>,
) {
    // While the store is down, log once per outage.
    let mut failing = false;
    let grace_ms = i64::try_from(sweep.grace.as_millis()).unwrap_or(i64::MAX);
    let mut queue: VecDeque<Claimed> = VecDeque::new();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut next_poll = Instant::now();
    // Set when the shutdown signal flips or its sender is gone.
    let mut stopping = false;
    loop {
        stopping = stopping || *shutdown.borrow();
        while running.len() < FIRE_CONCURRENCY {
            let Some(claimed) = queue.pop_front() else {
                break;
            };
            running.spawn(fire(service.clone(), metrics.clone(), claimed));
        }
        if stopping && running.is_empty() {
            return;
        }
        let room = CLAIM_BATCH.saturating_sub(running.len());
        let may_claim = !stopping && queue.is_empty();
        if may_claim && Instant::now() >= next_poll {
            match service.claim_overdue(room, CLAIM_LEASE_MS, grace_ms).await {
                Ok(due) => {
                    if failing {
                        tracing::info!("claiming due deadlines works again");
                        failing = false;
                    }
                    // More may be due right now: claim again without waiting.
                    let full = due.len() == room;
                    queue.extend(due);
                    next_poll = if full {
                        Instant::now()
                    } else {
                        Instant::now() + sweep.every
                    };
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    if !failing {
                        tracing::warn!(error = %e, "claiming due deadlines failed; retrying with backoff until the store answers");
                    }
                    failing = true;
                    next_poll = Instant::now() + sweep.every;
                }
            }
            continue;
        }
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "applying a timeout panicked");
                }
            }
            _ = tokio::time::sleep_until(next_poll), if may_claim => {}
            changed = shutdown.changed(), if !stopping => {
                stopping = changed.is_err() || *shutdown.borrow();
            }
        }
    }
}

/// Applies one claimed session's due deadlines and records them.
async fn fire(service: Service, metrics: WorkerMetrics, claimed: Claimed) {
    let id = claimed.id;
    match service.fire_claimed(claimed).await {
        Ok(fired) => {
            metrics.record_fired(&fired, service.now_ms());
            metrics.timeouts_swept.inc_by(fired.len() as u64);
        }
        Err(e) => {
            metrics.store_errors.inc();
            tracing::warn!(session_id = %id, error = %e, "applying a timeout failed; retried after the lease");
        }
    }
}

/// Shared audit status for `/health`: ok, degraded, disabled.
#[derive(Debug, Default)]
pub struct AuditStatus(AtomicU8);

impl AuditStatus {
    /// Current status.
    pub fn get(&self) -> AuditHealth {
        match self.0.load(Ordering::Relaxed) {
            1 => AuditHealth::Degraded,
            2 => AuditHealth::Disabled,
            _ => AuditHealth::Ok,
        }
    }

    /// Sets the status.
    pub fn set(&self, h: AuditHealth) {
        let v = match h {
            AuditHealth::Ok => 0,
            AuditHealth::Degraded => 1,
            AuditHealth::Disabled => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// Events moved per batch from the outbox to the audit trail: one read,
/// one write (one PostgreSQL transaction), one acknowledgement. The Redis
/// store makes a read or an acknowledgement of this many out of several
/// calls of at most 200 entries (`store_redis::outbox::CALL_ENTRIES`),
/// one after the other, so that no call holds Redis, and every instance's
/// commits behind it, for more than about half a millisecond. Bursts are
/// drained in batches of this size, back to back.
const AUDIT_BATCH: usize = 1_000;
/// After a nudge, the audit worker waits this long so that one read takes
/// the events of many commits (a read visits every outbox partition this
/// instance wrote to since the last).
const AUDIT_GATHER: Duration = Duration::from_millis(50);
/// A read of at least this many events (4,000 a second at
/// [`AUDIT_GATHER`]) means a burst, such as many deadlines falling due
/// at once ...
const AUDIT_BURST: usize = 200;
/// ... and after it the worker gathers this long instead (then reads
/// [`AUDIT_BATCH`] after [`AUDIT_BATCH`] until drained): fewer, larger
/// writes, and PostgreSQL's work mostly after the burst instead of on the
/// same cores as the deadlines still firing (docs/performance.md measures
/// what that does to timeout lateness). The trail then lags the commits by
/// up to this much more while the burst lasts.
const AUDIT_GATHER_BURST: Duration = Duration::from_secs(1);

/// How long the audit worker gathers commits after a nudge, given how
/// many events its last read returned.
fn audit_gather(last_read: usize) -> Duration {
    if last_read >= AUDIT_BURST {
        AUDIT_GATHER_BURST
    } else {
        AUDIT_GATHER
    }
}
/// The longest time between two full sweeps of the outbox
/// ([`outbox_sweep`]).
const OUTBOX_SWEEP_MAX: Duration = Duration::from_secs(15);

/// How often an outbox reader visits every partition (the store's full
/// sweep: entries of an instance that died before reading them, and
/// leases older than `AUDIT_RECLAIM_MS` to take over), and so how often
/// the idle audit worker looks anyway and refreshes the backlog gauges:
/// half the reclaim time, at most 15 s. A dead instance's events are
/// taken over within 1.5 times `AUDIT_RECLAIM_MS` (45 s by default) while
/// an idle instance visits the 64 partitions four times a minute.
pub fn outbox_sweep(reclaim_after_ms: i64) -> Duration {
    let half = u64::try_from(reclaim_after_ms / 2).unwrap_or(0);
    Duration::from_millis(half).clamp(Duration::from_millis(100), OUTBOX_SWEEP_MAX)
}
/// The backlog gauges are measured at most this often while the worker is
/// busy.
const AUDIT_BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// What the audit worker drains, into what, and as whom.
#[allow(missing_debug_implementations)] // Holds trait objects without Debug.
pub struct AuditWorker {
    /// Where committed events wait.
    pub outbox: Arc<dyn Outbox>,
    /// Where they go.
    pub audit: Arc<dyn AuditSink>,
    /// For the clock.
    pub service: Service,
    /// Backlog and throughput metrics.
    pub metrics: WorkerMetrics,
    /// `/health`'s audit status.
    pub status: Arc<AuditStatus>,
    /// This instance's consumer name in the outbox.
    pub consumer: String,
    /// Take over entries another consumer leased this long ago without acknowledging.
    pub reclaim_after_ms: i64,
    /// Notified after each commit of this instance (events wait in the outbox).
    pub nudge: Arc<Notify>,
}

/// Drains the outbox into the audit trail until `shutdown` turns true:
/// read a batch, write it, acknowledge only after the write succeeded, back
/// off while the trail is down. Entries another consumer leased and did not
/// acknowledge within `reclaim_after_ms` (it died between reading and
/// acknowledging) are taken over.
///
/// With the outbox drained it does not poll: it waits for this instance's
/// next commit (`nudge`), then `AUDIT_GATHER` more so that one read takes
/// many commits' events (`AUDIT_GATHER_BURST` after a read of a burst's
/// size), or at most [`outbox_sweep`] for other instances' leftovers.
pub async fn audit_worker(worker: AuditWorker, mut shutdown: watch::Receiver<bool>) {
    let AuditWorker {
        outbox,
        audit,
        service,
        metrics,
        status,
        consumer,
        reclaim_after_ms,
        nudge,
    } = worker;
    // With nothing read and no nudge, look again anyway when the store's
    // next full sweep is due (another instance's leftovers), and refresh
    // the backlog gauges then.
    let idle_poll = outbox_sweep(reclaim_after_ms);
    let mut backoff = Duration::from_millis(100);
    let mut next_backlog = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // `None`: drained; wait for a nudge.
        let mut pause = None;
        let mut read = 0;
        match outbox.read(&consumer, AUDIT_BATCH, reclaim_after_ms).await {
            Ok(batch) if !batch.is_empty() => {
                read = batch.len();
                let events: Vec<_> = batch.iter().map(|e| e.event.clone()).collect();
                match audit.write(&events).await {
                    Ok(()) => {
                        let full = batch.len() >= AUDIT_BATCH;
                        let ids: Vec<String> = batch.into_iter().map(|e| e.id).collect();
                        if let Err(e) = outbox.ack(&ids).await {
                            tracing::warn!(error = %e, "acknowledging audited events failed; they will be written again (idempotent)");
                        }
                        metrics.audit_written.inc_by(events.len() as u64);
                        backoff = Duration::from_millis(100);
                        // A full batch may have left more behind: read again
                        // at once. Otherwise the outbox is drained up to the
                        // read; the next commit's nudge says when to look.
                        if full {
                            pause = Some(Duration::ZERO);
                        }
                    }
                    Err(e) => {
                        status.set(AuditHealth::Degraded);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "audit write failed; backing off");
                        pause = Some(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.store_errors.inc();
                tracing::warn!(error = %e, "reading the outbox failed");
                pause = Some(backoff);
            }
        }
        // Measured when due, and before waiting idle while the last
        // measurement saw a backlog (so that the status turns OK at once).
        let measure = tokio::time::Instant::now() >= next_backlog
            || (pause.is_none() && metrics.audit_backlog.get() != 0);
        if measure {
            next_backlog = tokio::time::Instant::now() + AUDIT_BACKLOG_EVERY;
        }
        if measure && let Ok((len, age)) = outbox.backlog(service.now_ms()).await {
            metrics
                .audit_backlog
                .set(i64::try_from(len).unwrap_or(i64::MAX));
            metrics.audit_backlog_age_ms.set(age);
            if len == 0 {
                status.set(AuditHealth::Ok);
            } else if age > 10_000 {
                status.set(AuditHealth::Degraded);
            }
        }
        pause_or_nudge(pause, &nudge, idle_poll, audit_gather(read), &mut shutdown).await;
    }
}

/// An outbox worker's wait between reads (the audit worker's and the
/// webhook fan-out's): `Some(pause)`, that long (zero: none); `None` (the
/// outbox drained), until `nudge` (a commit of this instance) and then
/// `gather` more, so that one read takes many commits' events, or at most
/// `idle`. Any wait ends early when `shutdown` changes.
pub(crate) async fn pause_or_nudge(
    pause: Option<Duration>,
    nudge: &Notify,
    idle: Duration,
    gather: Duration,
    shutdown: &mut watch::Receiver<bool>,
) {
    let wait = match pause {
        Some(pause) if pause.is_zero() => return,
        Some(pause) => pause,
        None => {
            let nudged = tokio::select! {
                () = nudge.notified() => true,
                () = tokio::time::sleep(idle) => false,
                _ = shutdown.changed() => false,
            };
            if !nudged {
                return;
            }
            gather
        }
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = shutdown.changed() => {}
    }
}

/// With nothing due that this instance scheduled, the presence worker
/// looks anyway after this long: for the leaves and absences of other
/// instances (one that died, or scheduled them and failed to fire them)
/// and for lapsed connections. Those come at most this late; the ones this
/// instance scheduled come when due.
pub const PRESENCE_IDLE_POLL: Duration = Duration::from_secs(1);
/// While the registry fails, the worker tries again this often.
const PRESENCE_RETRY: Duration = Duration::from_millis(100);
/// The presence worker claims at most this often (unless a claim filled
/// its batch): the work of a burst of disconnects, or of the leaves they
/// scheduled falling due one after the other, is claimed in batches rather
/// than one claim per connection. A leave is sent at most this late.
const PRESENCE_GATHER: Duration = Duration::from_millis(50);
/// Leaves (and, apart, absences) claimed per poll.
const PRESENCE_BATCH: usize = 256;
/// A claimed leave or absence is hidden from other instances this long;
/// if its claimer dies, another instance takes it after the lease.
const PRESENCE_CLAIM_LEASE_MS: i64 = 5_000;

/// The instants at which work this instance scheduled falls due, in the
/// service clock's ms, and its worker's wake-up: the worker sleeps until
/// the earliest instead of polling. The presence worker's (a closed
/// connection's absence check and leave, an absence's next check) and the
/// webhook delivery worker's (the retries its attempts scheduled).
#[derive(Debug, Default)]
pub struct DueSchedule {
    due: Mutex<BinaryHeap<Reverse<i64>>>,
    wake: Notify,
}

impl DueSchedule {
    /// Work falls due at `at_ms`: the worker looks then (at once if due).
    pub fn add(&self, at_ms: i64) {
        let mut due = self.due();
        let earlier = due.peek().is_none_or(|Reverse(first)| at_ms < *first);
        due.push(Reverse(at_ms));
        drop(due);
        if earlier {
            self.wake.notify_one();
        }
    }

    /// The observer to give the service ([`kairos_domain::PresenceDueObserver`]).
    pub fn observer(self: &Arc<Self>) -> kairos_domain::PresenceDueObserver {
        let schedule = self.clone();
        Arc::new(move |at_ms| schedule.add(at_ms))
    }

    /// The earliest instant.
    pub(crate) fn next(&self) -> Option<i64> {
        self.due().peek().map(|Reverse(first)| *first)
    }

    /// Waits for an instant earlier than every other to be added.
    pub(crate) async fn earlier(&self) {
        self.wake.notified().await;
    }

    /// Drops the instants at or before `now_ms` (the claims made as of
    /// `now_ms` covered them) and returns the earliest left.
    pub(crate) fn settle(&self, now_ms: i64) -> Option<i64> {
        let mut due = self.due();
        while due.peek().is_some_and(|Reverse(first)| *first <= now_ms) {
            due.pop();
        }
        due.peek().map(|Reverse(first)| *first)
    }

    fn due(&self) -> MutexGuard<'_, BinaryHeap<Reverse<i64>>> {
        // Every operation leaves the heap valid before it could panic.
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long from `now_ms` until `at_ms`, both on the service's clock, as a
/// wait on the local monotonic clock (whole ms, which the runtime's timer
/// rounds up: never early; zero when `at_ms` has passed).
pub(crate) fn wait_until_ms(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// Until `shutdown` turns true: sweeps the presence entries of dead
/// instances, sends `presence_left` for the leaves due, and checks the
/// absences due, pausing a session whose active participant has been
/// gone for its `auto_pause_on_disconnect_ms` (through the service's
/// compare-and-set, so two instances checking one absence commit once).
/// Any instance runs it; the claims' leases share the work.
///
/// It does not poll: it sleeps until the earliest instant in `schedule`
/// (work this instance scheduled), or [`PRESENCE_IDLE_POLL`] for the rest,
/// and claims at most every `PRESENCE_GATHER` (50 ms) unless a claim
/// filled its batch.
pub async fn presence_worker(
    service: Service,
    metrics: WorkerMetrics,
    schedule: Arc<DueSchedule>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Read before claiming: what is due by now is claimed below (the
        // claims read the clock again, later).
        let now_ms = service.now_ms();
        let claimed_at = Instant::now();
        let mut full = false;
        let mut errors = Vec::new();
        match service
            .claim_presence_leaves(PRESENCE_BATCH, PRESENCE_CLAIM_LEASE_MS)
            .await
        {
            Ok(leaves) => {
                full |= leaves.len() == PRESENCE_BATCH;
                for leave in leaves {
                    match service.fire_presence_leave(leave).await {
                        Ok(()) => metrics.presence_left.inc(),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match service
            .claim_absences(PRESENCE_BATCH, PRESENCE_CLAIM_LEASE_MS)
            .await
        {
            Ok(absences) => {
                full |= absences.len() == PRESENCE_BATCH;
                for absence in absences {
                    let session_id = absence.session_id;
                    match service.fire_absence(absence).await {
                        Ok(AbsenceCheck::Paused { at_ms }) => {
                            metrics.presence_auto_pauses.inc();
                            tracing::info!(%session_id, at_ms, "session paused: its active participant disconnected");
                        }
                        Ok(AbsenceCheck::Waiting { next_check_ms }) => schedule.add(next_check_ms),
                        Ok(AbsenceCheck::Dropped) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        // Log once per outage rather than ten lines a second.
        match errors.first() {
            Some(e) if !failing => {
                tracing::warn!(error = %e, "presence worker failed; retrying");
                failing = true;
            }
            Some(_) => {}
            None => failing = false,
        }
        let next = schedule.settle(now_ms);
        if full && !failing {
            continue;
        }
        let pause = if failing {
            PRESENCE_RETRY
        } else {
            next.map_or(PRESENCE_IDLE_POLL, |at| {
                wait_until_ms(at, service.now_ms()).min(PRESENCE_IDLE_POLL)
            })
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = schedule.earlier() => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        // Not more often than every `PRESENCE_GATHER`.
        let since = claimed_at.elapsed();
        if since < PRESENCE_GATHER {
            tokio::select! {
                () = tokio::time::sleep(PRESENCE_GATHER - since) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Copies the Redis bus's counters into the metrics every second, so
/// operators see a dead subscriber connection and dropped publishes.
pub async fn bus_stats_worker(
    bus: bus_redis::RedisBus,
    metrics: WorkerMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    use kairos_domain::EventBus;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let stats = bus.stats();
        metrics.bus_subscriber_up.set(i64::from(bus.is_healthy()));
        metrics.bus_publish_failures.set(
            i64::try_from(stats.publish_failed.saturating_add(stats.publish_dropped))
                .unwrap_or(i64::MAX),
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use adapter_memory::{MemoryBus, MemoryStore, SystemClock};
    use kairos_domain::{Actor, Command, SessionConfig, SessionId, Status};

    use super::*;

    #[test]
    fn the_audit_worker_gathers_longer_after_a_burst() {
        assert_eq!(audit_gather(0), Duration::from_millis(50));
        assert_eq!(audit_gather(199), Duration::from_millis(50));
        assert_eq!(audit_gather(200), Duration::from_secs(1));
        assert_eq!(audit_gather(AUDIT_BATCH), Duration::from_secs(1));
    }

    /// More due sessions than one claim may take, all due at once: the
    /// worker claims again as its queue drains, applies each deadline
    /// exactly once, and returns when told to stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fires_every_due_session_once_beyond_one_claim() {
        let service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            Arc::new(SystemClock::new()),
        );
        let admin = Actor::anonymous_admin();
        let config = serde_json::json!({
            "sync_mode": "per_participant",
            "participants": [
                {"participant_id": "a", "total_time_ms": 1000},
                {"participant_id": "b", "total_time_ms": 1000}
            ]
        });
        let n = CLAIM_BATCH * 2 + 10;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = SessionId::from_uuid(uuid::Uuid::new_v4());
            let config = SessionConfig::parse(&config).expect("valid config");
            service.create(&admin, config, id).await.expect("created");
            service
                .execute(&admin, id, Command::Start, None)
                .await
                .expect("started");
            ids.push(id);
        }
        // Every one-second clock has run out before the worker starts.
        tokio::time::sleep(Duration::from_millis(1_100)).await;

        let (registry, metrics) = test_registry_and_metrics();
        let (stop, stopped) = watch::channel(false);
        // No local timers here: the sweep alone, without a grace.
        let sweep = Sweep {
            every: Duration::from_millis(5),
            grace: Duration::ZERO,
        };
        let worker = tokio::spawn(timeout_worker(
            service.clone(),
            metrics.clone(),
            sweep,
            stopped,
        ));
        let give_up = Instant::now() + Duration::from_secs(20);
        while metrics.timeouts_fired.get() < n as u64 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).expect("worker listening");
        tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("the worker returns after the stop signal")
            .expect("no panic");

        assert_eq!(metrics.timeouts_fired.get(), n as u64);
        assert_eq!(metrics.timeouts_swept.get(), n as u64);
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .expect("encodable");
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(text.contains(&format!("kairos_timeouts_fired_total {n}")));
        assert!(text.contains("kairos_timeout_lateness_seconds_bucket"));
        for id in ids {
            let view = service.get(&admin, id).await.expect("readable");
            assert_eq!(view.status, Status::Expired, "{id}");
            // created 1, started 2, expired 3: applied once.
            assert_eq!(view.version, 3, "{id}");
        }
    }

    /// The workers' metrics in a registry of their own (with the store
    /// errors counter the transport would register), and that registry.
    fn test_registry_and_metrics() -> (Registry, WorkerMetrics) {
        let registry = Registry::new();
        let store_errors = IntCounter::new("kairos_store_errors_total", "Primary store errors")
            .expect("a valid metric");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("registered once");
        let metrics = WorkerMetrics::register(&registry, store_errors).expect("registered once");
        (registry, metrics)
    }

    /// The workers' metrics, for tests that do not read the registry.
    pub(crate) fn test_metrics() -> WorkerMetrics {
        test_registry_and_metrics().1
    }

    /// The service's clock following tokio's (paused) time.
    pub(crate) struct TokioClock(pub(crate) Instant);

    impl kairos_domain::Clock for TokioClock {
        fn now_ms(&self) -> i64 {
            1_000_000 + i64::try_from(self.0.elapsed().as_millis()).expect("in range")
        }
    }

    /// The in-memory registry, counting the worker's claims of leaves.
    struct Counting {
        inner: adapter_memory::MemoryPresence,
        claims: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl kairos_domain::PresenceRegistry for Counting {
        async fn join(
            &self,
            connection: &kairos_domain::PresenceConnection,
            now_ms: i64,
            lease_ms: i64,
        ) -> Result<bool, kairos_domain::StoreError> {
            self.inner.join(connection, now_ms, lease_ms).await
        }
        async fn leave(
            &self,
            session_id: SessionId,
            connection_id: &str,
            now_ms: i64,
            leave_delay_ms: i64,
        ) -> Result<bool, kairos_domain::StoreError> {
            self.inner
                .leave(session_id, connection_id, now_ms, leave_delay_ms)
                .await
        }
        async fn renew(
            &self,
            connections: &[(SessionId, String)],
            now_ms: i64,
            lease_ms: i64,
        ) -> Result<(), kairos_domain::StoreError> {
            self.inner.renew(connections, now_ms, lease_ms).await
        }
        async fn snapshot(
            &self,
            session_id: SessionId,
            now_ms: i64,
        ) -> Result<kairos_domain::PresenceSnapshot, kairos_domain::StoreError> {
            self.inner.snapshot(session_id, now_ms).await
        }
        async fn claim_due_leaves(
            &self,
            now_ms: i64,
            limit: usize,
            lease_ms: i64,
            leave_delay_ms: i64,
        ) -> Result<Vec<kairos_domain::PendingLeave>, kairos_domain::StoreError> {
            self.claims.fetch_add(1, Ordering::Relaxed);
            self.inner
                .claim_due_leaves(now_ms, limit, lease_ms, leave_delay_ms)
                .await
        }
        async fn finish_leave(
            &self,
            leave: &kairos_domain::PendingLeave,
        ) -> Result<(), kairos_domain::StoreError> {
            self.inner.finish_leave(leave).await
        }
        async fn claim_due_absences(
            &self,
            now_ms: i64,
            limit: usize,
            lease_ms: i64,
        ) -> Result<Vec<kairos_domain::Absence>, kairos_domain::StoreError> {
            self.inner.claim_due_absences(now_ms, limit, lease_ms).await
        }
        async fn reschedule_absence(
            &self,
            absence: &kairos_domain::Absence,
            next_check_ms: Option<i64>,
        ) -> Result<(), kairos_domain::StoreError> {
            self.inner.reschedule_absence(absence, next_check_ms).await
        }
    }

    /// The presence worker does not poll: a leave this instance scheduled
    /// is sent when it falls due (not up to a poll period later), and with
    /// nothing scheduled the worker claims once per `PRESENCE_IDLE_POLL`.
    /// Tokio's time is paused (it jumps to the next timer), so the instants
    /// are exact, not measured.
    #[tokio::test(start_paused = true)]
    async fn the_presence_worker_wakes_when_a_leave_is_due_and_otherwise_once_a_second() {
        const DELAY_MS: i64 = 3_000;
        let registry = Arc::new(Counting {
            inner: adapter_memory::MemoryPresence::new(),
            claims: std::sync::atomic::AtomicUsize::new(0),
        });
        let schedule = Arc::new(DueSchedule::default());
        let service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            Arc::new(TokioClock(Instant::now())),
        )
        .with_presence(registry.clone(), DELAY_MS)
        .with_presence_due_observer(schedule.observer());
        let metrics = test_metrics();
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(presence_worker(
            service.clone(),
            metrics.clone(),
            schedule.clone(),
            stopped,
        ));

        // Idle for 10 s: the first claim at start, then one a second.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(registry.claims.load(Ordering::Relaxed), 11);

        let session = SessionId::from_uuid(uuid::Uuid::new_v4());
        assert!(
            service
                .presence_join(session, "c1", "alice", None)
                .await
                .expect("joined")
        );
        let left_at = Instant::now();
        assert!(service.presence_leave(session, "c1").await.expect("left"));
        // Due at `left_at + DELAY_MS`, which is not on the one-second grid
        // of the idle claims (left at 10.5 s): sent then, not later.
        tokio::time::sleep_until(left_at + Duration::from_millis(DELAY_MS as u64 - 2)).await;
        assert_eq!(metrics.presence_left.get(), 0, "not before it is due");
        tokio::time::sleep_until(left_at + Duration::from_millis(DELAY_MS as u64 + 2)).await;
        assert_eq!(metrics.presence_left.get(), 1, "sent when due");

        stop.send(true).expect("worker listening");
        worker.await.expect("no panic");
    }

    #[test]
    fn the_outbox_sweep_is_half_the_reclaim_time_within_bounds() {
        assert_eq!(outbox_sweep(30_000), Duration::from_secs(15));
        assert_eq!(outbox_sweep(60_000), Duration::from_secs(15));
        assert_eq!(outbox_sweep(1_000), Duration::from_millis(500));
        assert_eq!(outbox_sweep(10), Duration::from_millis(100));
    }

    #[test]
    fn a_due_schedule_keeps_the_instants_after_the_last_claim() {
        let schedule = DueSchedule::default();
        assert_eq!(schedule.next(), None);
        schedule.add(300);
        schedule.add(100);
        schedule.add(200);
        schedule.add(100);
        assert_eq!(schedule.next(), Some(100));
        assert_eq!(schedule.settle(99), Some(100));
        assert_eq!(schedule.settle(200), Some(300));
        assert_eq!(schedule.settle(300), None);
        assert_eq!(schedule.next(), None);
    }
}
