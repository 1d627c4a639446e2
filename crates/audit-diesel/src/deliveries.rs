//! [`PgDeliveryLog`]: the webhook delivery log (contract section 9) in the
//! `webhook_deliveries` table, on the audit trail's pool. The server puts it
//! behind the webhook store with [`kairos_domain::WithDeliveryLog`] when
//! PostgreSQL is configured; without PostgreSQL the store's own bounded log
//! serves.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use kairos_domain::webhook::{DeliveryRecord, WebhookId};
use kairos_domain::{AuditError, DeliveryLog, StoreError};
use uuid::Uuid;

use crate::audit::{OPERATION_TIMEOUT, PgAudit};
use crate::schema::webhook_deliveries;

/// The delivery log on PostgreSQL. Cheap to clone (it shares the audit pool).
#[derive(Debug, Clone)]
pub struct PgDeliveryLog {
    audit: PgAudit,
}

impl PgDeliveryLog {
    /// The log on `audit`'s pool (its migrations create the table).
    pub fn new(audit: PgAudit) -> Self {
        Self { audit }
    }
}

/// One row, as written and read back.
#[derive(Debug, Insertable, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
struct Row {
    webhook_id: Uuid,
    sent_at_ms: i64,
    event_id: Uuid,
    attempt: i32,
    status_code: Option<i32>,
    error: Option<String>,
    latency_ms: i64,
}

impl Row {
    fn new(id: WebhookId, rec: &DeliveryRecord) -> Result<Self, StoreError> {
        Ok(Self {
            webhook_id: *id.as_uuid(),
            sent_at_ms: rec.sent_at_ms,
            event_id: rec.event_id,
            attempt: i32::try_from(rec.attempt).map_err(|_| {
                StoreError::Other(format!("attempt {} exceeds integer", rec.attempt))
            })?,
            status_code: rec.status_code.map(i32::from),
            error: rec.error.clone(),
            latency_ms: rec.latency_ms,
        })
    }

    fn into_record(self) -> Result<DeliveryRecord, StoreError> {
        let bad = |what: &str| {
            StoreError::Other(format!(
                "stored delivery of event {} has an invalid {what}",
                self.event_id
            ))
        };
        Ok(DeliveryRecord {
            event_id: self.event_id,
            attempt: u32::try_from(self.attempt).map_err(|_| bad("attempt"))?,
            status_code: self
                .status_code
                .map(u16::try_from)
                .transpose()
                .map_err(|_| bad("status_code"))?,
            error: self.error,
            sent_at_ms: self.sent_at_ms,
            latency_ms: self.latency_ms,
        })
    }
}

/// The webhook port speaks [`StoreError`]; the pool speaks [`AuditError`].
fn to_store(e: AuditError) -> StoreError {
    match e {
        AuditError::Unavailable(m) => StoreError::Unavailable(m),
        AuditError::Other(m) => StoreError::Other(m),
    }
}

#[async_trait]
impl DeliveryLog for PgDeliveryLog {
    /// Idempotent: the row is its own primary key (`ON CONFLICT DO NOTHING`).
    #[tracing::instrument(skip(self, rec), fields(webhook_id = %id, event_id = %rec.event_id))]
    async fn record(&self, id: WebhookId, rec: &DeliveryRecord) -> Result<(), StoreError> {
        let row = Row::new(id, rec)?;
        let row = &row;
        self.audit
            .timed("delivery record", OPERATION_TIMEOUT, async |conn| {
                diesel::insert_into(webhook_deliveries::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await
            })
            .await
            .map(|_| ())
            .map_err(to_store)
    }

    /// Newest first by `sent_at_ms` (then event and attempt, descending).
    #[tracing::instrument(skip(self), fields(webhook_id = %id))]
    async fn list(&self, id: WebhookId, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        use webhook_deliveries::dsl;
        let query = dsl::webhook_deliveries
            .filter(dsl::webhook_id.eq(*id.as_uuid()))
            .order((
                dsl::sent_at_ms.desc(),
                dsl::event_id.desc(),
                dsl::attempt.desc(),
            ))
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select(Row::as_select());
        let rows = self
            .audit
            .timed("delivery list", OPERATION_TIMEOUT, async |conn| {
                query.load::<Row>(conn).await
            })
            .await
            .map_err(to_store)?;
        rows.into_iter().map(Row::into_record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_rows() {
        let id = WebhookId::from_uuid(Uuid::from_u128(1));
        let rec = DeliveryRecord {
            event_id: Uuid::from_u128(2),
            attempt: 3,
            status_code: Some(503),
            error: Some("HTTP 503".into()),
            sent_at_ms: 1_760_970_600_000,
            latency_ms: 12,
        };
        let row = Row::new(id, &rec).unwrap();
        assert_eq!(row.webhook_id, Uuid::from_u128(1));
        assert_eq!(row.into_record(), Ok(rec));
        let bad = Row {
            webhook_id: Uuid::nil(),
            sent_at_ms: 0,
            event_id: Uuid::nil(),
            attempt: -1,
            status_code: Some(70_000),
            error: None,
            latency_ms: 0,
        };
        assert!(bad.into_record().is_err());
    }
}
