//! [`MemoryStore`]: sessions, their deadline index and the event outbox in
//! one process, behind one mutex so that a commit is trivially atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_domain::ratelimit::{RateDecision, gcra};
use kairos_domain::{
    Claimed, Commit, Event, Outbox, OutboxEntry, Session, SessionId, SessionStore, StoreError,
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
    /// Each session's GCRA TAT for the rate checks commits carry (the
    /// per-session switch limit), dropped with the session.
    rates: HashMap<SessionId, i64>,
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
            self.rates.remove(&id);
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

    async fn commit(&self, commit: &Commit) -> Result<Option<RateDecision>, StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        let id = commit.state.id;
        inner.expire_if_due(id, now);
        let old_deadline = match inner.sessions.get(&id) {
            Some(stored) if stored.state.version == commit.expected_version => stored.deadline,
            Some(stored) => {
                return Err(StoreError::VersionConflict(Some(Box::new(
                    stored.state.clone(),
                ))));
            }
            None => return Err(StoreError::VersionConflict(None)),
        };
        let rate = match commit.rate {
            None => None,
            Some(check) => {
                let (decision, tat) =
                    gcra(inner.rates.get(&id).copied(), check.now_ms, check.limit);
                if !decision.allowed {
                    return Err(StoreError::RateLimited(decision));
                }
                inner.rates.insert(id, tat);
                Some(decision)
            }
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
        Ok(rate)
    }

    async fn delete(&self, id: SessionId) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        inner.rates.remove(&id);
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
