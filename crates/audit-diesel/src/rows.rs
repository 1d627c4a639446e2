//! Conversions between domain [`Event`]s and table rows, and the per-session
//! summaries that keep `sync_sessions` up to date. Pure functions, so the
//! rules (how `at` is derived, which event sets which lifecycle column) are
//! tested without a database.

use std::collections::BTreeMap;

use diesel::pg::data_types::PgTimestamp;
use diesel::prelude::*;
use kairos_domain::{AuditError, Event, EventType, GroupId, ParticipantId, SessionId};
use uuid::Uuid;

use crate::schema::sync_events;

/// Unix milliseconds of PostgreSQL's timestamp epoch, 2000-01-01T00:00:00Z.
const PG_EPOCH_MS: i64 = 946_684_800_000;
/// 0001-01-01T00:00:00Z: `at` is clamped to years 1 to 9999, well inside
/// what PostgreSQL accepts, so no event can fail the batch on its timestamp.
const MIN_AT_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_AT_MS: i64 = 253_402_300_799_999;

/// The partition key of an event: its `at_ms` as a `timestamptz`, clamped to
/// years 1 to 9999. A pure function of `at_ms`, which is what keeps the
/// primary key `(event_id, at)` idempotent: a rewritten event gets the same
/// `at` and so the same key in the same partition.
pub(crate) fn at_of(at_ms: i64) -> PgTimestamp {
    // Inside the clamp, (ms - epoch) * 1000 stays far below i64::MAX.
    PgTimestamp((at_ms.clamp(MIN_AT_MS, MAX_AT_MS) - PG_EPOCH_MS) * 1000)
}

/// A batch in the order its rows are inserted: by (session, version), the
/// batch order kept inside a version. Two writers holding overlapping
/// batches then take row locks in the same order (no deadlock between
/// them), and the events of one version get `write_seq` in commit order
/// (the history's tie-breaker).
pub(crate) fn in_row_order(events: &[Event]) -> Vec<&Event> {
    let mut rows: Vec<&Event> = events.iter().collect();
    // Stable: events of one version keep their batch (commit) order.
    rows.sort_by_key(|e| (*e.session_id.as_uuid(), e.version));
    rows
}

/// Rows as one array per column, bound to [`INSERT_EVENTS`]: twelve
/// parameters for any number of rows, so the statement is parsed once per
/// connection instead of once per batch, and PostgreSQL binds twelve arrays
/// rather than twelve values per row.
#[derive(Debug, Default)]
pub(crate) struct EventColumns<'a> {
    pub(crate) event_id: Vec<Uuid>,
    pub(crate) session_id: Vec<Uuid>,
    pub(crate) version: Vec<i64>,
    pub(crate) event_type: Vec<&'static str>,
    pub(crate) participant_id: Vec<Option<&'a str>>,
    pub(crate) group_id: Vec<Option<&'a str>>,
    pub(crate) at_ms: Vec<i64>,
    pub(crate) at: Vec<PgTimestamp>,
    pub(crate) time_remaining_ms: Vec<Option<i64>>,
    pub(crate) time_elapsed_ms: Vec<Option<i64>>,
    pub(crate) action: Vec<Option<&'a str>>,
    pub(crate) metadata: Vec<serde_json::Value>,
}

impl EventColumns<'_> {
    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.event_id.len()
    }
}

/// A batch's rows ([`in_row_order`]) split into statements of at most
/// `per_statement` rows (at least one), each as columns. Borrows the
/// events' strings; only the metadata is copied.
pub(crate) fn event_columns(
    events: &[Event],
    per_statement: usize,
) -> Result<Vec<EventColumns<'_>>, AuditError> {
    let per_statement = per_statement.max(1);
    let mut out: Vec<EventColumns<'_>> = Vec::new();
    for e in in_row_order(events) {
        if out.last().is_none_or(|c| c.len() >= per_statement) {
            out.push(EventColumns::default());
        }
        let Some(c) = out.last_mut() else {
            unreachable!("a statement was pushed above");
        };
        c.event_id.push(e.event_id);
        c.session_id.push(*e.session_id.as_uuid());
        c.version.push(version_to_sql(e.version)?);
        c.event_type.push(e.event_type.as_str());
        c.participant_id
            .push(e.participant_id.as_ref().map(ParticipantId::as_str));
        c.group_id.push(e.group_id.as_ref().map(GroupId::as_str));
        c.at_ms.push(e.at_ms);
        c.at.push(at_of(e.at_ms));
        c.time_remaining_ms.push(e.time_remaining_ms);
        c.time_elapsed_ms.push(e.time_elapsed_ms);
        c.action.push(e.action.as_deref());
        c.metadata
            .push(serde_json::Value::Object(e.metadata.clone()));
    }
    Ok(out)
}

/// Inserts [`EventColumns`], idempotently (`ON CONFLICT DO NOTHING` on the
/// key `(event_id, at)`). `ORDER BY ord` hands the rows to the insert in
/// array order, so `write_seq` follows it.
pub(crate) const INSERT_EVENTS: &str = "\
INSERT INTO sync_events
    (event_id, session_id, version, event_type, participant_id, group_id,
     at_ms, at, time_remaining_ms, time_elapsed_ms, action, metadata)
SELECT event_id, session_id, version, event_type, participant_id, group_id,
       at_ms, at, time_remaining_ms, time_elapsed_ms, action, metadata
FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[], $4::text[], $5::text[], $6::text[],
            $7::int8[], $8::timestamptz[], $9::int8[], $10::int8[], $11::text[], $12::jsonb[])
     WITH ORDINALITY AS t(event_id, session_id, version, event_type, participant_id, group_id,
                          at_ms, at, time_remaining_ms, time_elapsed_ms, action, metadata, ord)
ORDER BY ord
ON CONFLICT DO NOTHING";

fn version_to_sql(version: u64) -> Result<i64, AuditError> {
    i64::try_from(version)
        .map_err(|_| AuditError::Other(format!("event version {version} exceeds bigint")))
}

/// One stored event as read back by the history query.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = sync_events, check_for_backend(diesel::pg::Pg))]
pub(crate) struct EventRow {
    event_id: Uuid,
    session_id: Uuid,
    version: i64,
    event_type: String,
    participant_id: Option<String>,
    group_id: Option<String>,
    at_ms: i64,
    time_remaining_ms: Option<i64>,
    time_elapsed_ms: Option<i64>,
    action: Option<String>,
    metadata: serde_json::Value,
}

impl EventRow {
    /// The domain event. A row this adapter did not write in a form it can
    /// read (edited by hand, a newer event type) is an error, not a guess.
    pub(crate) fn into_event(self) -> Result<Event, AuditError> {
        let bad = |what: &str| {
            AuditError::Other(format!(
                "stored event {} has an invalid {what}",
                self.event_id
            ))
        };
        let version = u64::try_from(self.version).map_err(|_| bad("version"))?;
        let event_type = EventType::parse(&self.event_type).ok_or_else(|| bad("event_type"))?;
        let participant_id = match &self.participant_id {
            Some(p) => Some(ParticipantId::parse(p).map_err(|_| bad("participant_id"))?),
            None => None,
        };
        let group_id = match &self.group_id {
            Some(g) => Some(GroupId::parse(g).map_err(|_| bad("group_id"))?),
            None => None,
        };
        let metadata = match self.metadata {
            serde_json::Value::Object(map) => map,
            _ => return Err(bad("metadata")),
        };
        Ok(Event {
            event_id: self.event_id,
            session_id: SessionId::from_uuid(self.session_id),
            version,
            event_type,
            participant_id,
            group_id,
            at_ms: self.at_ms,
            time_remaining_ms: self.time_remaining_ms,
            time_elapsed_ms: self.time_elapsed_ms,
            action: self.action,
            metadata,
        })
    }
}

/// What a batch says about one session's lifecycle.
#[derive(Debug, Default, Clone, PartialEq)]
struct Summary {
    sync_mode: Option<String>,
    created_ms: Option<i64>,
    started_ms: Option<i64>,
    /// (version, instant, final status) of the ending event.
    ended: Option<(u64, i64, &'static str)>,
    last_version: u64,
    updated_ms: i64,
}

/// The `sync_sessions` upsert's input, one array per column (bound to
/// `UNNEST`, so a batch touching 500 sessions is still 8 parameters), sorted
/// by session id so concurrent writers lock rows in the same order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SessionColumns {
    pub(crate) session_id: Vec<Uuid>,
    pub(crate) sync_mode: Vec<Option<String>>,
    pub(crate) created_at: Vec<Option<PgTimestamp>>,
    pub(crate) started_at: Vec<Option<PgTimestamp>>,
    pub(crate) completed_at: Vec<Option<PgTimestamp>>,
    pub(crate) final_status: Vec<Option<&'static str>>,
    pub(crate) last_version: Vec<i64>,
    pub(crate) updated_at: Vec<PgTimestamp>,
}

/// Folds a batch into one summary per session.
///
/// A session id can be reused after the session is deleted. If the batch
/// holds a `session_created`, events before the latest one belong to an
/// earlier life of the id and are left out here; the upsert
/// ([`UPSERT_SESSIONS`]) then starts the row over when it sees a newer
/// creation instant, and ignores batches entirely older than the stored one.
pub(crate) fn session_columns(events: &[Event]) -> Result<SessionColumns, AuditError> {
    let mut created_at: BTreeMap<Uuid, i64> = BTreeMap::new();
    for e in events {
        if e.event_type == EventType::SessionCreated {
            let latest = created_at.entry(*e.session_id.as_uuid()).or_insert(e.at_ms);
            *latest = (*latest).max(e.at_ms);
        }
    }
    let mut summaries: BTreeMap<Uuid, Summary> = BTreeMap::new();
    for e in events {
        let id = *e.session_id.as_uuid();
        if created_at.get(&id).is_some_and(|&c| e.at_ms < c) {
            continue;
        }
        let s = summaries.entry(id).or_insert_with(|| Summary {
            updated_ms: e.at_ms,
            ..Summary::default()
        });
        s.last_version = s.last_version.max(e.version);
        s.updated_ms = s.updated_ms.max(e.at_ms);
        let final_status = match e.event_type {
            EventType::SessionCreated => {
                s.created_ms = Some(e.at_ms);
                s.sync_mode = e
                    .metadata
                    .get("sync_mode")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned);
                None
            }
            EventType::SessionStarted => {
                s.started_ms = Some(s.started_ms.map_or(e.at_ms, |t| t.min(e.at_ms)));
                None
            }
            EventType::SessionCompleted => Some("completed"),
            EventType::SessionCancelled => Some("cancelled"),
            EventType::SessionExpired => Some("expired"),
            _ => None,
        };
        if let Some(status) = final_status
            && s.ended.is_none_or(|(v, _, _)| e.version > v)
        {
            s.ended = Some((e.version, e.at_ms, status));
        }
    }
    let mut cols = SessionColumns::default();
    for (id, s) in summaries {
        cols.session_id.push(id);
        cols.sync_mode.push(s.sync_mode);
        cols.created_at.push(s.created_ms.map(at_of));
        cols.started_at.push(s.started_ms.map(at_of));
        cols.completed_at.push(s.ended.map(|(_, at, _)| at_of(at)));
        cols.final_status.push(s.ended.map(|(_, _, status)| status));
        cols.last_version.push(version_to_sql(s.last_version)?);
        cols.updated_at.push(at_of(s.updated_ms));
    }
    Ok(cols)
}

/// Upserts the summaries of [`session_columns`] into `sync_sessions`.
///
/// Every column merges so that the result does not depend on the order in
/// which batches arrive (the outbox may redeliver an older batch after a
/// newer one): first values stick (`COALESCE`), counters only grow
/// (`GREATEST`). Two exceptions handle a reused session id: a batch with a
/// newer `created_at` than the row's (`renew`) replaces the row, and a batch
/// whose latest event predates the row's `created_at` (`stale`, a straggler
/// of the earlier life) changes nothing.
pub(crate) const UPSERT_SESSIONS: &str = "\
INSERT INTO sync_sessions AS s
    (session_id, sync_mode, created_at, started_at, completed_at, final_status, last_version, updated_at)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                     $5::timestamptz[], $6::text[], $7::int8[], $8::timestamptz[])
ON CONFLICT (session_id) DO UPDATE SET
    sync_mode = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.sync_mode
                     ELSE COALESCE(s.sync_mode, EXCLUDED.sync_mode) END,
    created_at = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.created_at
                      ELSE COALESCE(s.created_at, EXCLUDED.created_at) END,
    started_at = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.started_at
                      WHEN EXCLUDED.updated_at < s.created_at THEN s.started_at
                      ELSE COALESCE(s.started_at, EXCLUDED.started_at) END,
    completed_at = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.completed_at
                        WHEN EXCLUDED.updated_at < s.created_at THEN s.completed_at
                        ELSE COALESCE(s.completed_at, EXCLUDED.completed_at) END,
    final_status = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.final_status
                        WHEN EXCLUDED.updated_at < s.created_at THEN s.final_status
                        ELSE COALESCE(s.final_status, EXCLUDED.final_status) END,
    last_version = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.last_version
                        WHEN EXCLUDED.updated_at < s.created_at THEN s.last_version
                        ELSE GREATEST(s.last_version, EXCLUDED.last_version) END,
    updated_at = CASE WHEN EXCLUDED.created_at > s.created_at THEN EXCLUDED.updated_at
                      WHEN EXCLUDED.updated_at < s.created_at THEN s.updated_at
                      ELSE GREATEST(s.updated_at, EXCLUDED.updated_at) END";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn event(session: u128, version: u64, ty: EventType, at_ms: i64) -> Event {
        let session_id = SessionId::from_uuid(Uuid::from_u128(session));
        let mut metadata = Map::new();
        if ty == EventType::SessionCreated {
            metadata.insert("sync_mode".into(), json!("per_participant"));
        }
        Event {
            event_id: Event::make_id(session_id, 0, version, 0, at_ms),
            session_id,
            version,
            event_type: ty,
            participant_id: None,
            group_id: None,
            at_ms,
            time_remaining_ms: None,
            time_elapsed_ms: None,
            action: None,
            metadata,
        }
    }

    #[test]
    fn at_is_exact_milliseconds_since_the_pg_epoch_and_clamped() {
        assert_eq!(at_of(PG_EPOCH_MS).0, 0);
        assert_eq!(at_of(PG_EPOCH_MS + 1).0, 1_000);
        assert_eq!(at_of(0).0, -PG_EPOCH_MS * 1000);
        assert_eq!(at_of(i64::MAX).0, at_of(MAX_AT_MS).0);
        assert_eq!(at_of(i64::MIN).0, at_of(MIN_AT_MS).0);
    }

    #[test]
    fn rows_are_sorted_by_session_then_version_keeping_batch_order() {
        let events = vec![
            event(2, 1, EventType::SessionCreated, 10),
            event(1, 3, EventType::ParticipantExpired, 30),
            event(1, 3, EventType::SessionExpired, 30),
            event(1, 2, EventType::SessionStarted, 20),
        ];
        let rows = in_row_order(&events);
        let order: Vec<_> = rows
            .iter()
            .map(|e| {
                (
                    e.session_id.as_uuid().as_u128(),
                    e.version,
                    e.event_type.as_str(),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (1, 2, "session_started"),
                (1, 3, "participant_expired"),
                (1, 3, "session_expired"),
                (2, 1, "session_created"),
            ]
        );
    }

    #[test]
    fn columns_keep_the_row_order_and_split_into_statements() {
        let mut events: Vec<Event> = (0..5)
            .map(|i| {
                event(
                    9 - i,
                    1,
                    EventType::SessionCreated,
                    10 + i64::try_from(i).unwrap(),
                )
            })
            .collect();
        events[0].participant_id = Some(ParticipantId::parse("white").unwrap());
        events[0].time_remaining_ms = Some(42);
        let statements = event_columns(&events, 2).unwrap();
        assert_eq!(
            statements.iter().map(EventColumns::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        // Sessions 5..=9 in order, whatever the batch order was.
        let sessions: Vec<u128> = statements
            .iter()
            .flat_map(|c| c.session_id.iter().map(|u| u.as_u128()))
            .collect();
        assert_eq!(sessions, vec![5, 6, 7, 8, 9]);
        // Every column of a row is taken from the same event (session 9
        // was the first event).
        let last = &statements[2];
        assert_eq!(last.event_id, vec![events[0].event_id]);
        assert_eq!(last.participant_id, vec![Some("white")]);
        assert_eq!(last.time_remaining_ms, vec![Some(42)]);
        assert_eq!(last.at, vec![at_of(10)]);
        assert_eq!(last.metadata, vec![json!({"sync_mode": "per_participant"})]);
        assert_eq!(statements[0].participant_id, vec![None, None]);
        // One statement takes everything when it may; none for no events.
        assert_eq!(event_columns(&events, 5_000).unwrap().len(), 1);
        assert!(event_columns(&[], 5_000).unwrap().is_empty());
    }

    #[test]
    fn summaries_fold_the_lifecycle_per_session() {
        let events = vec![
            event(1, 1, EventType::SessionCreated, 10),
            event(1, 2, EventType::SessionStarted, 20),
            event(1, 3, EventType::CycleSwitched, 30),
            event(1, 4, EventType::SessionCancelled, 40),
            event(2, 7, EventType::CycleSwitched, 70),
        ];
        let cols = session_columns(&events).unwrap();
        assert_eq!(
            cols.session_id,
            vec![Uuid::from_u128(1), Uuid::from_u128(2)]
        );
        assert_eq!(
            cols.sync_mode,
            vec![Some("per_participant".to_owned()), None]
        );
        assert_eq!(cols.created_at, vec![Some(at_of(10)), None]);
        assert_eq!(cols.started_at, vec![Some(at_of(20)), None]);
        assert_eq!(cols.completed_at, vec![Some(at_of(40)), None]);
        assert_eq!(cols.final_status, vec![Some("cancelled"), None]);
        assert_eq!(cols.last_version, vec![4, 7]);
        assert_eq!(cols.updated_at, vec![at_of(40), at_of(70)]);
    }

    #[test]
    fn a_reused_id_keeps_only_the_latest_life_of_the_batch() {
        let events = vec![
            event(1, 1, EventType::SessionCreated, 10),
            event(1, 2, EventType::SessionCompleted, 20),
            event(1, 1, EventType::SessionCreated, 100),
        ];
        let cols = session_columns(&events).unwrap();
        assert_eq!(cols.created_at, vec![Some(at_of(100))]);
        assert_eq!(cols.final_status, vec![None]);
        assert_eq!(cols.last_version, vec![1]);
    }

    #[test]
    fn rows_read_back_into_the_same_event() {
        let mut e = event(1, 5, EventType::CycleTimeout, 1_760_970_615_000);
        e.participant_id = Some(ParticipantId::parse("white").unwrap());
        e.group_id = Some(GroupId::parse("red").unwrap());
        e.time_remaining_ms = Some(0);
        e.time_elapsed_ms = Some(30_000);
        e.action = Some("fold".into());
        e.metadata.insert("k".into(), json!(1));
        let row = EventRow {
            event_id: e.event_id,
            session_id: *e.session_id.as_uuid(),
            version: 5,
            event_type: "cycle_timeout".into(),
            participant_id: Some("white".into()),
            group_id: Some("red".into()),
            at_ms: e.at_ms,
            time_remaining_ms: Some(0),
            time_elapsed_ms: Some(30_000),
            action: Some("fold".into()),
            metadata: json!({"k": 1}),
        };
        assert_eq!(row.into_event().unwrap(), e);
    }
}
