//! [`MemoryPresence`]: a `PresenceRegistry` in process, for the embedded
//! default (one instance) and tests. Entries are leased as on Redis, so the
//! same conformance tests hold for both; with one instance a lease lapses
//! only when renewals stopped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use kairos_domain::presence::summarize;
use kairos_domain::{
    Absence, ParticipantId, PendingLeave, PresenceConnection, PresenceRegistry, PresenceSnapshot,
    SessionId, StoreError,
};

/// A connection and when its lease ends.
#[derive(Debug, Clone)]
struct Entry {
    connection: PresenceConnection,
    lease_end_ms: i64,
}

/// One session's connections, by connection id.
type Connections = HashMap<String, Entry>;

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, Connections>,
    /// Pending leaves by (session, sub), with their score: the due instant,
    /// or a claim's lease end.
    leaves: HashMap<(SessionId, String), (PendingLeave, i64)>,
    /// Absences by (session, participant), with their next check (or a
    /// claim's lease end).
    absences: HashMap<(SessionId, ParticipantId), (Absence, i64)>,
}

impl Inner {
    /// Removes a connection as of `at`: a pending leave when it was its
    /// user's last, an absence when it was its participant's last.
    /// Returns whether it was the user's last (false when unknown).
    fn depart(&mut self, session_id: SessionId, connection_id: &str, at: i64, delay: i64) -> bool {
        let Some(conns) = self.sessions.get_mut(&session_id) else {
            return false;
        };
        let Some(Entry { connection: c, .. }) = conns.remove(connection_id) else {
            return false;
        };
        let user_left = !conns.values().any(|e| e.connection.sub == c.sub);
        let participant_left = c.participant_id.as_ref().is_some_and(|p| {
            !conns
                .values()
                .any(|e| e.connection.participant_id.as_ref() == Some(p))
        });
        if conns.is_empty() {
            self.sessions.remove(&session_id);
        }
        if let (true, Some(p)) = (participant_left, &c.participant_id) {
            let absence = Absence {
                session_id,
                participant_id: p.clone(),
                absent_since_ms: at,
            };
            self.absences.insert((session_id, p.clone()), (absence, at));
        }
        if user_left {
            let due_ms = at.saturating_add(delay);
            let leave = PendingLeave {
                session_id,
                sub: c.sub.clone(),
                participant_id: c.participant_id,
                left_at_ms: at,
                due_ms,
            };
            self.leaves.insert((session_id, c.sub), (leave, due_ms));
        }
        user_left
    }
}

/// Presence entries of one process, behind one lock.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    inner: Mutex<Inner>,
}

impl MemoryPresence {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing panics while it is held (map operations only), so a
    /// poisoned lock still guards consistent maps.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `limit` smallest-scored keys with a score at or before `now`.
fn due<K: Clone, V>(map: &HashMap<K, (V, i64)>, now: i64, limit: usize) -> Vec<K> {
    let mut due: Vec<(i64, &K)> = map
        .iter()
        .filter(|(_, (_, score))| *score <= now)
        .map(|(k, (_, score))| (*score, k))
        .collect();
    due.sort_by_key(|(score, _)| *score);
    due.into_iter()
        .take(limit)
        .map(|(_, k)| k.clone())
        .collect()
}

#[async_trait]
impl PresenceRegistry for MemoryPresence {
    async fn join(
        &self,
        connection: &PresenceConnection,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let id = connection.session_id;
        let conns = inner.sessions.entry(id).or_default();
        if let Some(e) = conns.get_mut(&connection.connection_id) {
            // The same connection again (a retried call): announced the first time.
            e.lease_end_ms = now_ms.saturating_add(lease_ms.max(1));
            return Ok(false);
        }
        let others = conns
            .iter()
            .any(|(cid, e)| *cid != connection.connection_id && e.connection.sub == connection.sub);
        conns.insert(
            connection.connection_id.clone(),
            Entry {
                connection: connection.clone(),
                lease_end_ms: now_ms.saturating_add(lease_ms.max(1)),
            },
        );
        let pending = inner.leaves.remove(&(id, connection.sub.clone())).is_some();
        if let Some(p) = &connection.participant_id {
            inner.absences.remove(&(id, p.clone()));
        }
        Ok(!others && !pending)
    }

    async fn leave(
        &self,
        session_id: SessionId,
        connection_id: &str,
        now_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .depart(session_id, connection_id, now_ms, leave_delay_ms))
    }

    async fn renew(
        &self,
        connections: &[(SessionId, String)],
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let until = now_ms.saturating_add(lease_ms.max(1));
        for (session_id, connection_id) in connections {
            if let Some(e) = inner
                .sessions
                .get_mut(session_id)
                .and_then(|c| c.get_mut(connection_id))
                && e.lease_end_ms > now_ms
            {
                e.lease_end_ms = until;
            }
        }
        Ok(())
    }

    async fn snapshot(
        &self,
        session_id: SessionId,
        now_ms: i64,
    ) -> Result<PresenceSnapshot, StoreError> {
        let inner = self.lock();
        let live = inner
            .sessions
            .get(&session_id)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|e| e.lease_end_ms > now_ms)
            .map(|e| e.connection.clone());
        Ok(summarize(live))
    }

    async fn claim_due_leaves(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
        leave_delay_ms: i64,
    ) -> Result<Vec<PendingLeave>, StoreError> {
        let mut inner = self.lock();
        let mut lapsed: Vec<(i64, SessionId, String)> = inner
            .sessions
            .iter()
            .flat_map(|(id, conns)| {
                conns
                    .iter()
                    .filter(|(_, e)| e.lease_end_ms <= now_ms)
                    .map(|(cid, e)| (e.lease_end_ms, *id, cid.clone()))
            })
            .collect();
        lapsed.sort();
        for (at, id, cid) in lapsed.into_iter().take(limit) {
            inner.depart(id, &cid, at, leave_delay_ms);
        }
        let keys = due(&inner.leaves, now_ms, limit);
        let until = now_ms.saturating_add(lease_ms.max(1));
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                let (leave, score) = inner.leaves.get_mut(&k)?;
                *score = until;
                Some(leave.clone())
            })
            .collect())
    }

    async fn finish_leave(&self, leave: &PendingLeave) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (leave.session_id, leave.sub.clone());
        if inner
            .leaves
            .get(&key)
            .is_some_and(|(held, _)| held.left_at_ms == leave.left_at_ms)
        {
            inner.leaves.remove(&key);
        }
        Ok(())
    }

    async fn claim_due_absences(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Absence>, StoreError> {
        let mut inner = self.lock();
        let keys = due(&inner.absences, now_ms, limit);
        let until = now_ms.saturating_add(lease_ms.max(1));
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                let (absence, score) = inner.absences.get_mut(&k)?;
                *score = until;
                Some(absence.clone())
            })
            .collect())
    }

    async fn reschedule_absence(
        &self,
        absence: &Absence,
        next_check_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (absence.session_id, absence.participant_id.clone());
        let same = inner
            .absences
            .get(&key)
            .is_some_and(|(held, _)| held.absent_since_ms == absence.absent_since_ms);
        if same {
            match next_check_ms {
                Some(next) => {
                    if let Some((_, score)) = inner.absences.get_mut(&key) {
                        *score = next;
                    }
                }
                None => {
                    inner.absences.remove(&key);
                }
            }
        }
        Ok(())
    }
}
