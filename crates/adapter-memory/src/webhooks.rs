//! [`MemoryWebhookStore`]: webhook endpoints, the delivery queue and the
//! delivery logs of one process (the embedded default), held to the same
//! port text as the Redis store: idempotent enqueue, claims that are leases
//! (a job a claimer never finished is due again after its lease), logs
//! bounded to the newest [`DELIVERY_LOG_LEN`] records per endpoint.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use kairos_domain::webhook::{Delivery, DeliveryRecord, Endpoint, WebhookId};
use kairos_domain::{Event, StoreError, WebhookStore};
use uuid::Uuid;

use crate::store::MemoryOutbox;

/// How many records each endpoint's delivery log keeps (contract section 9).
pub const DELIVERY_LOG_LEN: usize = 1_000;

type JobKey = (WebhookId, Uuid);

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<WebhookId, Endpoint>,
    jobs: HashMap<JobKey, Job>,
    /// (visible at, job): due time, or a claim's lease end. The claim index.
    visible: BTreeSet<(i64, WebhookId, Uuid)>,
    /// (first enqueued, job): the oldest undelivered, for `queue_stats`.
    ages: BTreeSet<(i64, WebhookId, Uuid)>,
    logs: HashMap<WebhookId, VecDeque<DeliveryRecord>>,
}

#[derive(Debug)]
struct Job {
    delivery: Delivery,
    visible_at: i64,
}

impl Inner {
    fn live(&self, id: WebhookId) -> bool {
        self.endpoints.get(&id).is_some_and(|e| !e.disabled)
    }

    fn remove_job(&mut self, key: JobKey) {
        if let Some(job) = self.jobs.remove(&key) {
            self.visible.remove(&(job.visible_at, key.0, key.1));
            self.ages
                .remove(&(job.delivery.first_enqueued_at_ms, key.0, key.1));
        }
    }

    fn drop_jobs_of(&mut self, id: WebhookId) {
        let keys: Vec<JobKey> = self.jobs.keys().filter(|k| k.0 == id).copied().collect();
        for key in keys {
            self.remove_job(key);
        }
    }

    fn set_visible(&mut self, key: JobKey, at: i64) {
        if let Some(job) = self.jobs.get_mut(&key) {
            self.visible.remove(&(job.visible_at, key.0, key.1));
            job.visible_at = at;
            self.visible.insert((at, key.0, key.1));
        }
    }
}

/// An in-process [`WebhookStore`]. Build it with [`MemoryWebhookStore::new`]
/// (then `push_event` goes nowhere) or, to feed a store's webhook outbox,
/// with [`MemoryWebhookStore::with_feed`].
#[derive(Debug, Default)]
pub struct MemoryWebhookStore {
    inner: Mutex<Inner>,
    feed: Option<MemoryOutbox>,
}

impl MemoryWebhookStore {
    /// A store whose `push_event` does nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose `push_event` appends to `feed` (a
    /// [`crate::MemoryStore::webhook_outbox`]).
    pub fn with_feed(feed: MemoryOutbox) -> Self {
        Self {
            inner: Mutex::default(),
            feed: Some(feed),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        // A poisoned lock means a panic mid-update: refuse rather than serve torn state.
        self.inner
            .lock()
            .map_err(|_| StoreError::Other("memory webhook store lock poisoned".into()))
    }
}

#[async_trait]
impl WebhookStore for MemoryWebhookStore {
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        self.lock()?.endpoints.insert(e.webhook_id, e.clone());
        Ok(())
    }

    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        Ok(self.lock()?.endpoints.values().cloned().collect())
    }

    async fn get_endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError> {
        Ok(self.lock()?.endpoints.get(&id).cloned())
    }

    async fn delete_endpoint(&self, id: WebhookId) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let existed = inner.endpoints.remove(&id).is_some();
        inner.logs.remove(&id);
        inner.drop_jobs_of(id);
        Ok(existed)
    }

    async fn disable_endpoint(&self, id: WebhookId, reason: &str) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if let Some(e) = inner.endpoints.get_mut(&id) {
            e.disabled = true;
            e.disabled_reason = Some(reason.to_owned());
            inner.drop_jobs_of(id);
        }
        Ok(())
    }

    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        for d in deliveries {
            let key = (d.webhook_id, d.event_id);
            if !inner.live(d.webhook_id) || inner.jobs.contains_key(&key) {
                continue;
            }
            inner.visible.insert((d.due_at_ms, key.0, key.1));
            inner.ages.insert((d.first_enqueued_at_ms, key.0, key.1));
            inner.jobs.insert(
                key,
                Job {
                    delivery: d.clone(),
                    visible_at: d.due_at_ms,
                },
            );
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut inner = self.lock()?;
        let lease_until = now_ms.saturating_add(lease_ms.max(0));
        let due: Vec<JobKey> = inner
            .visible
            .iter()
            .take_while(|(at, _, _)| *at <= now_ms)
            .map(|&(_, w, e)| (w, e))
            .collect();
        let mut out = Vec::new();
        for key in due {
            if out.len() == limit {
                break;
            }
            if !inner.live(key.0) {
                inner.remove_job(key);
                continue;
            }
            inner.set_visible(key, lease_until);
            if let Some(job) = inner.jobs.get(&key) {
                out.push(job.delivery.clone());
            }
        }
        Ok(out)
    }

    async fn finish(&self, id: WebhookId, event_id: Uuid) -> Result<(), StoreError> {
        self.lock()?.remove_job((id, event_id));
        Ok(())
    }

    async fn reschedule(
        &self,
        id: WebhookId,
        event_id: Uuid,
        attempt: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let key = (id, event_id);
        if let Some(job) = inner.jobs.get_mut(&key) {
            job.delivery.attempt = attempt;
            job.delivery.due_at_ms = due_at_ms;
            inner.set_visible(key, due_at_ms);
        }
        Ok(())
    }

    async fn queue_stats(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        let inner = self.lock()?;
        let age = inner
            .ages
            .first()
            .map_or(0, |(first, _, _)| now_ms.saturating_sub(*first).max(0));
        Ok((inner.jobs.len() as u64, age))
    }

    async fn push_event(&self, event: &Event) -> Result<(), StoreError> {
        match &self.feed {
            Some(feed) => feed.push(event),
            None => Ok(()),
        }
    }

    async fn record_delivery(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let log = inner.logs.entry(id).or_default();
        log.push_front(rec.clone());
        log.truncate(DELIVERY_LOG_LEN);
        Ok(())
    }

    async fn deliveries(
        &self,
        id: WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(self
            .lock()?
            .logs
            .get(&id)
            .map(|log| log.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }
}
