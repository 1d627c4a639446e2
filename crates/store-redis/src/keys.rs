//! The key layout: sessions spread over [`PARTITIONS`] hash-tagged
//! partitions, so a Redis Cluster spreads them over its nodes while every
//! key one commit touches stays in one slot; and the sweep that visits the
//! partitions for claims and outbox reads.
//!
//! For a session in partition `NN` (two digits) and the default prefix:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `kairos:{pNN}:s:<uuid>` | hash | `v` = version (decimal), `s` = encoded state, `r` = the switch limit's GCRA TAT (µs, decimal; written by the commit script when it counts the limit); PEXPIRE = session TTL |
//! | `kairos:{pNN}:deadlines` | sorted set | member = session uuid, score = deadline (ms), or a claim's lease end |
//! | `kairos:{pNN}:outbox` | stream | one entry per event, field `e` = the event's JSON; consumer group `audit` |
//! | `kairos:{pNN}:hooks` | stream | the same entries for the webhook fan-out (only with the webhook feed on), plus presence events; consumer group `webhooks` |
//!
//! Webhooks (contract section 9) are deployment-wide, not per session: their
//! keys share the one hash tag `{wh}` (one Cluster slot, so every webhook
//! script runs on one node):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `kairos:{wh}:endpoints` | hash | webhook id -> the endpoint's JSON (secret included) |
//! | `kairos:{wh}:off` | set | ids of disabled endpoints (their deliveries are dropped) |
//! | `kairos:{wh}:due` | sorted set | member `<webhook_id>:<event_id>`, score = due (ms), or a claim's lease end |
//! | `kairos:{wh}:age` | sorted set | the same members, score = first enqueued (ms): the oldest undelivered |
//! | `kairos:{wh}:job:<webhook_id>:<event_id>` | hash | `body`, `attempt`, `due`, `first` of one queued delivery |
//! | `kairos:{wh}:jobs:<webhook_id>` | set | the event ids queued for one endpoint, to drop them with it |
//! | `kairos:{wh}:log:<webhook_id>` | list | the delivery log, newest first (LPUSH, trimmed to 1,000) |
//!
//! No key is hot (the deadline index and the outbox are split 64 ways), and
//! no script ever touches two slots. The webhook queue is one slot: its load
//! is one enqueue per (endpoint, event) and one claim per poll, far below a
//! session's switch traffic.
//!
//! Presence (`presence.rs`) keeps its keys under one hash tag of its own,
//! `{presence}`, because sweeping the connections of a dead instance
//! visits any session's entries from one script; its writes are a connect,
//! a close, and one renewal per instance every 10 s, so that slot is not
//! hot either. `<sid>` is a session uuid; `|` separates the parts of a
//! member (a uuid never contains one):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `kairos:{presence}:c:<sid>` | hash | connection id → `{"s": sub, "p": participant or "", "t": since ms}` |
//! | `kairos:{presence}:u:<sid>` | hash | sub → its registered connections (lapsed ones until swept) |
//! | `kairos:{presence}:p:<sid>` | hash | participant id → its registered connections |
//! | `kairos:{presence}:leases` | sorted set | member `<sid>\|<connection id>`, score = lease end (ms) |
//! | `kairos:{presence}:leaves` | sorted set | member `<sid>\|<sub>`, score = when `presence_left` is due, or a claim's lease end |
//! | `kairos:{presence}:leave` | hash | `<sid>\|<sub>` → `{"p": participant, "l": left at, "d": due at}` |
//! | `kairos:{presence}:absent` | sorted set | member `<sid>\|<participant id>`, score = next auto-pause check, or a claim's lease end |
//! | `kairos:{presence}:since` | hash | `<sid>\|<participant id>` → absent since (ms) |
//!
//! Every entry leaves by a close or by the sweep of its lapsed lease, and
//! every pending leave and absence by its worker, so none outlives its use.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::future::try_join_all;
use kairos_domain::{SessionId, StoreError};

/// How many partitions the keys are spread over. A constant, not a setting:
/// every instance of a deployment must map a session to the same partition,
/// and changing it would orphan every stored session. 64 hash tags spread
/// evenly over clusters of up to a few dozen primaries, while a sweep over
/// all partitions (deadline claims, outbox reads) stays one pipelined round
/// of 64 small script calls.
pub const PARTITIONS: usize = 64;

/// The partition of a session: FNV-1a (64 bit) over the UUID's 16 bytes,
/// folded, modulo [`PARTITIONS`]. Stable across processes, versions and
/// platforms (unlike `std`'s randomly seeded hasher), and well mixed even for
/// UUID versions whose low bytes are constant (v1's node id).
pub fn partition_of(id: &SessionId) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in id.as_uuid().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    let folded = hash ^ (hash >> 32);
    // The modulo is below PARTITIONS, so the cast cannot truncate.
    (folded % PARTITIONS as u64) as usize
}

/// The precomputed key names of every partition, for one key prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    partitions: Vec<PartitionKeys>,
}

/// The key names of one partition.
#[derive(Debug, Clone)]
pub(crate) struct PartitionKeys {
    /// `<prefix>{pNN}:s:`: a session's state key is this plus its uuid.
    pub(crate) state_prefix: String,
    /// `<prefix>{pNN}:deadlines`.
    pub(crate) deadlines: String,
    /// `<prefix>{pNN}:outbox`.
    pub(crate) outbox: String,
    /// `<prefix>{pNN}:hooks`.
    pub(crate) hooks: String,
}

/// The key names of the webhook queue and endpoints, all under the hash
/// tag `{wh}`.
#[derive(Debug, Clone)]
pub(crate) struct WebhookKeys {
    /// `<prefix>{wh}:endpoints`.
    pub(crate) endpoints: String,
    /// `<prefix>{wh}:off`.
    pub(crate) off: String,
    /// `<prefix>{wh}:due`.
    pub(crate) due: String,
    /// `<prefix>{wh}:age`.
    pub(crate) age: String,
    /// `<prefix>{wh}:job:`: a job's key is this plus its member.
    pub(crate) job_prefix: String,
    /// `<prefix>{wh}:jobs:`: an endpoint's job set is this plus its id.
    pub(crate) jobs_prefix: String,
    /// `<prefix>{wh}:log:`: an endpoint's log is this plus its id.
    pub(crate) log_prefix: String,
}

impl WebhookKeys {
    /// The names for `prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        let tag = format!("{prefix}{{wh}}");
        Self {
            endpoints: format!("{tag}:endpoints"),
            off: format!("{tag}:off"),
            due: format!("{tag}:due"),
            age: format!("{tag}:age"),
            job_prefix: format!("{tag}:job:"),
            jobs_prefix: format!("{tag}:jobs:"),
            log_prefix: format!("{tag}:log:"),
        }
    }
}

impl Keys {
    /// The names for `prefix` (checked by `RedisConfig::validate` to hold no braces).
    pub(crate) fn new(prefix: &str) -> Self {
        let partitions = (0..PARTITIONS)
            .map(|p| {
                let tag = format!("{prefix}{{p{p:02}}}");
                PartitionKeys {
                    state_prefix: format!("{tag}:s:"),
                    deadlines: format!("{tag}:deadlines"),
                    outbox: format!("{tag}:outbox"),
                    hooks: format!("{tag}:hooks"),
                }
            })
            .collect();
        Self { partitions }
    }

    /// The keys of partition `p` (< [`PARTITIONS`]).
    pub(crate) fn partition(&self, p: usize) -> &PartitionKeys {
        &self.partitions[p % PARTITIONS]
    }

    /// The state key of a session.
    pub(crate) fn state(&self, id: &SessionId) -> String {
        format!("{}{}", self.partition(partition_of(id)).state_prefix, id)
    }
}

/// The kind segment of every rate-limit key: `rlu`, TATs in µs. Builds
/// that kept ms TATs used `rl`; the new name keeps the two apart during a
/// rolling upgrade (an old instance would read a µs TAT as a time 1,000
/// times later and refuse every request of that key until it expired).
pub(crate) const RATE_KIND: &str = "rlu";

/// `<prefix><kind>:{<key>}`: a key whose whole client-chosen part is the
/// hash tag, so each call on it touches one slot. Braces inside `key` are
/// replaced, so a client's `sub` cannot change the tag.
pub(crate) fn tagged(prefix: &str, kind: &str, key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| match c {
            '{' => '(',
            '}' => ')',
            c => c,
        })
        .collect();
    format!("{prefix}{kind}:{{{safe}}}")
}

/// Splits `budget` over `n` partitions as evenly as possible: the first
/// `budget % n` get one more. The quotas add up to exactly `budget`, so a
/// sweep never takes more than it may return.
pub(crate) fn split_budget(budget: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let (base, extra) = (budget / n, budget % n);
    (0..n).map(|i| base + usize::from(i < extra)).collect()
}

/// Upper bound on the waves of one sweep (see [`sweep`]): enough
/// to visit every partition one by one plus a few refills of the busy ones.
const MAX_WAVES: usize = PARTITIONS + 8;

/// Visits the partitions in waves, starting at `start`, asking each for
/// at most a quota; the quotas of a wave add up to what is still wanted,
/// so the sweep never takes (claims, leases) more than `budget` items.
///
/// The first wave covers every partition when the budget allows (one
/// concurrent round of small calls, pipelined on the connection). A
/// partition that filled its quota may hold more; later waves give the
/// leftover budget to those. With a budget below [`PARTITIONS`] the
/// partitions are visited `budget` at a time until the budget is spent
/// or all were seen.
///
/// `visit(partition, quota)` returns the items and whether the quota was
/// filled.
pub(crate) async fn sweep<T, F, Fut>(
    start: usize,
    budget: usize,
    visit: F,
) -> Result<Vec<T>, StoreError>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, bool), StoreError>>,
{
    sweep_over(
        (0..PARTITIONS).map(|i| (start + i) % PARTITIONS),
        budget,
        visit,
    )
    .await
}

/// [`sweep`] over the given partitions only, in the given order.
pub(crate) async fn sweep_over<T, F, Fut>(
    partitions: impl IntoIterator<Item = usize>,
    budget: usize,
    mut visit: F,
) -> Result<Vec<T>, StoreError>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, bool), StoreError>>,
{
    let mut out = Vec::new();
    let mut unvisited: VecDeque<usize> = partitions.into_iter().collect();
    let mut full: VecDeque<usize> = VecDeque::new();
    for _ in 0..MAX_WAVES {
        let remaining = budget.saturating_sub(out.len());
        let source = if remaining == 0 {
            break;
        } else if !unvisited.is_empty() {
            &mut unvisited
        } else if !full.is_empty() {
            &mut full
        } else {
            break;
        };
        let wave: Vec<usize> = source.drain(..remaining.min(source.len())).collect();
        let quotas = split_budget(remaining, wave.len());
        let calls = wave.iter().zip(quotas).map(|(&p, quota)| {
            let call = visit(p, quota);
            async move { call.await.map(|result| (p, result)) }
        });
        for (p, (items, filled)) in try_join_all(calls).await? {
            out.extend(items);
            if filled {
                full.push_back(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_key_keeps_the_whole_client_part_in_one_tag() {
        assert_eq!(tagged("k:", "rl", "sub:alice"), "k:rl:{sub:alice}");
        assert_eq!(tagged("k:", "places", "a}{b"), "k:places:{a)(b}");
    }

    fn id(n: u128) -> SessionId {
        SessionId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn partition_is_stable_and_spreads_sequential_ids() {
        // A fixed expectation guards against an accidental change of the
        // hash, which would orphan every stored session.
        let fixed: SessionId = "123e4567-e89b-12d3-a456-426614174000"
            .parse()
            .expect("a valid uuid");
        assert_eq!(partition_of(&fixed), 48);
        assert_eq!(partition_of(&id(0)), 28);
        let mut seen = [0usize; PARTITIONS];
        for n in 0..6400u128 {
            // Ids differing only in their high bytes (like v1 uuids of one node).
            seen[partition_of(&id(n << 64))] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50 && c < 150), "{seen:?}");
    }

    #[test]
    fn keys_share_the_partition_hash_tag() {
        let keys = Keys::new("kairos:");
        let s = id(42);
        let p = partition_of(&s);
        let tag = format!("{{p{p:02}}}");
        assert_eq!(keys.state(&s), format!("kairos:{tag}:s:{s}"));
        assert_eq!(
            keys.partition(p).deadlines,
            format!("kairos:{tag}:deadlines")
        );
        assert_eq!(keys.partition(p).outbox, format!("kairos:{tag}:outbox"));
        assert_eq!(keys.partition(p).hooks, format!("kairos:{tag}:hooks"));
    }

    #[test]
    fn webhook_keys_share_one_hash_tag() {
        let keys = WebhookKeys::new("kairos:");
        assert_eq!(keys.endpoints, "kairos:{wh}:endpoints");
        assert_eq!(keys.off, "kairos:{wh}:off");
        assert_eq!(keys.due, "kairos:{wh}:due");
        assert_eq!(keys.age, "kairos:{wh}:age");
        assert_eq!(keys.job_prefix, "kairos:{wh}:job:");
        assert_eq!(keys.jobs_prefix, "kairos:{wh}:jobs:");
        assert_eq!(keys.log_prefix, "kairos:{wh}:log:");
    }

    #[test]
    fn budgets_add_up() {
        assert_eq!(split_budget(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split_budget(3, 5), vec![1, 1, 1, 0, 0]);
        assert_eq!(split_budget(5, 0), Vec::<usize>::new());
        assert_eq!(split_budget(1000, 64).iter().sum::<usize>(), 1000);
    }
}
