//! [`MemoryStore`]: sessions, their deadline index and the event outboxes
//! (the audit outbox and, when on, the webhook feed: [`MemoryOutbox`]) in
//! one process, behind one mutex so that a commit is trivially atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kairos_domain::ratelimit::{RateDecision, gcra};
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
    /// The audit outbox.
    outbox: Queue,
    /// The webhook feed: the same events when the feed is on, and presence events.
    hooks: Queue,
    /// Each session's GCRA TAT for the rate checks commits carry (the
    /// per-session switch limit), dropped with the session.
    rates: HashMap<SessionId, i64>,
}

/// One outbox: events in order, each leased to a consumer until acknowledged.
#[derive(Debug, Default)]
struct Queue {
    slots: BTreeMap<u64, Slot>,
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

/// An in-process [`SessionStore`] and (audit) [`Outbox`]. Sessions expire
/// after the TTL without a change, like the Redis store's keys.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    ttl: Duration,
    /// Whether commits also feed the webhook outbox.
    webhook_feed: bool,
}

/// A poisoned lock means a panic mid-update: refuse rather than serve torn state.
fn lock(inner: &Mutex<Inner>) -> Result<MutexGuard<'_, Inner>, StoreError> {
    inner
        .lock()
        .map_err(|_| StoreError::Other("memory store lock poisoned".into()))
}

impl MemoryStore {
    /// A store whose sessions live `ttl` after their last change.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            ttl,
            webhook_feed: false,
        }
    }

    /// With `on`, every `create` and `commit` also appends its events to the
    /// webhook outbox ([`Self::webhook_outbox`]) under the same lock as the
    /// audit outbox. Off by default: nothing would drain it.
    #[must_use]
    pub fn with_webhook_feed(mut self, on: bool) -> Self {
        self.webhook_feed = on;
        self
    }

    /// The webhook feed as an [`Outbox`] (the audit outbox is the store
    /// itself). It shares the store's state; with the feed off it stays
    /// empty but for [`MemoryOutbox::push`].
    pub fn webhook_outbox(&self) -> MemoryOutbox {
        MemoryOutbox {
            inner: Arc::clone(&self.inner),
            feed: self.webhook_feed,
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        lock(&self.inner)
    }

    fn append(&self, inner: &mut Inner, events: &[Event]) {
        inner.outbox.append(events);
        if self.webhook_feed {
            inner.hooks.append(events);
        }
    }
}

impl Queue {
    fn append(&mut self, events: &[Event]) {
        for event in events {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.slots.insert(
                seq,
                Slot {
                    event: event.clone(),
                    lease: None,
                },
            );
        }
    }

    fn read(&mut self, consumer: &str, max: usize, reclaim_after_ms: i64) -> Vec<OutboxEntry> {
        let now = Instant::now();
        let reclaim_after = Duration::from_millis(u64::try_from(reclaim_after_ms).unwrap_or(0));
        let mut out = Vec::new();
        for (seq, slot) in self.slots.iter_mut() {
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
        out
    }

    fn ack(&mut self, ids: &[String]) {
        for id in ids {
            if let Ok(seq) = id.parse::<u64>() {
                self.slots.remove(&seq);
            }
        }
    }

    fn backlog(&self, now_ms: i64) -> (u64, i64) {
        let age = self
            .slots
            .values()
            .next()
            .map_or(0, |slot| now_ms.saturating_sub(slot.event.at_ms).max(0));
        (self.slots.len() as u64, age)
    }
}

/// The webhook feed of a [`MemoryStore`], as an [`Outbox`]: the same code as
/// the audit outbox over the store's second queue.
#[derive(Debug, Clone)]
pub struct MemoryOutbox {
    inner: Arc<Mutex<Inner>>,
    /// Whether the store's commits feed it (and so whether `push` does).
    feed: bool,
}

impl MemoryOutbox {
    /// Appends an event that is in no commit (a presence event); a no-op
    /// when the store was built without the webhook feed.
    pub fn push(&self, event: &Event) -> Result<(), StoreError> {
        if self.feed {
            lock(&self.inner)?.hooks.append(std::slice::from_ref(event));
        }
        Ok(())
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(lock(&self.inner)?
            .hooks
            .read(consumer, max, reclaim_after_ms))
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        lock(&self.inner)?.hooks.ack(ids);
        Ok(())
    }

    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        Ok(lock(&self.inner)?.hooks.backlog(now_ms))
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
        self.append(&mut inner, events);
        Ok(())
    }

    async fn commit(&self, commit: &Commit) -> Result<Option<RateDecision>, StoreError> {
        if !commit.publish.is_empty() {
            // The port's rule for a store that does not publish: its bus does.
            return Err(StoreError::Other(
                "the memory store does not publish: give it a commit without bus messages".into(),
            ));
        }
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
        self.append(&mut inner, &commit.events);
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
        Ok(self.lock()?.outbox.read(consumer, max, reclaim_after_ms))
    }

    async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        self.lock()?.outbox.ack(ids);
        Ok(())
    }

    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        Ok(self.lock()?.outbox.backlog(now_ms))
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

    /// The port's rule for a store that does not publish: a commit with
    /// bus messages is refused and writes nothing.
    #[tokio::test]
    async fn a_commit_with_messages_to_publish_is_refused() {
        let store = MemoryStore::new(Duration::from_secs(60));
        assert!(!store.publishes_commits());
        let stored = session(1);
        store.create(&stored, &[]).await.expect("created");
        let mut next = stored.clone();
        next.version += 1;

        let refused = store
            .commit(&Commit {
                rate: None,
                deadline: None,
                expected_version: stored.version,
                events: vec![],
                state: next,
                publish: vec![kairos_domain::EncodedMessage {
                    channel: "c".into(),
                    payload: b"p".to_vec(),
                }],
            })
            .await;

        assert!(matches!(refused, Err(StoreError::Other(_))), "{refused:?}");
        assert_eq!(store.load(stored.id).await, Ok(Some(stored)));
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
