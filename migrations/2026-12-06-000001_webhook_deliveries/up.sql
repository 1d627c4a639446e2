-- webhook_deliveries: the delivery log of the webhook endpoints (contract
-- section 9, `GET /v1/webhooks/{id}/deliveries`), one row per attempt, when
-- PostgreSQL is configured. Without it the log lives in Redis or memory,
-- bounded to the newest 1,000 records per endpoint; here it is kept whole,
-- for operators investigating a receiver's failures. Pruning is the
-- operator's (e.g. `DELETE FROM webhook_deliveries WHERE sent_at_ms < ...`).
--
-- Written by the delivery workers through crates/audit-diesel
-- (`PgDeliveryLog`), never on a switch's path.
--
-- * No foreign key to an endpoint table: endpoints live in Redis (or
--   memory), and the log outlives a deleted endpoint.
-- * The primary key is the record itself (endpoint, send instant, event,
--   attempt): a write retried after a lost acknowledgement is stored once
--   (`ON CONFLICT DO NOTHING`), and its order serves "newest first" for one
--   endpoint as a backward index scan.
-- * status_code is null when no response came (timeout, refused); error is
--   null on success.
CREATE TABLE webhook_deliveries (
    webhook_id  uuid    NOT NULL,
    sent_at_ms  bigint  NOT NULL,
    event_id    uuid    NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 0),
    status_code integer CHECK (status_code BETWEEN 0 AND 65535),
    error       text,
    latency_ms  bigint  NOT NULL,
    PRIMARY KEY (webhook_id, sent_at_ms, event_id, attempt)
);
