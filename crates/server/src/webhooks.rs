//! The webhook workers (contract section 9, docs/webhooks.md): the fan-out
//! from the hooks outbox into the delivery queue, and the delivery loop
//! that sends what is due. Both run on every instance, off the request
//! path: a receiver that hangs holds one of `WEBHOOK_CONCURRENCY` slots for
//! at most 10 s, and never a switch.
//!
//! At least once, end to end: an outbox entry is acknowledged only after
//! its deliveries are durably queued (a crash in between re-enqueues, a
//! no-op per (endpoint, event)); a queued delivery leaves the queue only
//! after a 2xx, a 410, an exhausted schedule or its endpoint's deletion;
//! a claimed delivery is a lease, so the deliveries of a killed instance
//! are claimed again by another after [`LEASE_MS`].

use std::sync::Arc;
use std::time::Duration;

use kairos_domain::webhook::{
    AttemptOutcome, Delivery, DeliveryRecord, Endpoint, NextStep, RetrySchedule, WebhookId, body,
    next_step,
};
use kairos_domain::{DynSessionService as Service, Event, Outbox, PresenceObserver, WebhookStore};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use webhook_http::{Message, SEND_TIMEOUT, Sender};

use crate::workers::{DueSchedule, WorkerMetrics, wait_until_ms};

/// Events moved per batch from the hooks outbox into the queue.
const FAN_OUT_BATCH: usize = 500;
/// After a nudge (a commit of this instance), the fan-out waits this long
/// so that one read takes the events of several commits.
const FAN_OUT_GATHER: Duration = Duration::from_millis(20);
/// With no nudge, the fan-out looks anyway after this long (a read visits
/// every partition when the store's full sweep is due, for other
/// instances' leftovers; otherwise only partitions this instance wrote).
const FAN_OUT_IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the delivery worker claims due deliveries when nothing it
/// knows of falls due (this instance's queued deliveries and its own
/// retries wake it when due): other instances' deliveries and retries
/// (one that died, after its lease) are sent at most this late.
const POLL: Duration = Duration::from_secs(2);
/// While claiming fails, the first retry comes after this long (doubling
/// to 2 s).
const RETRY: Duration = Duration::from_millis(250);
/// The retries this instance scheduled are claimed at most this often:
/// many failing at once (an endpoint down under load) fall due one after
/// the other and are claimed in batches, not one claim each. A retry is
/// sent at most this late.
const RETRY_GATHER: Duration = Duration::from_millis(50);
/// A claimed delivery is hidden from other instances this long: one send
/// (at most [`SEND_TIMEOUT`]) and its bookkeeping fit in it. An instance
/// killed mid-send has its deliveries sent by another after it.
pub const LEASE_MS: i64 = 15_000;
/// How often the queue's depth and age are measured while it holds
/// something (and within this long after this instance queued deliveries).
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often they are measured while the queue is empty.
const STATS_IDLE_EVERY: Duration = Duration::from_secs(5);
/// On shutdown, sends in flight get this long to finish; the rest are
/// dropped and, their lease expired, sent again by another instance.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How an attempt ended, the `outcome` label of
/// `kairos_webhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// Failed; retried on the schedule.
    Failed,
    /// 410 Gone: the endpoint is disabled.
    Gone,
    /// Failed with the schedule over: the endpoint is disabled.
    Exhausted,
    /// The endpoint was deleted or disabled meanwhile: not sent.
    Dropped,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::Exhausted => "exhausted",
            Self::Dropped => "dropped",
        }
    }
}

/// What the fan-out worker reads, where it writes, and as whom.
#[allow(missing_debug_implementations)] // Holds trait objects without Debug.
pub struct FanOut {
    /// The hooks outbox (every committed event when webhooks are on).
    pub outbox: Arc<dyn Outbox>,
    /// Endpoints and the delivery queue.
    pub store: Arc<dyn WebhookStore>,
    /// For the clock.
    pub service: Service,
    /// Store error counts.
    pub metrics: WorkerMetrics,
    /// This instance's consumer name in the hooks outbox.
    pub consumer: String,
    /// Take over entries another consumer leased this long ago without acknowledging.
    pub reclaim_after_ms: i64,
    /// Notified after each commit of this instance (events wait in the feed).
    pub nudge: Arc<Notify>,
    /// Notified after deliveries were queued (the delivery worker's wake-up).
    pub queued: Arc<Notify>,
}

/// Moves committed events from the hooks outbox into the delivery queue
/// until `shutdown` turns true: one delivery per (endpoint that wants the
/// event's type, event), queued, then the entries acknowledged.
///
/// It does not poll: after a batch that did not fill, it waits for this
/// instance's next commit (`nudge`) and `FAN_OUT_GATHER` (20 ms) more, or at
/// most `FAN_OUT_IDLE_POLL` (1 s).
pub async fn fan_out_worker(worker: FanOut, mut shutdown: watch::Receiver<bool>) {
    let FanOut {
        outbox,
        store,
        service,
        metrics,
        consumer,
        reclaim_after_ms,
        nudge,
        queued,
    } = worker;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // `None`: drained; wait for a nudge.
        let mut pause = None;
        match outbox
            .read(&consumer, FAN_OUT_BATCH, reclaim_after_ms)
            .await
        {
            Ok(batch) if !batch.is_empty() => {
                // Listed after the read, for each batch (one round trip
                // next to the read, the enqueue and the ack, off the request
                // path): an endpoint gets every event committed after it was
                // created, never a stale list's subset.
                let endpoints = match store.list_endpoints().await {
                    Ok(list) => list,
                    Err(e) => {
                        metrics.store_errors.inc();
                        tracing::warn!(error = %e, "listing webhook endpoints failed; retrying");
                        sleep_or_stop(backoff, &mut shutdown).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                let now = service.now_ms();
                let deliveries = fan_out(&endpoints, batch.iter().map(|e| &e.event), now);
                let enqueued = if deliveries.is_empty() {
                    Ok(())
                } else {
                    store.enqueue(&deliveries).await
                };
                match enqueued {
                    Ok(()) => {
                        if !deliveries.is_empty() {
                            queued.notify_one();
                        }
                        let full = batch.len() >= FAN_OUT_BATCH;
                        let ids: Vec<String> = batch.into_iter().map(|e| e.id).collect();
                        if let Err(e) = outbox.ack(&ids).await {
                            tracing::warn!(error = %e, "acknowledging fanned-out events failed; they will be queued again (a no-op)");
                        }
                        backoff = Duration::from_millis(100);
                        // A full batch may have left more behind.
                        if full {
                            pause = Some(Duration::ZERO);
                        }
                    }
                    Err(e) => {
                        metrics.store_errors.inc();
                        tracing::warn!(error = %e, "queueing webhook deliveries failed; retrying");
                        pause = Some(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.store_errors.inc();
                tracing::warn!(error = %e, "reading the hooks outbox failed");
                pause = Some(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        crate::workers::pause_or_nudge(
            pause,
            &nudge,
            FAN_OUT_IDLE_POLL,
            FAN_OUT_GATHER,
            &mut shutdown,
        )
        .await;
    }
}

/// The deliveries of `events` to `endpoints`: one per (endpoint that wants
/// the type, event), due now, the body built once per event.
pub fn fan_out<'a>(
    endpoints: &[Endpoint],
    events: impl IntoIterator<Item = &'a kairos_domain::Event>,
    now_ms: i64,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    for event in events {
        let mut wanted = endpoints
            .iter()
            .filter(|e| e.wants(event.event_type))
            .peekable();
        if wanted.peek().is_none() {
            continue;
        }
        let body = body(event);
        for endpoint in wanted {
            out.push(Delivery {
                webhook_id: endpoint.webhook_id,
                event_id: event.event_id,
                body: body.clone(),
                attempt: 1,
                due_at_ms: now_ms,
                // The event's instant: the age of an undelivered event, and
                // the latency from commit to receipt, count from it.
                first_enqueued_at_ms: event.at_ms.min(now_ms),
            });
        }
    }
    out
}

/// Signs and sends one attempt: [`webhook_http::Sender`] in the server; the
/// delivery worker's tests use one that does no I/O, so that they can run on
/// tokio's paused clock.
#[async_trait::async_trait]
pub trait SendAttempt: Send + Sync {
    /// One attempt of `message`, classified.
    async fn send(&self, message: Message<'_>) -> AttemptOutcome;
}

#[async_trait::async_trait]
impl SendAttempt for Sender {
    async fn send(&self, message: Message<'_>) -> AttemptOutcome {
        Sender::send(self, message).await
    }
}

/// What the delivery worker needs.
#[allow(missing_debug_implementations)] // Holds trait objects without Debug.
pub struct Deliverer {
    /// Endpoints, the queue and the delivery log.
    pub store: Arc<dyn WebhookStore>,
    /// Signs and sends.
    pub sender: Arc<dyn SendAttempt>,
    /// For the clock.
    pub service: Service,
    /// `WEBHOOK_RETRY_SCHEDULE_MS`.
    pub schedule: RetrySchedule,
    /// `WEBHOOK_CONCURRENCY`: sends in flight at most.
    pub concurrency: usize,
    /// Outcomes, queue depth and age, store errors.
    pub metrics: WorkerMetrics,
    /// Notified when this instance queued deliveries: claim at once.
    pub queued: Arc<Notify>,
    /// The retries this worker's attempts scheduled: claim when one is due.
    pub retries: Arc<DueSchedule>,
}

/// Sends due deliveries until `shutdown` turns true: claims only as many
/// as it has free slots (so a claimed delivery is sent at once, well inside
/// its lease), sends each in a task of its own, and measures the queue
/// every second.
pub async fn delivery_worker(worker: Deliverer, mut shutdown: watch::Receiver<bool>) {
    let concurrency = worker.concurrency.max(1);
    let worker = Arc::new(worker);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut next_poll = Instant::now();
    let mut next_stats = Instant::now();
    let mut last_claim = Instant::now();
    let mut failing = false;
    let mut pause = RETRY;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = Instant::now();
        if now >= next_stats {
            let busy = worker.stats().await;
            next_stats = now + if busy { STATS_EVERY } else { STATS_IDLE_EVERY };
        }
        let room = concurrency.saturating_sub(running.len());
        if room > 0 && now >= next_poll {
            let now_ms = worker.service.now_ms();
            match worker.store.claim_due(now_ms, room, LEASE_MS).await {
                Ok(due) => {
                    if failing {
                        tracing::info!("claiming webhook deliveries works again");
                        failing = false;
                        pause = RETRY;
                    }
                    let full = due.len() == room;
                    for delivery in due {
                        running.spawn(Arc::clone(&worker).attempt(delivery));
                    }
                    // The retries due by `now_ms` were claimed (or are
                    // another instance's now); sleep until the next one.
                    let next_retry = worker.retries.settle(now_ms);
                    last_claim = now;
                    next_poll = if full {
                        Instant::now()
                    } else {
                        (Instant::now() + POLL)
                            .min(worker.instant_of(next_retry))
                            .max(last_claim + RETRY_GATHER)
                    };
                }
                Err(e) => {
                    worker.metrics.store_errors.inc();
                    if !failing {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying with backoff");
                    }
                    failing = true;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    next_poll = Instant::now() + pause;
                }
            }
            continue;
        }
        let wake = if room > 0 {
            next_poll.min(next_stats)
        } else {
            next_stats
        };
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a webhook attempt panicked");
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            () = worker.queued.notified(), if room > 0 => {
                next_poll = Instant::now();
                next_stats = next_stats.min(Instant::now() + STATS_EVERY);
            }
            () = worker.retries.earlier() => {
                next_poll = next_poll
                    .min(worker.instant_of(worker.retries.next()).max(last_claim + RETRY_GATHER));
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            in_flight = running.len(),
            "stopping with webhook sends in flight; another instance sends them after their lease"
        );
        running.abort_all();
        while running.join_next().await.is_some() {}
    }
}

impl Deliverer {
    /// Copies the queue's depth and age into the gauges; returns whether
    /// the queue holds anything (or could not be read).
    async fn stats(&self) -> bool {
        match self.store.queue_stats(self.service.now_ms()).await {
            Ok((depth, age_ms)) => {
                self.metrics
                    .webhook_queue_depth
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
                self.metrics
                    .webhook_oldest_undelivered_seconds
                    .set(age_ms.max(0) / 1000);
                depth > 0
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::debug!(error = %e, "reading the webhook queue's stats failed");
                true
            }
        }
    }

    /// The local instant of a service-clock instant (never before it: the
    /// runtime's timer rounds up), or far off for `None`.
    fn instant_of(&self, at_ms: Option<i64>) -> Instant {
        let now = Instant::now();
        at_ms.map_or(now + POLL, |at| {
            now + wait_until_ms(at, self.service.now_ms())
        })
    }

    /// One attempt of one claimed delivery, and what follows it. A store
    /// error leaves the delivery leased: it is attempted again after the
    /// lease (at least once).
    async fn attempt(self: Arc<Self>, delivery: Delivery) {
        let id = delivery.webhook_id;
        let event_id = delivery.event_id;
        let endpoint = match self.store.get_endpoint(id).await {
            Ok(Some(e)) if !e.disabled => e,
            Ok(_) => {
                // Deleted or disabled after the claim: nothing to send to.
                self.count(Outcome::Dropped);
                self.finish(id, event_id).await;
                return;
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::warn!(webhook_id = %id, error = %e, "reading a webhook endpoint failed; retried after the lease");
                return;
            }
        };
        let sent_at_ms = self.service.now_ms();
        let started = Instant::now();
        let webhook_id = event_id.to_string();
        let send = self.sender.send(Message {
            url: &endpoint.url,
            secret: &endpoint.secret,
            webhook_id: &webhook_id,
            body: &delivery.body,
            now_ms: sent_at_ms,
        });
        // The client's own timeout is SEND_TIMEOUT; this one only bounds a
        // resolver that ignores it.
        let outcome = tokio::time::timeout(SEND_TIMEOUT + Duration::from_secs(1), send)
            .await
            .unwrap_or_else(|_| AttemptOutcome::Failed {
                status: None,
                error: format!("timed out after {} s", SEND_TIMEOUT.as_secs()),
                retry_after_ms: None,
            });
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error) = match &outcome {
            AttemptOutcome::Delivered { status } => (Some(*status), None),
            AttemptOutcome::Gone => (Some(410), None),
            AttemptOutcome::Failed { status, error, .. } => (*status, Some(error.clone())),
        };
        let record = DeliveryRecord {
            event_id,
            attempt: delivery.attempt,
            status_code,
            error,
            sent_at_ms,
            latency_ms,
        };
        if let Err(e) = self.store.record_delivery(id, &record).await {
            self.metrics.store_errors.inc();
            tracing::warn!(webhook_id = %id, error = %e, "recording a webhook attempt failed");
        }
        let now_ms = self.service.now_ms();
        let step = next_step(&self.schedule, delivery.attempt, &outcome, now_ms, jitter());
        let result = match step {
            NextStep::Done => {
                self.count(Outcome::Delivered);
                self.store.finish(id, event_id).await
            }
            NextStep::RetryAt(due_at_ms) => {
                self.count(Outcome::Failed);
                tracing::debug!(webhook_id = %id, %event_id, attempt = delivery.attempt, error = ?record.error, status = ?record.status_code, "webhook attempt failed; retrying");
                let rescheduled = self
                    .store
                    .reschedule(id, event_id, delivery.attempt.saturating_add(1), due_at_ms)
                    .await;
                if rescheduled.is_ok() {
                    self.retries.add(due_at_ms);
                }
                rescheduled
            }
            NextStep::Disable(reason) => {
                self.count(if outcome == AttemptOutcome::Gone {
                    Outcome::Gone
                } else {
                    Outcome::Exhausted
                });
                tracing::warn!(webhook_id = %id, %reason, "webhook endpoint disabled");
                match self.store.disable_endpoint(id, &reason).await {
                    Ok(()) => self.store.finish(id, event_id).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            self.metrics.store_errors.inc();
            tracing::warn!(webhook_id = %id, %event_id, error = %e, "updating a webhook delivery failed; it is attempted again after its lease");
        }
    }

    async fn finish(&self, id: WebhookId, event_id: uuid::Uuid) {
        if let Err(e) = self.store.finish(id, event_id).await {
            self.metrics.store_errors.inc();
            tracing::warn!(webhook_id = %id, error = %e, "dropping a webhook delivery failed");
        }
    }

    fn count(&self, outcome: Outcome) {
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome.as_str()])
            .inc();
    }
}

/// Presence events into the webhook feed: they are in no outbox (no
/// version), so the service hands each one here once it is published, and
/// this pushes it to the store's webhook stream for the fan-out worker, off
/// the caller's path (a failed push is logged: presence events are best
/// effort, like their `EVENT` messages).
#[derive(Clone)]
pub struct PresenceFeed {
    store: Arc<dyn WebhookStore>,
    /// The fan-out worker's wake-up.
    nudge: Arc<Notify>,
}

impl PresenceFeed {
    /// A feed into `store`'s webhook stream; `nudge` wakes the fan-out
    /// worker after each push.
    pub fn new(store: Arc<dyn WebhookStore>, nudge: Arc<Notify>) -> Self {
        Self { store, nudge }
    }
}

impl std::fmt::Debug for PresenceFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceFeed").finish_non_exhaustive()
    }
}

impl PresenceObserver for PresenceFeed {
    fn observe(&self, event: &Event) {
        let (store, event, nudge) = (self.store.clone(), event.clone(), self.nudge.clone());
        tokio::spawn(async move {
            match store.push_event(&event).await {
                Ok(()) => nudge.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, event_id = %event.event_id, "cannot feed a presence event to the webhooks");
                }
            }
        });
    }
}

/// The URL check `/v1/webhooks` runs on a new endpoint: the SSRF guard of
/// `webhook-http` under `policy`.
pub fn url_check(policy: webhook_http::UrlPolicy) -> http_actix::UrlCheckFn {
    Arc::new(move |url: String| {
        Box::pin(async move {
            webhook_http::check_url(&url, policy)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    })
}

/// Everything the two webhook workers of one instance need.
#[allow(missing_debug_implementations)] // Holds trait objects without Debug.
pub struct Workers {
    /// Endpoints, queue and log.
    pub store: Arc<dyn WebhookStore>,
    /// The hooks outbox.
    pub outbox: Arc<dyn Outbox>,
    /// The sender.
    pub sender: Sender,
    /// For the clock.
    pub service: Service,
    /// Metrics.
    pub metrics: WorkerMetrics,
    /// `WEBHOOK_*`.
    pub settings: crate::config::WebhookSettings,
    /// Hooks outbox entries another instance read and never acknowledged
    /// are taken over after this (`AUDIT_RECLAIM_MS`, as for the audit outbox).
    pub reclaim_after_ms: i64,
    /// Notified after each commit of this instance and each presence event
    /// fed (the fan-out worker's wake-up).
    pub nudge: Arc<Notify>,
}

/// Starts the fan-out and the delivery worker in `set`, on the runtime of
/// `on` (the background one); they return once `stop` turns true.
pub fn spawn_workers(
    set: &mut JoinSet<()>,
    w: Workers,
    stop: &watch::Receiver<bool>,
    on: &tokio::runtime::Handle,
) {
    let queued = Arc::new(Notify::new());
    set.spawn_on(
        fan_out_worker(
            FanOut {
                outbox: w.outbox,
                store: w.store.clone(),
                service: w.service.clone(),
                metrics: w.metrics.clone(),
                consumer: format!("kairos-{}", uuid::Uuid::new_v4().simple()),
                reclaim_after_ms: w.reclaim_after_ms,
                nudge: w.nudge,
                queued: queued.clone(),
            },
            stop.clone(),
        ),
        on,
    );
    set.spawn_on(
        delivery_worker(
            Deliverer {
                store: w.store,
                sender: Arc::new(w.sender),
                service: w.service,
                schedule: w.settings.retry_schedule,
                concurrency: w.settings.concurrency,
                metrics: w.metrics,
                queued,
                retries: Arc::new(DueSchedule::default()),
            },
            stop.clone(),
        ),
        on,
    );
}

/// A uniform draw in [-1, 1] for the retry jitter, from the random bits of
/// a v4 UUID (no other source of randomness in the binary).
fn jitter() -> f64 {
    let (bits, _) = uuid::Uuid::new_v4().as_u64_pair();
    // 53 random bits: every f64 in [0, 1) at that precision.
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

async fn sleep_or_stop(pause: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kairos_domain::{EventType, SessionId};

    use super::*;

    /// Fails its first attempt with a `Retry-After` and accepts the
    /// others; records when, on tokio's clock, each attempt was made.
    #[derive(Default)]
    struct Scripted {
        retry_after_ms: i64,
        attempts: std::sync::Mutex<Vec<Instant>>,
    }

    #[async_trait::async_trait]
    impl SendAttempt for Scripted {
        async fn send(&self, _message: Message<'_>) -> AttemptOutcome {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(Instant::now());
            if attempts.len() == 1 {
                AttemptOutcome::Failed {
                    status: Some(503),
                    error: "503 Service Unavailable".to_owned(),
                    retry_after_ms: Some(self.retry_after_ms),
                }
            } else {
                AttemptOutcome::Delivered { status: 200 }
            }
        }
    }

    /// A retry is attempted when it falls due, not at the worker's next
    /// poll: the attempt that failed scheduled it on the worker's own
    /// `DueSchedule`. The `Retry-After` of 7 s (the floor of the delay,
    /// above the 1 s step and its jitter) is off the 2 s poll grid, where
    /// it would be sent at 8 s. Tokio's time is paused (it jumps to the
    /// next timer), so the instants are exact, not measured.
    #[tokio::test(start_paused = true)]
    async fn a_retry_is_sent_when_it_falls_due_not_at_the_next_poll() {
        use adapter_memory::{MemoryBus, MemoryStore, MemoryWebhookStore};

        const RETRY_AFTER_MS: i64 = 7_000;
        let store = Arc::new(MemoryWebhookStore::new());
        let service = Service::new(
            Arc::new(MemoryStore::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            Arc::new(crate::workers::tests::TokioClock(Instant::now())),
        );
        let hook = endpoint(None, false);
        store.create_endpoint(&hook).await.unwrap();
        let now_ms = service.now_ms();
        let event_id = uuid::Uuid::new_v4();
        store
            .enqueue(&[Delivery {
                webhook_id: hook.webhook_id,
                event_id,
                body: "{}".to_owned(),
                attempt: 1,
                due_at_ms: now_ms,
                first_enqueued_at_ms: now_ms,
            }])
            .await
            .unwrap();
        let sender = Arc::new(Scripted {
            retry_after_ms: RETRY_AFTER_MS,
            ..Scripted::default()
        });
        let metrics = crate::workers::tests::test_metrics();
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(delivery_worker(
            Deliverer {
                store: store.clone(),
                sender: sender.clone(),
                service,
                schedule: RetrySchedule::new(vec![1_000]).unwrap(),
                concurrency: 4,
                metrics,
                queued: Arc::new(Notify::new()),
                retries: Arc::new(DueSchedule::default()),
            },
            stopped,
        ));

        tokio::time::sleep(Duration::from_secs(20)).await;
        let attempts = sender.attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 2, "one failure, one retry, then done");
        let waited = attempts[1] - attempts[0];
        assert!(
            waited >= Duration::from_millis(7_000),
            "not before it is due: {waited:?}"
        );
        assert!(
            waited <= Duration::from_millis(7_002),
            "sent when due, not at the next poll: {waited:?}"
        );
        let log = store.deliveries(hook.webhook_id, 10).await.unwrap();
        assert_eq!(log.len(), 2, "{log:?}");

        stop.send(true).unwrap();
        worker.await.unwrap();
    }

    fn endpoint(types: Option<Vec<EventType>>, disabled: bool) -> Endpoint {
        Endpoint {
            webhook_id: WebhookId::from_uuid(uuid::Uuid::new_v4()),
            url: "https://example.com/h".to_owned(),
            event_types: types,
            description: None,
            secret: kairos_domain::webhook::new_secret([7; 32]),
            created_at_ms: 0,
            disabled,
            disabled_reason: None,
        }
    }

    fn event(t: EventType, at_ms: i64) -> kairos_domain::Event {
        kairos_domain::Event {
            event_id: uuid::Uuid::new_v4(),
            session_id: SessionId::from_uuid(uuid::Uuid::new_v4()),
            version: 2,
            event_type: t,
            participant_id: None,
            group_id: None,
            at_ms,
            time_remaining_ms: None,
            time_elapsed_ms: None,
            action: None,
            metadata: serde_json::Map::new(),
        }
    }

    #[test]
    fn each_event_goes_to_the_endpoints_that_want_its_type() {
        let all = endpoint(None, false);
        let expired_only = endpoint(Some(vec![EventType::SessionExpired]), false);
        let disabled = endpoint(None, true);
        let events = [
            event(EventType::SessionStarted, 900),
            event(EventType::SessionExpired, 950),
        ];
        let out = fan_out(
            &[all.clone(), expired_only.clone(), disabled],
            events.iter(),
            1_000,
        );
        let pairs: Vec<(WebhookId, uuid::Uuid)> =
            out.iter().map(|d| (d.webhook_id, d.event_id)).collect();
        assert_eq!(
            pairs,
            [
                (all.webhook_id, events[0].event_id),
                (all.webhook_id, events[1].event_id),
                (expired_only.webhook_id, events[1].event_id),
            ]
        );
        for d in &out {
            assert_eq!(d.attempt, 1);
            assert_eq!(d.due_at_ms, 1_000);
        }
        assert_eq!(out[0].first_enqueued_at_ms, 900);
        assert_eq!(out[1].body, out[2].body);
        let body: serde_json::Value = serde_json::from_str(&out[1].body).unwrap();
        assert_eq!(body["type"], "session_expired");
        assert_eq!(body["data"]["event_id"], events[1].event_id.to_string());
        assert!(fan_out(&[], events.iter(), 1_000).is_empty());
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..10_000 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j), "{j}");
        }
    }
}
