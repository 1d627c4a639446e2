//! [`MemoryStore`]: sessions, their deadline index and the event outbox in
//! one process, behind one mutex so that a commit is trivially atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_domain::{
    Claimed, Commit, Event, Outbox, OutboxEntry, Session, SessionId, SessionPage, SessionStore,
    StoreError,
};

/// Everything the store holds. A std mutex, not a tokio one: every critical
/// section is short and never awaits, so a blocking lock is cheaper and
/// cannot be held across a suspension point.
#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionId, Stored>,
    /// (deadline, session) ordered by deadline: the scheduler's index.
    deadlines: BTreeSet<(i64, SessionId)>,
    /// A claim hides a session from other claimers until this instant (ms).
    leases: HashMap<SessionId, i64>,
    outbox: BTreeMap<u64, Slot>,
    next_seq: u64,
}

#[derive(Debug)]
struct Stored {
    state: Session,
    deadline: Option<i64>,
    expires: Instant,
}

#[derive(Debug)]
struct Slot {
    event: Event,
    /// (consumer, lease start) while a consumer holds it.
    lease: Option<(String, Instant)>,
}

/// An in-process [`SessionStore`] and [`Outbox`]. Sessions expire after the
/// TTL without a change, like the Redis store's keys.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    ttl: Duration,
}

impl MemoryStore {
    /// A store whose sessions live `ttl` after their last change.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        // A poisoned lock means a panic mid-update: refuse rather than serve torn state.
        self.inner
            .lock()
            .map_err(|_| StoreError::Other("memory store lock poisoned".into()))
    }

    fn append(inner: &mut Inner, events: &[Event]) {
        for event in events {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.outbox.insert(
                seq,
                Slot {
                    event: event.clone(),
                    lease: None,
                },
            );
        }
    }
}

impl Inner {
    fn set_deadline(&mut self, id: SessionId, old: Option<i64>, new: Option<i64>) {
        if let Some(d) = old {
            self.deadlines.remove(&(d, id));
        }
        if let Some(d) = new {
            self.deadlines.insert((d, id));
        }
        self.leases.remove(&id);
    }

    /// Drops a session whose TTL passed, as Redis would have.
    fn expire_if_due(&mut self, id: SessionId, now: Instant) {
        let expired = self
            .sessions
            .get(&id)
            .is_some_and(|stored| stored.expires <= now);
        if expired && let Some(stored) = self.sessions.remove(&id) {
            self.set_deadline(id, stored.deadline, None);
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let mut inner = self.lock()?;
        inner.expire_if_due(id, Instant::now());
        Ok(inner.sessions.get(&id).map(|s| s.state.clone()))
    }

    async fn create(&self, state: &Session, events: &[Event]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        inner.expire_if_due(state.id, now);
        if inner.sessions.contains_key(&state.id) {
            return Err(StoreError::AlreadyExists);
        }
        let deadline = kairos_domain::machine::next_deadline(state);
        inner.set_deadline(state.id, None, deadline);
        inner.sessions.insert(
            state.id,
            Stored {
                state: state.clone(),
                deadline,
                expires: now + self.ttl,
            },
        );
        Self::append(&mut inner, events);
        Ok(())
    }

    async fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        let id = commit.state.id;
        inner.expire_if_due(id, now);
        let old_deadline = match inner.sessions.get(&id) {
            Some(stored) if stored.state.version == commit.expected_version => stored.deadline,
            _ => return Err(StoreError::VersionConflict),
        };
        inner.set_deadline(id, old_deadline, commit.deadline);
        inner.sessions.insert(
            id,
            Stored {
                state: commit.state.clone(),
                deadline: commit.deadline,
                expires: now + self.ttl,
            },
        );
        Self::append(&mut inner, &commit.events);
        Ok(())
    }

    async fn delete(&self, id: SessionId) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        match inner.sessions.remove(&id) {
            Some(stored) => {
                inner.set_deadline(id, stored.deadline, None);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        let due: Vec<SessionId> = inner
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .map(|(_, id)| *id)
            .filter(|id| inner.leases.get(id).is_none_or(|until| *until <= now_ms))
            .collect();
        let mut claimed = Vec::new();
        for id in due {
            if claimed.len() == limit {
                break;
            }
            // A session past its TTL leaves the index, as in Redis.
            inner.expire_if_due(id, now);
            let Some(stored) = inner.sessions.get(&id) else {
                continue;
            };
            let state = stored.state.clone();
            inner.leases.insert(id, now_ms.saturating_add(lease_ms));
            claimed.push(Claimed {
                id,
                state: Some(state),
            });
        }
        Ok(claimed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    /// A walk in session id order; the cursor is the last id returned.
    /// Each page costs O(n log n) in the n sessions stored, under the
    /// store's lock (it sorts the ids after the cursor): fine for an admin
    /// page, not for a request path. A page holds at most `limit` sessions.
    async fn list(&self, cursor: Option<String>, limit: usize) -> Result<SessionPage, StoreError> {
        let after = match cursor.as_deref() {
            None => None,
            Some(c) => Some(
                c.parse::<SessionId>()
                    .map_err(|_| StoreError::InvalidCursor)?,
            ),
        };
        let mut inner = self.lock()?;
        let now = Instant::now();
        let expired: Vec<SessionId> = inner
            .sessions
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            inner.expire_if_due(id, now);
        }
        let mut ids: Vec<SessionId> = inner
            .sessions
            .keys()
            .filter(|id| after.is_none_or(|a| id.as_uuid() > a.as_uuid()))
            .copied()
            .collect();
        ids.sort_unstable_by_key(|id| *id.as_uuid());
        let limit = limit.max(1);
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next_cursor = more.then(|| ids.last().map(ToString::to_string)).flatten();
        let sessions = ids
            .iter()
            .filter_map(|id| inner.sessions.get(id).map(|s| s.state.clone()))
            .collect();
        Ok(SessionPage {
            sessions,
            next_cursor,
        })
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let now = Instant::now();
        let reclaim_after = Duration::from_millis(u64::try_from(reclaim_after_ms).unwrap_or(0));
        let mut inner = self.lock()?;
        let mut out = Vec::new();
        for (seq, slot) in inner.outbox.iter_mut() {
            if out.len() >= max {
                break;
            }
            let free = match &slot.lease {
                None => true,
                Some((_, since)) => now.duration_since(*since) >= reclaim_after,
            };
            if free {
                slot.lease = Some((consumer.to_owned(), now));
                out.push(OutboxEntry {
                    id: seq.to_string(),
                    event: slot.event.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        for id in ids {
            if let Ok(seq) = id.parse::<u64>() {
                inner.outbox.remove(&seq);
            }
        }
        Ok(())
    }

    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        let inner = self.lock()?;
        let age = inner
            .outbox
            .values()
            .next()
            .map_or(0, |slot| now_ms.saturating_sub(slot.event.at_ms).max(0));
        Ok((inner.outbox.len() as u64, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_domain::{SessionConfig, machine};

    fn session(n: u64) -> Session {
        let cfg = SessionConfig::parse(&serde_json::json!({"sync_mode": "count_up"}))
            .expect("a valid config");
        let id = format!("00000000-0000-4000-8000-{n:012}")
            .parse()
            .expect("a valid id");
        machine::create(cfg, id, None, 0).0
    }

    #[tokio::test]
    async fn a_walk_returns_every_session_once_in_id_order() {
        let store = MemoryStore::new(Duration::from_secs(60));
        for n in [5, 1, 4, 2, 3] {
            store.create(&session(n), &[]).await.expect("created");
        }

        let first = store.list(None, 2).await.expect("lists");
        let second = store
            .list(first.next_cursor.clone(), 2)
            .await
            .expect("lists");
        let last = store
            .list(second.next_cursor.clone(), 2)
            .await
            .expect("lists");

        let ids = |p: &SessionPage| p.sessions.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(&first), [session(1).id, session(2).id]);
        assert_eq!(ids(&second), [session(3).id, session(4).id]);
        assert_eq!(ids(&last), [session(5).id]);
        assert_eq!(last.next_cursor, None);
        assert_eq!(
            store.list(Some("not-a-cursor".into()), 2).await,
            Err(StoreError::InvalidCursor)
        );
        let empty = MemoryStore::new(Duration::from_secs(60));
        assert_eq!(empty.list(None, 10).await, Ok(SessionPage::default()));
    }

    #[tokio::test]
    async fn a_walk_leaves_out_sessions_past_their_ttl() {
        let store = MemoryStore::new(Duration::ZERO);
        store.create(&session(1), &[]).await.expect("created");

        let page = store.list(None, 10).await.expect("lists");

        assert!(page.sessions.is_empty());
    }
}
