//! [`MemoryAudit`]: the audit trail of the embedded default, kept in memory
//! so `GET /v1/sessions/{id}/events` works with nothing installed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use kairos_domain::{AuditError, AuditSink, Event, SessionId};

/// Events kept per session; older ones are dropped first. The embedded
/// default is for one machine and for trying things out: operators who must
/// keep the whole trail configure PostgreSQL.
pub const MAX_EVENTS_PER_SESSION: usize = 10_000;

#[derive(Debug, Default)]
struct Inner {
    by_session: HashMap<SessionId, Vec<Event>>,
    /// The event ids already written, for idempotence.
    seen: HashSet<[u8; 16]>,
}

/// An in-memory [`AuditSink`], idempotent on `event_id`.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    inner: Mutex<Inner>,
}

impl MemoryAudit {
    /// An empty trail.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn write(&self, events: &[Event]) -> Result<(), AuditError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| AuditError::Other("memory audit lock poisoned".into()))?;
        for event in events {
            if !inner.seen.insert(*event.event_id.as_bytes()) {
                continue;
            }
            let list = inner.by_session.entry(event.session_id).or_default();
            list.push(event.clone());
            if list.len() > MAX_EVENTS_PER_SESSION {
                let dropped = list.remove(0);
                inner.seen.remove(dropped.event_id.as_bytes());
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        session_id: SessionId,
        limit: usize,
        before_ms: Option<i64>,
    ) -> Result<Vec<Event>, AuditError> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| AuditError::Other("memory audit lock poisoned".into()))?;
        let mut list: Vec<Event> = inner
            .by_session
            .get(&session_id)
            .map(|events| {
                // Insertion order is commit order; newest first means reversed.
                events
                    .iter()
                    .rev()
                    .filter(|e| before_ms.is_none_or(|b| e.at_ms < b))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // Stable: events of one version keep their (reversed) commit order.
        list.sort_by_key(|e| std::cmp::Reverse(e.version));
        list.truncate(limit);
        Ok(list)
    }
}
