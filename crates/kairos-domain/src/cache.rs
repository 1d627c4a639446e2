//! The sessions an instance served recently, so that a command on one of
//! them decides on the copy it already has and the store's compare-and-set
//! only confirms it: one store round trip per command instead of a load and
//! a commit.
//!
//! A copy is only a starting point: the commit applies if and only if the
//! stored version is the one decided on, and a stale copy costs one retry on
//! the state the conflict returns (see [`crate::ports::SessionStore::commit`]).
//! Still, the cache never goes backwards: a copy is replaced only by a newer
//! one (a later version of the same session, or a session created later under
//! the same id), whatever order loads, commits and bus messages arrive in.
//!
//! Bounded by count, with the CLOCK (second chance) policy: an entry used
//! since the hand last passed survives one more turn, so the sessions being
//! played stay while those nobody touches make room. Data only: no I/O, no
//! clock; the service fills and reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::ids::SessionId;
use crate::session::Session;

/// How many sessions an instance keeps by default: at about 1 to 2 KiB for
/// a session of a few participants, some 100 to 200 MiB when full, for an
/// instance that serves that many sessions at once.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A bounded, version-monotonic map of sessions (see the module docs).
/// Cheap to share: every method takes `&self` and holds a short lock.
#[derive(Debug)]
pub struct SessionCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where each cached session's slot is.
    index: HashMap<SessionId, usize>,
    /// The entries, in no particular order.
    slots: Vec<Slot>,
    /// The next slot the clock hand looks at when one must go.
    hand: usize,
}

#[derive(Debug)]
struct Slot {
    state: Arc<Session>,
    /// Read or written since the hand last passed.
    referenced: bool,
}

/// Whether `a` is a strictly later state than `b` of one session id: created
/// later (the id was deleted and taken again), or the same session at a
/// higher version.
fn newer(a: &Session, b: &Session) -> bool {
    (a.created_at_ms, a.version) > (b.created_at_ms, b.version)
}

impl SessionCache {
    /// A cache of at most `capacity` sessions (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// The most sessions it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many sessions it holds now.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned lock only means a panic elsewhere while holding it; every
    /// update below leaves the map consistent before it can panic, and a
    /// cache may always be wrong (the store decides), so go on.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The copy of session `id`, if held.
    pub fn get(&self, id: SessionId) -> Option<Arc<Session>> {
        let mut inner = self.lock();
        let i = *inner.index.get(&id)?;
        let slot = &mut inner.slots[i];
        slot.referenced = true;
        Some(slot.state.clone())
    }

    /// Keeps `state` unless a newer copy of its session is held; makes room
    /// by evicting a session not used since the clock hand last passed.
    pub fn insert(&self, state: Arc<Session>) {
        self.put(state, true);
    }

    /// Replaces the copy of `state`'s session by `state` if one is held and
    /// `state` is newer; holds nothing new otherwise (what the bus delivers
    /// keeps known sessions fresh without filling the cache with others).
    pub fn refresh(&self, state: &Arc<Session>) {
        self.put(state.clone(), false);
    }

    fn put(&self, state: Arc<Session>, add: bool) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if let Some(&i) = inner.index.get(&state.id) {
            let slot = &mut inner.slots[i];
            if newer(&state, &slot.state) {
                slot.state = state;
                slot.referenced = true;
            }
            return;
        }
        if !add {
            return;
        }
        let id = state.id;
        let slot = Slot {
            state,
            referenced: false,
        };
        if inner.slots.len() < self.capacity {
            inner.slots.push(slot);
            let i = inner.slots.len() - 1;
            inner.index.insert(id, i);
            return;
        }
        let i = inner.victim();
        let old = std::mem::replace(&mut inner.slots[i], slot).state.id;
        inner.index.remove(&old);
        inner.index.insert(id, i);
    }

    /// Forgets session `id` (deleted, or found gone).
    pub fn remove(&self, id: SessionId) {
        let mut inner = self.lock();
        let Some(i) = inner.index.remove(&id) else {
            return;
        };
        inner.slots.swap_remove(i);
        if let Some(moved) = inner.slots.get(i).map(|s| s.state.id) {
            inner.index.insert(moved, i);
        }
        if inner.hand >= inner.slots.len() {
            inner.hand = 0;
        }
    }
}

impl Inner {
    /// The slot to reuse: the first one from the hand on that was not used
    /// since the hand last passed, clearing the marks it passes (found
    /// within two turns at most). Only called when full, so never empty.
    fn victim(&mut self) -> usize {
        let len = self.slots.len();
        loop {
            let i = self.hand % len;
            self.hand = (i + 1) % len;
            let slot = &mut self.slots[i];
            if slot.referenced {
                slot.referenced = false;
            } else {
                return i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine;
    use proptest::prelude::*;

    fn session(n: u128, version: u64, created_at_ms: i64) -> Arc<Session> {
        static BASE: std::sync::OnceLock<Session> = std::sync::OnceLock::new();
        let base = BASE.get_or_init(|| {
            let config = crate::SessionConfig::parse(&serde_json::json!({
                "sync_mode": "per_participant",
                "participants": [
                    {"participant_id": "a", "total_time_ms": 60000},
                    {"participant_id": "b", "total_time_ms": 60000}
                ]
            }))
            .expect("a valid config");
            let id = SessionId::from_uuid(uuid::Uuid::from_u128(0));
            machine::create(config, id, None, 0).0
        });
        let mut s = base.clone();
        s.id = SessionId::from_uuid(uuid::Uuid::from_u128(n));
        s.version = version;
        s.created_at_ms = created_at_ms;
        Arc::new(s)
    }

    fn version(cache: &SessionCache, n: u128) -> Option<u64> {
        cache
            .get(SessionId::from_uuid(uuid::Uuid::from_u128(n)))
            .map(|s| s.version)
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        let cache = SessionCache::new(10);
        cache.insert(session(1, 5, 0));
        cache.insert(session(1, 4, 0));
        assert_eq!(version(&cache, 1), Some(5));
        cache.refresh(&session(1, 3, 0));
        assert_eq!(version(&cache, 1), Some(5));
        cache.refresh(&session(1, 6, 0));
        assert_eq!(version(&cache, 1), Some(6));
        // The id deleted and taken again: a later creation wins at any version.
        cache.insert(session(1, 1, 10));
        assert_eq!(version(&cache, 1), Some(1));
        cache.insert(session(1, 9, 0));
        assert_eq!(version(&cache, 1), Some(1));
    }

    #[test]
    fn refresh_keeps_only_what_is_held_and_remove_forgets() {
        let cache = SessionCache::new(10);
        cache.refresh(&session(1, 2, 0));
        assert_eq!(version(&cache, 1), None);
        assert!(cache.is_empty());
        cache.insert(session(1, 2, 0));
        cache.insert(session(2, 7, 0));
        cache.remove(SessionId::from_uuid(uuid::Uuid::from_u128(1)));
        assert_eq!(version(&cache, 1), None);
        assert_eq!(version(&cache, 2), Some(7));
        assert_eq!(cache.len(), 1);
        cache.remove(SessionId::from_uuid(uuid::Uuid::from_u128(1)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_evicts_a_session_not_used_since_the_hand_passed() {
        let cache = SessionCache::new(3);
        for n in 1..=3 {
            cache.insert(session(n, 1, 0));
        }
        // 1 and 3 are in use; 2 is not.
        assert_eq!(version(&cache, 1), Some(1));
        assert_eq!(version(&cache, 3), Some(1));
        cache.insert(session(4, 1, 0));
        assert_eq!(cache.len(), 3);
        assert_eq!(version(&cache, 2), None);
        assert_eq!(version(&cache, 1), Some(1));
        assert_eq!(version(&cache, 3), Some(1));
        assert_eq!(version(&cache, 4), Some(1));
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let cache = SessionCache::new(0);
        cache.insert(session(1, 1, 0));
        assert_eq!(version(&cache, 1), None);
        assert_eq!(cache.capacity(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Refresh(u8, u8),
        Get(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0u8..20).prop_map(|(n, v)| Op::Insert(n, v)),
            (0u8..12, 0u8..20).prop_map(|(n, v)| Op::Refresh(n, v)),
            (0u8..12).prop_map(Op::Get),
            (0u8..12).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a model with no bound: the cache never holds more than
        /// its capacity, and whatever it answers for a session is the newest
        /// version it was given since it last started holding it (no older
        /// copy ever replaces a newer one).
        #[test]
        fn bounded_and_monotonic(capacity in 1usize..6, ops in proptest::collection::vec(op(), 1..200)) {
            let cache = SessionCache::new(capacity);
            // The newest version given per session since its last removal.
            let mut newest: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(n, v) => {
                        // An evicted session comes back at whatever it is given.
                        if version(&cache, u128::from(n)).is_none() {
                            newest.remove(&n);
                        }
                        cache.insert(session(u128::from(n), u64::from(v), 0));
                        let e = newest.entry(n).or_insert(0);
                        *e = (*e).max(u64::from(v));
                    }
                    Op::Refresh(n, v) => {
                        let held = version(&cache, u128::from(n)).is_some();
                        cache.refresh(&session(u128::from(n), u64::from(v), 0));
                        if held {
                            let e = newest.entry(n).or_insert(0);
                            *e = (*e).max(u64::from(v));
                        } else {
                            prop_assert_eq!(version(&cache, u128::from(n)), None);
                        }
                    }
                    Op::Get(n) => {
                        if let Some(v) = version(&cache, u128::from(n)) {
                            prop_assert_eq!(Some(&v), newest.get(&n));
                        }
                    }
                    Op::Remove(n) => {
                        cache.remove(SessionId::from_uuid(uuid::Uuid::from_u128(u128::from(n))));
                        newest.remove(&n);
                        prop_assert_eq!(version(&cache, u128::from(n)), None);
                    }
                }
                prop_assert!(cache.len() <= capacity);
            }
        }
    }
}
