//! A keyed timer queue: at most one deadline per key (a session), re-armed
//! by replacing it, disarmed by removing it, and popped in deadline order
//! once due. The scheduling core of the local timers that fire timeouts on
//! the instance that committed them (the server drives it with one task
//! that sleeps until [`TimerQueue::next_at`]); kept here, pure and without
//! a clock, so that its every operation is tested against a model.
//!
//! It is an indexed binary min-heap: the heap orders `(at, key)` pairs, and
//! a map from key to heap position makes replace and remove O(log n)
//! instead of a linear search or a lazily skipped stale entry, so memory
//! stays one entry per armed key however often deadlines move. Ties are
//! broken by key, so the pop order is a function of the contents alone.

use std::collections::HashMap;
use std::hash::Hash;

/// Deadlines (ms on the service's clock) by key, earliest first.
///
/// ```
/// use kairos_domain::timers::TimerQueue;
///
/// let mut q = TimerQueue::new();
/// q.arm("a", 30);
/// q.arm("b", 10);
/// q.arm("a", 5); // replaces a's deadline
/// q.disarm(&"b");
/// assert_eq!(q.next_at(), Some(5));
/// assert_eq!(q.pop_due(4), None);
/// assert_eq!(q.pop_due(5), Some(("a", 5)));
/// assert!(q.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct TimerQueue<K> {
    /// A binary min-heap of `(at, key)`: `heap[i] <= heap[2i + 1], heap[2i + 2]`.
    heap: Vec<(i64, K)>,
    /// Where each key's entry is in `heap`.
    index: HashMap<K, usize>,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            heap: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> TimerQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys armed.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no key is armed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The deadline armed for `key`, if any.
    pub fn get(&self, key: &K) -> Option<i64> {
        self.index.get(key).map(|&i| self.heap[i].0)
    }

    /// The earliest deadline armed: when the driver must wake next.
    pub fn next_at(&self) -> Option<i64> {
        self.heap.first().map(|&(at, _)| at)
    }

    /// Arms `key` for `at`, replacing its previous deadline (returned).
    pub fn arm(&mut self, key: K, at: i64) -> Option<i64> {
        match self.index.get(&key) {
            Some(&i) => {
                let previous = std::mem::replace(&mut self.heap[i].0, at);
                if at < previous {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
                Some(previous)
            }
            None => {
                let i = self.heap.len();
                self.heap.push((at, key));
                self.index.insert(key, i);
                self.sift_up(i);
                None
            }
        }
    }

    /// Disarms `key`; returns the deadline it had.
    pub fn disarm(&mut self, key: &K) -> Option<i64> {
        let i = self.index.remove(key)?;
        let last = self.heap.len() - 1;
        self.heap.swap(i, last);
        let (at, _) = self.heap.pop()?;
        if i < self.heap.len() {
            // The former last entry now sits at `i`: it may belong above
            // or below, never both.
            self.index.insert(self.heap[i].1, i);
            self.sift_up(i);
            self.sift_down(i);
        }
        Some(at)
    }

    /// Arms `key` for `at`, or disarms it for `None` (a session whose
    /// deadline was dropped); returns its previous deadline.
    pub fn set(&mut self, key: K, at: Option<i64>) -> Option<i64> {
        match at {
            Some(at) => self.arm(key, at),
            None => self.disarm(&key),
        }
    }

    /// Removes and returns the earliest entry if it is due at `now`
    /// (`at <= now`); among equal deadlines the smallest key first.
    pub fn pop_due(&mut self, now: i64) -> Option<(K, i64)> {
        let &(at, key) = self.heap.first()?;
        if at > now {
            return None;
        }
        self.disarm(&key);
        Some((key, at))
    }

    /// Moves the entry at `i` up while it is smaller than its parent.
    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] >= self.heap[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    /// Moves the entry at `i` down while a child is smaller.
    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut smallest = i;
            if left < self.heap.len() && self.heap[left] < self.heap[smallest] {
                smallest = left;
            }
            if right < self.heap.len() && self.heap[right] < self.heap[smallest] {
                smallest = right;
            }
            if smallest == i {
                break;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }

    /// Swaps two heap slots and keeps the index in step.
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.index.insert(self.heap[a].1, a);
        self.index.insert(self.heap[b].1, b);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    impl<K: Copy + Ord + Hash + std::fmt::Debug> TimerQueue<K> {
        /// The heap property holds and the index names each slot exactly.
        fn assert_consistent(&self) {
            assert_eq!(self.heap.len(), self.index.len());
            for (i, entry) in self.heap.iter().enumerate() {
                assert_eq!(self.index.get(&entry.1), Some(&i), "{entry:?}");
                if i > 0 {
                    let parent = &self.heap[(i - 1) / 2];
                    assert!(parent <= entry, "{parent:?} above {entry:?}");
                }
            }
        }
    }

    #[test]
    fn pops_in_deadline_order_then_key_order() {
        let mut q = TimerQueue::new();
        for (k, at) in [(3, 20), (1, 10), (2, 10), (0, 30)] {
            assert_eq!(q.arm(k, at), None);
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop_due(9), None);
        assert_eq!(q.pop_due(25), Some((1, 10)));
        assert_eq!(q.pop_due(25), Some((2, 10)));
        assert_eq!(q.pop_due(25), Some((3, 20)));
        assert_eq!(q.pop_due(25), None);
        assert_eq!(q.next_at(), Some(30));
        assert_eq!(q.pop_due(30), Some((0, 30)));
        assert!(q.is_empty());
        assert_eq!(q.next_at(), None);
    }

    #[test]
    fn a_new_deadline_replaces_the_old_one_earlier_or_later() {
        let mut q = TimerQueue::new();
        q.arm('a', 100);
        q.arm('b', 50);
        assert_eq!(q.arm('a', 10), Some(100));
        assert_eq!(q.next_at(), Some(10));
        assert_eq!(q.arm('a', 200), Some(10));
        assert_eq!(q.next_at(), Some(50));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_due(150), Some(('b', 50)));
        assert_eq!(q.pop_due(150), None);
        assert_eq!(q.get(&'a'), Some(200));
        q.assert_consistent();
    }

    #[test]
    fn a_dropped_deadline_disarms_and_disarming_twice_is_harmless() {
        let mut q = TimerQueue::new();
        q.set('a', Some(5));
        q.set('b', Some(7));
        assert_eq!(q.set('a', None), Some(5));
        assert_eq!(q.set('a', None), None);
        assert_eq!(q.disarm(&'z'), None);
        assert_eq!(q.get(&'a'), None);
        assert_eq!(q.pop_due(i64::MAX), Some(('b', 7)));
        assert!(q.is_empty());
    }

    #[test]
    fn removing_from_the_middle_keeps_the_heap() {
        let mut q = TimerQueue::new();
        for k in 0..64_i64 {
            q.arm(k, (k * 37) % 64);
        }
        for k in (0..64).step_by(3) {
            assert_eq!(q.disarm(&k), Some((k * 37) % 64));
            q.assert_consistent();
        }
        let mut last = i64::MIN;
        while let Some((_, at)) = q.pop_due(i64::MAX) {
            assert!(at >= last);
            last = at;
        }
    }

    /// One operation on the queue.
    #[derive(Debug, Clone)]
    enum Op {
        Arm(u8, i64),
        Disarm(u8),
        PopDue(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys and a narrow range of instants, so that replacing,
        // removing and equal deadlines are frequent.
        prop_oneof![
            4 => (0u8..24, -20i64..60).prop_map(|(k, at)| Op::Arm(k, at)),
            2 => (0u8..24).prop_map(Op::Disarm),
            2 => (-20i64..60).prop_map(Op::PopDue),
        ]
    }

    proptest! {
        /// Any sequence of arm, disarm and pop_due does to the queue what it
        /// does to a map of key to deadline, where pop_due takes the
        /// smallest (deadline, key) at or before `now`.
        #[test]
        fn matches_a_map_of_deadlines(ops in proptest::collection::vec(op(), 0..300)) {
            let mut q = TimerQueue::new();
            let mut model: BTreeMap<u8, i64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Arm(k, at) => prop_assert_eq!(q.arm(k, at), model.insert(k, at)),
                    Op::Disarm(k) => prop_assert_eq!(q.disarm(&k), model.remove(&k)),
                    Op::PopDue(now) => {
                        let want = model
                            .iter()
                            .map(|(&k, &at)| (at, k))
                            .filter(|&(at, _)| at <= now)
                            .min()
                            .map(|(at, k)| (k, at));
                        if let Some((k, _)) = want {
                            model.remove(&k);
                        }
                        prop_assert_eq!(q.pop_due(now), want);
                    }
                }
                q.assert_consistent();
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.next_at(), model.values().copied().min());
                for k in 0u8..24 {
                    prop_assert_eq!(q.get(&k), model.get(&k).copied());
                }
            }
            // Draining pops everything in (deadline, key) order.
            let mut rest: Vec<(i64, u8)> = model.iter().map(|(&k, &at)| (at, k)).collect();
            rest.sort_unstable();
            let drained: Vec<(i64, u8)> =
                std::iter::from_fn(|| q.pop_due(i64::MAX)).map(|(k, at)| (at, k)).collect();
            prop_assert_eq!(drained, rest);
        }
    }
}
