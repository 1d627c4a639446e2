//! Background workers: the timeout scheduler, the audit drain, the
//! presence worker (leaves and auto-pauses) and the bus statistics. Each runs until the shutdown signal flips, then returns, so
//! shutdown can wait for them (no detached task is left behind).
//!
//! They depend on the core and on Prometheus, not on the transport: their
//! metrics ([`WorkerMetrics`]) are registered by the server in the registry
//! the transport's `/metrics` renders, and their audit status is a
//! [`kairos_domain::AuditHealth`] the transport reads through a closure.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use kairos_domain::{
    AbsenceCheck, AuditHealth, AuditSink, Claimed, DynSessionService as Service, Outbox,
};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How often the scheduler looks for due deadlines. Small, because lateness
/// from deadline to clients is a product promise (p99 under 20 ms); cheap,
/// because on standalone Redis and Sentinel one poll is one script call.
pub const TIMEOUT_POLL: Duration = Duration::from_millis(5);
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
    /// Deadlines applied by the timeout worker.
    pub timeouts_fired: IntCounter,
    /// From deadline to commit, for deadlines the timeout worker applied.
    pub timeout_lateness: Histogram,
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
        Ok(Self {
            timeouts_fired: counter(
                "kairos_timeouts_fired_total",
                "Deadlines applied by the timeout worker",
            )?,
            timeout_lateness,
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
        })
    }
}

/// Fires due deadlines until `shutdown` turns true, then fires what it had
/// already claimed and returns.
///
/// Claiming and firing overlap: as soon as every claimed session has
/// started firing (at most `FIRE_CONCURRENCY` at once), the worker claims
/// again, up to `CLAIM_BATCH` in hand, so one slow commit never holds back
/// the next claim. It claims only once its queue is empty, so that an
/// instance never hoards more than it is about to fire while other
/// instances idle, and never re-scans the index for a handful of slots. A
/// claim that filled the room it was given is followed by another as soon as
/// the queue drains; otherwise the next poll is [`TIMEOUT_POLL`] later.
pub async fn timeout_worker(
    service: Service,
    metrics: WorkerMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    // While the store is down, poll less often and log once per outage
    // rather than 200 lines a second.
    let mut failing = false;
    let mut pause = TIMEOUT_POLL;
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
            match service.claim_due(room, CLAIM_LEASE_MS).await {
                Ok(due) => {
                    if failing {
                        tracing::info!("claiming due deadlines works again");
                        failing = false;
                        pause = TIMEOUT_POLL;
                    }
                    // More may be due right now: claim again without waiting.
                    let full = due.len() == room;
                    queue.extend(due);
                    next_poll = if full {
                        Instant::now()
                    } else {
                        Instant::now() + TIMEOUT_POLL
                    };
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    if !failing {
                        tracing::warn!(error = %e, "claiming due deadlines failed; retrying with backoff until the store answers");
                    }
                    failing = true;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    next_poll = Instant::now() + pause;
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
            let now = service.now_ms();
            for deadline in fired {
                metrics.timeouts_fired.inc();
                let late_ms = now.saturating_sub(deadline).max(0);
                metrics.timeout_lateness.observe(late_ms as f64 / 1000.0);
            }
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

/// Events moved per batch from the outbox to the audit trail.
const AUDIT_BATCH: usize = 500;

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
}

/// Drains the outbox into the audit trail until `shutdown` turns true:
/// read a batch, write it, acknowledge only after the write succeeded, back
/// off while the trail is down. Entries another consumer leased and did not
/// acknowledge within `reclaim_after_ms` (it died between reading and
/// acknowledging) are taken over.
pub async fn audit_worker(worker: AuditWorker, mut shutdown: watch::Receiver<bool>) {
    let AuditWorker {
        outbox,
        audit,
        service,
        metrics,
        status,
        consumer,
        reclaim_after_ms,
    } = worker;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut pause = Duration::from_millis(50);
        match outbox.read(&consumer, AUDIT_BATCH, reclaim_after_ms).await {
            Ok(batch) if !batch.is_empty() => {
                let events: Vec<_> = batch.iter().map(|e| e.event.clone()).collect();
                match audit.write(&events).await {
                    Ok(()) => {
                        let ids: Vec<String> = batch.into_iter().map(|e| e.id).collect();
                        if let Err(e) = outbox.ack(&ids).await {
                            tracing::warn!(error = %e, "acknowledging audited events failed; they will be written again (idempotent)");
                        }
                        metrics.audit_written.inc_by(events.len() as u64);
                        backoff = Duration::from_millis(100);
                        pause = Duration::ZERO;
                    }
                    Err(e) => {
                        status.set(AuditHealth::Degraded);
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "audit write failed; backing off");
                        pause = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.store_errors.inc();
                tracing::warn!(error = %e, "reading the outbox failed");
                pause = backoff;
            }
        }
        if let Ok((len, age)) = outbox.backlog(service.now_ms()).await {
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
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// How often the presence worker looks for due leaves and absences. A
/// leave's `presence_left` and an auto-pause's commit come at most this
/// late (the pause itself is as of its own instant, whenever committed).
pub const PRESENCE_POLL: Duration = Duration::from_millis(100);
/// Leaves (and, apart, absences) claimed per poll.
const PRESENCE_BATCH: usize = 256;
/// A claimed leave or absence is hidden from other instances this long;
/// if its claimer dies, another instance takes it after the lease.
const PRESENCE_CLAIM_LEASE_MS: i64 = 5_000;

/// Until `shutdown` turns true: sweeps the presence entries of dead
/// instances, sends `presence_left` for the leaves due, and checks the
/// absences due, pausing a session whose active participant has been
/// gone for its `auto_pause_on_disconnect_ms` (through the service's
/// compare-and-set, so two instances checking one absence commit once).
/// Any instance runs it; the claims' leases share the work.
pub async fn presence_worker(service: Service, mut shutdown: watch::Receiver<bool>) {
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut full = false;
        let mut errors = Vec::new();
        match service
            .claim_presence_leaves(PRESENCE_BATCH, PRESENCE_CLAIM_LEASE_MS)
            .await
        {
            Ok(leaves) => {
                full |= leaves.len() == PRESENCE_BATCH;
                for leave in leaves {
                    if let Err(e) = service.fire_presence_leave(leave).await {
                        errors.push(e);
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
                            tracing::info!(%session_id, at_ms, "session paused: its active participant disconnected");
                        }
                        Ok(_) => {}
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
        let pause = if full && !failing {
            Duration::ZERO
        } else {
            PRESENCE_POLL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
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
mod tests {
    use adapter_memory::{MemoryBus, MemoryStore, SystemClock};
    use kairos_domain::{Actor, Command, SessionConfig, SessionId, Status};

    use super::*;

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

        let registry = Registry::new();
        let store_errors = IntCounter::new("kairos_store_errors_total", "Primary store errors")
            .expect("a valid metric");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("registered once");
        let metrics = WorkerMetrics::register(&registry, store_errors).expect("registered once");
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(timeout_worker(service.clone(), metrics.clone(), stopped));
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
}
