//! [`RedisWebhookStore`]: the [`WebhookStore`] on Redis, shared by every
//! instance. Endpoints, the delivery queue and the logs live under one hash
//! tag, `{wh}` ([`crate::keys`] has the table), so each operation is one
//! script on one Cluster slot; `push_event` writes to a session partition's
//! webhook stream instead.
//!
//! The queue is a sorted set by due time, like the deadline index: a claim
//! moves a job's score to its lease end, so a job whose claimer died is due
//! again after the lease (at-least-once across the loss of an instance),
//! and only `finish` (or the endpoint's removal) takes it out.

use std::sync::Arc;

use async_trait::async_trait;
use kairos_domain::webhook::{Delivery, DeliveryRecord, Endpoint, WebhookId};
use kairos_domain::{Event, StoreError, WebhookStore};
use uuid::Uuid;

use crate::codec::encode_event;
use crate::conn::RedisConnection;
use crate::keys::{Keys, WebhookKeys, partition_of};
use crate::outbox::Written;
use crate::scripts::Scripts;

/// How many records each endpoint's delivery log keeps (contract section 9).
pub const DELIVERY_LOG_LEN: usize = 1_000;

/// Deliveries per enqueue script call: bounds one call's arguments and run time.
const ENQUEUE_CHUNK: usize = 200;

/// Jobs dropped per script call when an endpoint is deleted or disabled.
const DROP_BATCH: usize = 500;

/// Script calls one `claim_due` makes at most: a call scans `limit` due
/// members, some of which may be dropped (their endpoint is gone).
const MAX_CLAIM_CALLS: usize = 4;

/// The Redis [`WebhookStore`]. Built by [`crate::RedisStore::webhook_store`];
/// cheap to share behind an `Arc`.
pub struct RedisWebhookStore {
    conn: RedisConnection,
    keys: WebhookKeys,
    partitions: Keys,
    scripts: Arc<Scripts>,
    /// Whether `push_event` writes to the webhook streams (the store's feed is on).
    feed: bool,
    /// The webhook streams' partitions this process wrote to.
    written: Arc<Written>,
}

impl std::fmt::Debug for RedisWebhookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisWebhookStore")
            .field("endpoints", &self.keys.endpoints)
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("{what}: {e}"))
}

fn decode_endpoint(bytes: &[u8]) -> Result<Endpoint, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| other("corrupt webhook endpoint", e))
}

/// A millisecond instant Redis gave back as text: an argument we stored
/// verbatim, or a score (Redis prints integral scores as integers; the
/// float reading is a fallback for exponent notation).
fn parse_ms(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<i64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().map(|f| f.round() as i64))
}

impl RedisWebhookStore {
    pub(crate) fn new(
        conn: RedisConnection,
        prefix: &str,
        partitions: Keys,
        scripts: Arc<Scripts>,
        feed: bool,
        written: Arc<Written>,
    ) -> Self {
        Self {
            conn,
            keys: WebhookKeys::new(prefix),
            partitions,
            scripts,
            feed,
            written,
        }
    }

    fn log_key(&self, id: WebhookId) -> String {
        format!("{}{id}", self.keys.log_prefix)
    }

    fn queue_keys(&self) -> [&str; 4] {
        [
            &self.keys.endpoints,
            &self.keys.off,
            &self.keys.due,
            &self.keys.age,
        ]
    }

    /// Drops every queued delivery of `id`, a batch per call.
    async fn drop_jobs(&self, id: WebhookId) -> Result<(), StoreError> {
        let jobs_key = format!("{}{id}", self.keys.jobs_prefix);
        let args = [
            self.keys.job_prefix.clone().into_bytes(),
            jobs_key.into_bytes(),
            id.to_string().into_bytes(),
            DROP_BATCH.to_string().into_bytes(),
        ];
        loop {
            let remaining: i64 = self
                .conn
                .eval(
                    "webhook drop jobs",
                    &self.scripts.wh_drop_jobs,
                    &[&self.keys.due, &self.keys.age],
                    &args,
                )
                .await?;
            if remaining <= 0 {
                return Ok(());
            }
        }
    }

    /// The deliveries of a `member, body, attempt, due, first, ...` reply.
    fn claimed(flat: Vec<Vec<u8>>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(flat.len() / 5);
        for job in flat.chunks_exact(5) {
            let member = String::from_utf8_lossy(&job[0]);
            let parsed = member
                .split_once(':')
                .and_then(|(w, e)| Some((w.parse::<WebhookId>().ok()?, Uuid::parse_str(e).ok()?)));
            let numbers = std::str::from_utf8(&job[2])
                .ok()
                .and_then(|a| a.parse::<u32>().ok())
                .zip(parse_ms(&job[3]))
                .zip(parse_ms(&job[4]));
            let body = String::from_utf8(job[1].clone());
            match (parsed, numbers, body) {
                (Some((webhook_id, event_id)), Some(((attempt, due_at_ms), first)), Ok(body)) => {
                    out.push(Delivery {
                        webhook_id,
                        event_id,
                        body,
                        attempt,
                        due_at_ms,
                        first_enqueued_at_ms: first,
                    });
                }
                // Only this crate writes the queue; the lease keeps a bad job
                // from flooding the log, and an operator can remove it.
                _ => tracing::warn!(%member, "ignoring a malformed webhook job"),
            }
        }
        out
    }
}

#[async_trait]
impl WebhookStore for RedisWebhookStore {
    #[tracing::instrument(skip(self, e), fields(webhook_id = %e.webhook_id))]
    async fn create_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        let json = serde_json::to_vec(e).map_err(|err| other("encoding webhook endpoint", err))?;
        let id = e.webhook_id.to_string();
        let key = &self.keys.endpoints;
        self.conn
            .run("webhook create", |mut conn| {
                let (id, json) = (&id, &json);
                async move {
                    redis::cmd("HSET")
                        .arg(key)
                        .arg(id)
                        .arg(json.as_slice())
                        .query_async::<i64>(&mut conn)
                        .await
                }
            })
            .await
            .map(|_| ())
    }

    #[tracing::instrument(skip(self))]
    async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let key = &self.keys.endpoints;
        let values: Vec<Vec<u8>> = self
            .conn
            .run("webhook list", |mut conn| async move {
                redis::cmd("HVALS").arg(key).query_async(&mut conn).await
            })
            .await?;
        values.iter().map(|v| decode_endpoint(v)).collect()
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id))]
    async fn get_endpoint(&self, id: WebhookId) -> Result<Option<Endpoint>, StoreError> {
        let key = &self.keys.endpoints;
        let field = id.to_string();
        let value: Option<Vec<u8>> = self
            .conn
            .run("webhook get", |mut conn| {
                let field = &field;
                async move {
                    redis::cmd("HGET")
                        .arg(key)
                        .arg(field)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        value.map(|v| decode_endpoint(&v)).transpose()
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id))]
    async fn delete_endpoint(&self, id: WebhookId) -> Result<bool, StoreError> {
        let existed: i64 = self
            .conn
            .eval(
                "webhook delete",
                &self.scripts.wh_delete,
                &[&self.keys.endpoints, &self.keys.off],
                &[id.to_string().into_bytes(), self.log_key(id).into_bytes()],
            )
            .await?;
        // No job can be queued for it any more; drop those that are.
        self.drop_jobs(id).await?;
        Ok(existed == 1)
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id))]
    async fn disable_endpoint(&self, id: WebhookId, reason: &str) -> Result<(), StoreError> {
        let Some(mut endpoint) = self.get_endpoint(id).await? else {
            return Ok(());
        };
        endpoint.disabled = true;
        endpoint.disabled_reason = Some(reason.to_owned());
        let json =
            serde_json::to_vec(&endpoint).map_err(|e| other("encoding webhook endpoint", e))?;
        // Endpoints never change but for this flag, so the record read above
        // is current; the script writes it only if the endpoint still exists.
        let _: i64 = self
            .conn
            .eval(
                "webhook disable",
                &self.scripts.wh_disable,
                &[&self.keys.endpoints, &self.keys.off],
                &[id.to_string().into_bytes(), json],
            )
            .await?;
        self.drop_jobs(id).await
    }

    #[tracing::instrument(skip(self, deliveries), fields(count = deliveries.len()))]
    async fn enqueue(&self, deliveries: &[Delivery]) -> Result<(), StoreError> {
        for chunk in deliveries.chunks(ENQUEUE_CHUNK) {
            let mut args = Vec::with_capacity(2 + 6 * chunk.len());
            args.push(self.keys.job_prefix.clone().into_bytes());
            args.push(self.keys.jobs_prefix.clone().into_bytes());
            for d in chunk {
                args.push(d.webhook_id.to_string().into_bytes());
                args.push(d.event_id.hyphenated().to_string().into_bytes());
                args.push(d.body.clone().into_bytes());
                args.push(d.attempt.to_string().into_bytes());
                args.push(d.due_at_ms.to_string().into_bytes());
                args.push(d.first_enqueued_at_ms.to_string().into_bytes());
            }
            let _: i64 = self
                .conn
                .eval(
                    "webhook enqueue",
                    &self.scripts.wh_enqueue,
                    &self.queue_keys(),
                    &args,
                )
                .await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms.max(0));
        let mut out = Vec::new();
        // A call that dropped jobs of removed endpoints may have left due
        // ones behind: call again, a bounded number of times.
        for _ in 0..MAX_CLAIM_CALLS {
            let want = limit.saturating_sub(out.len());
            if want == 0 {
                break;
            }
            let (scanned, flat): (usize, Vec<Vec<u8>>) = self
                .conn
                .eval(
                    "webhook claim",
                    &self.scripts.wh_claim,
                    &self.queue_keys(),
                    &[
                        now_ms.to_string().into_bytes(),
                        want.to_string().into_bytes(),
                        lease_until.to_string().into_bytes(),
                        self.keys.job_prefix.clone().into_bytes(),
                        self.keys.jobs_prefix.clone().into_bytes(),
                    ],
                )
                .await?;
            let claimed = flat.len() / 5;
            out.extend(Self::claimed(flat));
            if scanned < want || claimed == scanned {
                break;
            }
        }
        Ok(out)
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id, %event_id))]
    async fn finish(&self, id: WebhookId, event_id: Uuid) -> Result<(), StoreError> {
        let _: i64 = self
            .conn
            .eval(
                "webhook finish",
                &self.scripts.wh_finish,
                &[&self.keys.due, &self.keys.age],
                &[
                    self.keys.job_prefix.clone().into_bytes(),
                    self.keys.jobs_prefix.clone().into_bytes(),
                    id.to_string().into_bytes(),
                    event_id.hyphenated().to_string().into_bytes(),
                ],
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id, %event_id))]
    async fn reschedule(
        &self,
        id: WebhookId,
        event_id: Uuid,
        attempt: u32,
        due_at_ms: i64,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .conn
            .eval(
                "webhook reschedule",
                &self.scripts.wh_reschedule,
                &[&self.keys.due],
                &[
                    self.keys.job_prefix.clone().into_bytes(),
                    id.to_string().into_bytes(),
                    event_id.hyphenated().to_string().into_bytes(),
                    attempt.to_string().into_bytes(),
                    due_at_ms.to_string().into_bytes(),
                ],
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn queue_stats(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        let (count, oldest): (u64, Vec<u8>) = self
            .conn
            .eval(
                "webhook stats",
                &self.scripts.wh_stats,
                &[&self.keys.due, &self.keys.age],
                &[],
            )
            .await?;
        let age = parse_ms(&oldest).map_or(0, |first| now_ms.saturating_sub(first).max(0));
        Ok((count, age))
    }

    #[tracing::instrument(skip(self, event), fields(session_id = %event.session_id, event_type = event.event_type.as_str()))]
    async fn push_event(&self, event: &Event) -> Result<(), StoreError> {
        if !self.feed {
            return Ok(());
        }
        let p = partition_of(&event.session_id);
        let stream = &self.partitions.partition(p).hooks;
        let payload = encode_event(event)?;
        let pushed = self
            .conn
            .run("webhook push", |mut conn| {
                let payload = &payload;
                async move {
                    redis::cmd("XADD")
                        .arg(stream)
                        .arg("*")
                        .arg("e")
                        .arg(payload.as_slice())
                        .query_async::<String>(&mut conn)
                        .await
                }
            })
            .await;
        self.written.mark(p);
        pushed.map(|_| ())
    }

    #[tracing::instrument(skip(self, rec), fields(webhook_id = %id, event_id = %rec.event_id))]
    async fn record_delivery(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(rec).map_err(|e| other("encoding delivery record", e))?;
        let log = self.log_key(id);
        let _: i64 = self
            .conn
            .eval(
                "webhook record",
                &self.scripts.wh_record,
                &[&log],
                &[json, DELIVERY_LOG_LEN.to_string().into_bytes()],
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self), fields(webhook_id = %id))]
    async fn deliveries(
        &self,
        id: WebhookId,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let log = self.log_key(id);
        let last = limit.min(DELIVERY_LOG_LEN) - 1;
        let values: Vec<Vec<u8>> = self
            .conn
            .run("webhook deliveries", |mut conn| {
                let log = &log;
                async move {
                    redis::cmd("LRANGE")
                        .arg(log)
                        .arg(0)
                        .arg(last)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        values
            .iter()
            .map(|v| serde_json::from_slice(v).map_err(|e| other("corrupt delivery record", e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_read_back_as_integers() {
        assert_eq!(parse_ms(b"1760970600000"), Some(1_760_970_600_000));
        assert_eq!(parse_ms(b"1.7609706e+12"), Some(1_760_970_600_000));
        assert_eq!(parse_ms(b""), None);
    }

    #[test]
    fn malformed_jobs_are_skipped() {
        let good = vec![
            b"123e4567-e89b-12d3-a456-426614174000:00000000-0000-0000-0000-000000000001".to_vec(),
            b"{}".to_vec(),
            b"2".to_vec(),
            b"5000".to_vec(),
            b"1000".to_vec(),
        ];
        let mut bad = good.clone();
        bad[0] = b"nonsense".to_vec();
        let mut flat = bad;
        flat.extend(good);
        let claimed = RedisWebhookStore::claimed(flat);
        assert_eq!(
            claimed,
            vec![Delivery {
                webhook_id: "123e4567-e89b-12d3-a456-426614174000".parse().unwrap(),
                event_id: Uuid::from_u128(1),
                body: "{}".to_owned(),
                attempt: 2,
                due_at_ms: 5_000,
                first_enqueued_at_ms: 1_000,
            }]
        );
    }
}
