//! `PgDeliveryLog` against a real PostgreSQL: the migration creates
//! `webhook_deliveries`, records come back newest first and per endpoint,
//! a retried write is stored once, `limit` bounds the answer. (How a
//! `WebhookStore` hands its log to it, `WithDeliveryLog`, is tested in
//! kairos-domain.) Tests share one database, so each works on fresh random
//! endpoint ids.
#![allow(clippy::unwrap_used)]

mod common;

use audit_diesel::PgDeliveryLog;
use common::audit;
use kairos_domain::DeliveryLog;
use kairos_domain::webhook::{DeliveryRecord, WebhookId};
use uuid::Uuid;

fn record(n: u32, sent_at_ms: i64) -> DeliveryRecord {
    DeliveryRecord {
        event_id: Uuid::from_u128(u128::from(n)),
        attempt: n % 8 + 1,
        status_code: if n.is_multiple_of(3) {
            None
        } else {
            Some(200 + n as u16)
        },
        error: if n.is_multiple_of(3) {
            Some("timed out after 10 s".into())
        } else {
            None
        },
        sent_at_ms,
        latency_ms: i64::from(n),
    }
}

fn endpoint_id() -> WebhookId {
    WebhookId::from_uuid(Uuid::new_v4())
}

#[tokio::test]
async fn records_come_back_newest_first_per_endpoint_and_once() {
    let log = PgDeliveryLog::new(audit().await);
    let (a, b) = (endpoint_id(), endpoint_id());
    assert_eq!(log.list(a, 10).await, Ok(vec![]));

    // Written out of order: the log orders by send instant.
    for n in [3u32, 1, 4, 2, 5] {
        log.record(a, &record(n, 1_760_970_600_000 + i64::from(n) * 1_000))
            .await
            .unwrap();
    }
    log.record(b, &record(9, 1_760_970_600_000)).await.unwrap();
    // A retried write (its acknowledgement was lost) is stored once.
    log.record(a, &record(5, 1_760_970_605_000)).await.unwrap();

    let newest: Vec<DeliveryRecord> = [5u32, 4, 3]
        .into_iter()
        .map(|n| record(n, 1_760_970_600_000 + i64::from(n) * 1_000))
        .collect();
    assert_eq!(log.list(a, 3).await, Ok(newest));
    assert_eq!(log.list(a, 100).await.map(|l| l.len()), Ok(5));
    assert_eq!(log.list(a, 0).await, Ok(vec![]));
    assert_eq!(
        log.list(b, 100).await,
        Ok(vec![record(9, 1_760_970_600_000)])
    );
}
