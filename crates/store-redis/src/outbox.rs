//! [`RedisOutbox`]: an [`Outbox`] over one Redis stream per partition,
//! drained through one consumer group. The store has two: the audit outbox
//! (`{pNN}:outbox`, group `audit`, which [`crate::RedisStore`] itself
//! implements by delegation) and the webhook feed (`{pNN}:hooks`, group
//! `webhooks`, [`crate::RedisStore::webhook_outbox`]). One code path serves both, told apart
//! by [`Feed`].
//!
//! Between full sweeps (every partition visited, at least every 15 s) a
//! read is plain `XREADGROUP` calls; scripts take leases over at the full
//! sweeps and create missing consumer groups.
//!
//! Entry ids handed to callers are `NN-<stream id>` (`NN` the partition, two
//! digits), so `ack` knows which stream each belongs to. Acknowledging
//! deletes the entry too (`XACK` + `XDEL`, atomically), so a stream holds
//! exactly the events not yet handled and its length is the backlog.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use kairos_domain::{Outbox, OutboxEntry, StoreError};
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};

use crate::codec::decode_event;
use crate::conn::RedisConnection;
use crate::keys::{Keys, PARTITIONS, PartitionKeys, sweep_over};
use crate::scripts::Scripts;

/// At most this many entries per call that reads (a script, or between
/// full sweeps a plain `XREADGROUP`) or acknowledges (and so within Lua's
/// `unpack` stack limit). Redis runs one call at a time and every
/// instance's commits wait behind it: a scripted read costs Redis about
/// 2.5 µs an entry and an acknowledgement about 1.1 µs (measured on the
/// bench machine, `docs/performance.md`), so a call of 200 holds it for
/// about half a millisecond; a plain `XREADGROUP` costs less. A larger
/// read or acknowledgement is made of several calls, one after the other,
/// so that the commits in between are served between them.
pub const CALL_ENTRIES: usize = 200;

/// Which of the store's streams an outbox drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// `{pNN}:outbox`, consumer group `audit`: the audit trail's.
    Audit,
    /// `{pNN}:hooks`, consumer group `webhooks`: the webhook fan-out's.
    Webhooks,
}

impl Feed {
    /// The consumer group that drains it.
    pub fn group(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Webhooks => "webhooks",
        }
    }

    /// Its stream in one partition.
    pub(crate) fn stream(self, keys: &PartitionKeys) -> &str {
        match self {
            Self::Audit => &keys.outbox,
            Self::Webhooks => &keys.hooks,
        }
    }
}

/// A reader visits every partition at least this often, for the entries
/// this process did not write: those of an instance that died before
/// reading them, and leased entries to take over. Between these full
/// sweeps it reads only the partitions this process wrote to.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(15);

// One bit per partition in [`Written`].
const _: () = assert!(PARTITIONS <= 64);

/// Which partitions of one feed this process wrote to since its reader
/// last looked (one bit each), and when the reader last visited them all.
///
/// The store marks a partition after each script call that may have
/// appended to the feed there (its reply received, so the entry is in the
/// stream); the reader takes the marks and reads only those partitions,
/// so a drained outbox costs no Redis call and a busy one a call per
/// partition written, not one per partition. Each instance drains what it
/// wrote; the full sweep every [`FULL_SWEEP_EVERY`] catches the rest.
#[derive(Debug)]
pub(crate) struct Written {
    bits: AtomicU64,
    last_full: Mutex<Option<Instant>>,
    /// [`FULL_SWEEP_EVERY`] unless set otherwise.
    full_sweep_every: Mutex<Duration>,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            bits: AtomicU64::new(0),
            last_full: Mutex::new(None),
            full_sweep_every: Mutex::new(FULL_SWEEP_EVERY),
        }
    }
}

impl Written {
    /// Every read sweeps every partition when `every` is zero.
    pub(crate) fn set_full_sweep_every(&self, every: Duration) {
        *self
            .full_sweep_every
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = every;
    }

    /// Partition `p` has (or may have) a new entry.
    pub(crate) fn mark(&self, p: usize) {
        self.bits.fetch_or(1 << (p % PARTITIONS), Ordering::AcqRel);
    }

    /// Takes the marks.
    fn take(&self) -> u64 {
        self.bits.swap(0, Ordering::AcqRel)
    }

    /// Puts marks back (their partitions may hold more).
    fn restore(&self, mask: u64) {
        self.bits.fetch_or(mask, Ordering::AcqRel);
    }

    /// Whether a full sweep is due at `now`; if so, it counts as done now.
    fn full_sweep_due(&self, now: Instant) -> bool {
        let every = *self
            .full_sweep_every
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut last = self
            .last_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| now.duration_since(at) >= every);
        if due {
            *last = Some(now);
        }
        due
    }

    /// The next read sweeps every partition (the last one left some behind,
    /// or failed).
    fn want_full_sweep(&self) {
        *self
            .last_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// An [`Outbox`] over one of the store's feeds. Cheap to build; shares the
/// store's connection.
pub struct RedisOutbox {
    conn: RedisConnection,
    keys: Keys,
    scripts: Arc<Scripts>,
    feed: Feed,
    /// Off when commits write nothing to this feed: reads return nothing.
    enabled: bool,
    /// Where the next read starts its sweep, so that no partition is always
    /// served last.
    read_rotation: AtomicUsize,
    /// The partitions this process wrote to, shared with the writer.
    written: Arc<Written>,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutbox")
            .field("feed", &self.feed)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Formats the id a caller sees.
fn entry_id(partition: usize, stream_id: &str) -> String {
    format!("{partition:02}-{stream_id}")
}

/// Splits a caller's id into (partition, stream id).
fn parse_entry_id(id: &str) -> Option<(usize, &str)> {
    let (p, stream_id) = id.split_once('-')?;
    let p: usize = p.parse().ok()?;
    (p < PARTITIONS && !stream_id.is_empty()).then_some((p, stream_id))
}

/// The milliseconds part of a stream id (`<ms>-<seq>`): when Redis added it.
fn stream_id_ms(stream_id: &str) -> Option<i64> {
    stream_id
        .split_once('-')
        .map_or(stream_id, |(ms, _)| ms)
        .parse()
        .ok()
}

impl RedisOutbox {
    pub(crate) fn new(
        conn: RedisConnection,
        keys: Keys,
        scripts: Arc<Scripts>,
        feed: Feed,
        enabled: bool,
        written: Arc<Written>,
    ) -> Self {
        Self {
            conn,
            keys,
            scripts,
            feed,
            enabled,
            read_rotation: AtomicUsize::new(0),
            written,
        }
    }

    /// Every read visits every partition at least once per `every` (5 s by
    /// default; zero: every read visits every partition).
    pub(crate) fn set_full_sweep_every(&self, every: Duration) {
        self.written.set_full_sweep_every(every);
    }

    /// Partition `p` has a new entry (see [`Written`]).
    pub(crate) fn mark_written(&self, p: usize) {
        if self.enabled {
            self.written.mark(p);
        }
    }

    /// Which feed it drains.
    pub fn feed(&self) -> Feed {
        self.feed
    }

    fn stream(&self, p: usize) -> &str {
        self.feed.stream(self.keys.partition(p))
    }

    /// Adds a read entry of partition `p` to `entries`, or its id to
    /// `poisoned` when it does not decode: an entry nobody can decode would
    /// otherwise come back on every reclaim forever and hold up the ones
    /// behind it, so the caller acknowledges (drops) those.
    fn take(
        &self,
        p: usize,
        stream_id: &str,
        payload: &[u8],
        entries: &mut Vec<OutboxEntry>,
        poisoned: &mut Vec<String>,
    ) {
        match decode_event(payload) {
            Ok(event) => entries.push(OutboxEntry {
                id: entry_id(p, stream_id),
                event,
            }),
            Err(e) => {
                tracing::error!(feed = self.feed.group(), partition = p, stream_id, error = %e, "dropping an undecodable outbox entry");
                poisoned.push(entry_id(p, stream_id));
            }
        }
    }

    /// Reads up to `quota` entries for `consumer` from `partitions`, in
    /// that order, in one script call (their keys must be on one node:
    /// one partition in Cluster), taking over entries other consumers left
    /// unacknowledged for `reclaim_after_ms` first when `reclaim`. Returns
    /// the entries and whether the quota was reached.
    async fn read_partitions(
        &self,
        partitions: &[usize],
        quota: usize,
        consumer: &str,
        reclaim_after_ms: i64,
        reclaim: bool,
    ) -> Result<(Vec<OutboxEntry>, bool), StoreError> {
        if partitions.is_empty() || quota == 0 {
            return Ok((Vec::new(), false));
        }
        let keys: Vec<&str> = partitions.iter().map(|&p| self.stream(p)).collect();
        let flat: Vec<Vec<u8>> = self
            .conn
            .eval(
                "outbox read",
                &self.scripts.read,
                &keys,
                &[
                    self.feed.group().as_bytes().to_vec(),
                    consumer.as_bytes().to_vec(),
                    reclaim_after_ms.max(0).to_string().into_bytes(),
                    quota.to_string().into_bytes(),
                    if reclaim {
                        b"1".to_vec()
                    } else {
                        b"0".to_vec()
                    },
                ],
            )
            .await?;
        let filled = flat.len() / 3 >= quota;
        let mut entries = Vec::with_capacity(flat.len() / 3);
        let mut poisoned = Vec::new();
        for triple in flat.chunks_exact(3) {
            let p = std::str::from_utf8(&triple[0])
                .ok()
                .and_then(|k| k.parse::<usize>().ok())
                .and_then(|k| partitions.get(k.checked_sub(1)?))
                .copied()
                .ok_or_else(|| StoreError::Other("an outbox read named no partition".into()))?;
            let stream_id = String::from_utf8_lossy(&triple[1]);
            self.take(p, &stream_id, &triple[2], &mut entries, &mut poisoned);
        }
        if !poisoned.is_empty() {
            self.ack(&poisoned).await?;
        }
        Ok((entries, filled))
    }

    /// Reads up to `quota` new entries for `consumer` from `partitions` with
    /// one plain `XREADGROUP` over their streams (keys on one node): the
    /// common read, with no lease to take over. Redis answers it without a
    /// script, about half the cost of [`Self::read_partitions`] an entry.
    /// `COUNT` is per stream, so each stream gives at most `quota / n` (the
    /// first `quota` streams one each when there are more streams than
    /// that) and the total stays within `quota`. Returns `None` when a
    /// stream has no consumer group yet (first use, or Redis restarted
    /// without persistence): the scripted read creates it. Otherwise a
    /// [`FreshRead`].
    async fn read_fresh(
        &self,
        partitions: &[usize],
        quota: usize,
        consumer: &str,
    ) -> Result<Option<FreshRead>, StoreError> {
        let skipped = partitions.len() > quota;
        let partitions = &partitions[..partitions.len().min(quota)];
        if partitions.is_empty() {
            return Ok(Some(FreshRead {
                entries: Vec::new(),
                more: skipped,
                drained: Vec::new(),
            }));
        }
        let per = quota / partitions.len();
        let keys: Vec<&str> = partitions.iter().map(|&p| self.stream(p)).collect();
        let options = StreamReadOptions::default()
            .group(self.feed.group(), consumer)
            .count(per);
        let ids = vec![">"; keys.len()];
        // `None`: a stream has no consumer group.
        let reply: Option<StreamReadReply> = self
            .conn
            .run("outbox read", |mut conn| {
                let (keys, ids, options) = (&keys, &ids, &options);
                async move {
                    match conn
                        .xread_options::<_, _, Option<StreamReadReply>>(keys, ids, options)
                        .await
                    {
                        // Nil: nothing new in any of them.
                        Ok(reply) => Ok(Some(reply.unwrap_or_default())),
                        Err(e) if e.code() == Some("NOGROUP") => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        let Some(reply) = reply else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        let mut full = Vec::new();
        let mut poisoned = Vec::new();
        for stream in reply.keys {
            let p = keys
                .iter()
                .position(|k| *k == stream.key)
                .and_then(|i| partitions.get(i))
                .copied()
                .ok_or_else(|| StoreError::Other("an outbox read named no partition".into()))?;
            if stream.ids.len() >= per {
                full.push(p);
            }
            for mut entry in stream.ids {
                // Without an `e` field (only a foreign writer could add
                // one) the entry decodes as nothing and is dropped.
                let payload = match entry.map.remove("e") {
                    Some(redis::Value::BulkString(bytes)) => bytes,
                    _ => Vec::new(),
                };
                self.take(p, &entry.id, &payload, &mut entries, &mut poisoned);
            }
        }
        if !poisoned.is_empty() {
            self.ack(&poisoned).await?;
        }
        // A stream that gave less than it was asked is drained; one that
        // gave all may hold more (a stream with nothing new is absent from
        // the reply, drained too).
        let drained = partitions
            .iter()
            .copied()
            .filter(|p| !full.contains(p))
            .collect();
        Ok(Some(FreshRead {
            entries,
            more: skipped || !full.is_empty(),
            drained,
        }))
    }

    /// The (length, oldest entry's ms) of each of `partitions`, in one
    /// script call (keys on one node).
    async fn backlog_partitions(
        &self,
        partitions: &[usize],
    ) -> Result<Vec<(u64, Option<i64>)>, StoreError> {
        let keys: Vec<&str> = partitions.iter().map(|&p| self.stream(p)).collect();
        let flat: Vec<redis::Value> = self
            .conn
            .eval("outbox backlog", &self.scripts.backlog, &keys, &[])
            .await?;
        flat.chunks_exact(2)
            .map(|pair| {
                let len: u64 = redis::from_redis_value(pair[0].clone())
                    .map_err(|_| StoreError::Other("an outbox backlog without a length".into()))?;
                let oldest: String = redis::from_redis_value(pair[1].clone())
                    .map_err(|_| StoreError::Other("an outbox backlog without an id".into()))?;
                Ok((len, stream_id_ms(&oldest)))
            })
            .collect()
    }

    /// The groups of partitions one script call may visit together: all of
    /// them in standalone and Sentinel (one server), one each in Cluster.
    fn call_groups(&self, partitions: Vec<usize>) -> Vec<Vec<usize>> {
        if self.conn.is_cluster() {
            partitions.into_iter().map(|p| vec![p]).collect()
        } else if partitions.is_empty() {
            Vec::new()
        } else {
            vec![partitions]
        }
    }
}

/// What one plain `XREADGROUP` ([`RedisOutbox::read_fresh`]) read.
#[derive(Debug)]
struct FreshRead {
    entries: Vec<OutboxEntry>,
    /// A stream may hold more: one gave all it was asked, or some were
    /// left out of the call (more streams than the quota).
    more: bool,
    /// The partitions the call found drained of new entries.
    drained: Vec<usize>,
}

#[async_trait]
impl Outbox for RedisOutbox {
    #[tracing::instrument(skip(self), fields(feed = self.feed.group()))]
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if !self.enabled || max == 0 {
            return Ok(Vec::new());
        }
        let start = self.read_rotation.fetch_add(1, Ordering::Relaxed) % PARTITIONS;
        let full = self.written.full_sweep_due(Instant::now());
        let marks = self.written.take();
        let order = (0..PARTITIONS)
            .map(|i| (start + i) % PARTITIONS)
            .filter(|&p| full || marks & (1 << p) != 0);
        // Leases are taken over at the full sweeps only: an entry can only
        // be left unacknowledged that long by a consumer that died (or
        // failed to write it), and the sweeps come at least as often as
        // the reclaim time asks (the server sets them to half of it).
        // A read that failed part way returns what it read, and the
        // partitions are looked at again (so are they after a first call
        // filled by taking leases over, below).
        let mut cut_short = false;
        let read = if self.conn.is_cluster() {
            sweep_over(order, max, |p, quota| async move {
                self.read_partitions(&[p], quota, consumer, reclaim_after_ms, full)
                    .await
            })
            .await
        } else {
            // One server: each call visits them all, in the rotated order,
            // and takes at most `CALL_ENTRIES`; the next call starts when
            // this one has answered. Between full sweeps a call is a plain
            // `XREADGROUP` over the partitions not yet found drained (the
            // script only creates a missing group). At a full sweep each
            // call is the script, and takes leases over first, until one
            // hands back an entry this read already has: a lease it took
            // itself, idle for longer than the reclaim time (zero, say).
            // Then the read stops taking over, and the next read is a full
            // sweep again.
            let mut order: Vec<usize> = order.collect();
            let mut entries: Vec<OutboxEntry> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            let mut reclaim = full;
            loop {
                let quota = (max - entries.len()).min(CALL_ENTRIES);
                // No lease to take over: a plain `XREADGROUP`, unless a
                // stream has no group yet (the script creates it).
                let fresh = if reclaim {
                    Ok(None)
                } else {
                    self.read_fresh(&order, quota, consumer).await
                };
                let call = match fresh {
                    Ok(Some(read)) => {
                        // The next call skips what this one drained.
                        order.retain(|p| !read.drained.contains(p));
                        Ok((read.entries, read.more && !order.is_empty()))
                    }
                    Ok(None) => {
                        self.read_partitions(&order, quota, consumer, reclaim_after_ms, reclaim)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match call {
                    Ok((batch, filled)) => {
                        // Only a call that took leases over can hand back
                        // an entry twice (a fresh read never does), so only
                        // its entries are remembered and checked.
                        let took_over = reclaim;
                        for entry in batch {
                            if took_over && !seen.insert(entry.id.clone()) {
                                reclaim = false;
                                cut_short = true;
                            } else {
                                entries.push(entry);
                            }
                        }
                        if !filled || entries.len() >= max {
                            break Ok(entries);
                        }
                    }
                    // What was read stays leased to this consumer and is
                    // taken over after the reclaim time, like a batch whose
                    // write failed.
                    Err(e) if entries.is_empty() => break Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, read = entries.len(), "an outbox read failed part way; returning what it read");
                        cut_short = true;
                        break Ok(entries);
                    }
                }
            }
        };
        match &read {
            // A full batch may have left entries behind: look again there.
            Ok(entries) if entries.len() < max && !cut_short => {}
            _ => {
                self.written.restore(marks);
                if full {
                    self.written.want_full_sweep();
                }
            }
        }
        read
    }

    #[tracing::instrument(skip(self, ids), fields(feed = self.feed.group(), count = ids.len()))]
    async fn ack(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut by_partition: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for id in ids {
            match parse_entry_id(id) {
                Some((p, stream_id)) => by_partition
                    .entry(p)
                    .or_default()
                    .push(stream_id.as_bytes().to_vec()),
                None => {
                    return Err(StoreError::Other(format!("not an outbox entry id: {id:?}")));
                }
            }
        }
        // One call per group of partitions on one node, at most
        // `CALL_ENTRIES` ids each: its keys, and for each the count of its ids
        // then the ids (after the group name, added below).
        let mut calls: Vec<(Vec<usize>, Vec<Vec<u8>>)> = Vec::new();
        for group in self.call_groups(by_partition.keys().copied().collect()) {
            let (mut keys, mut ids, mut counted) = (Vec::new(), Vec::new(), 0);
            for p in group {
                for chunk in by_partition[&p].chunks(CALL_ENTRIES) {
                    if counted + chunk.len() > CALL_ENTRIES && !keys.is_empty() {
                        calls.push((std::mem::take(&mut keys), std::mem::take(&mut ids)));
                        counted = 0;
                    }
                    keys.push(p);
                    ids.push(chunk.len().to_string().into_bytes());
                    ids.extend(chunk.iter().cloned());
                    counted += chunk.len();
                }
            }
            if !keys.is_empty() {
                calls.push((keys, ids));
            }
        }
        // One after the other (see `CALL_ENTRIES`).
        for (partitions, ids) in calls {
            let keys: Vec<&str> = partitions.iter().map(|&p| self.stream(p)).collect();
            let mut args = Vec::with_capacity(ids.len() + 1);
            args.push(self.feed.group().as_bytes().to_vec());
            args.extend(ids);
            self.conn
                .eval::<i64>("outbox ack", &self.scripts.ack, &keys, &args)
                .await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip(self), fields(feed = self.feed.group()))]
    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        if !self.enabled {
            return Ok((0, 0));
        }
        let groups = self.call_groups((0..PARTITIONS).collect());
        let parts: Vec<(u64, Option<i64>)> =
            try_join_all(groups.iter().map(|g| self.backlog_partitions(g)))
                .await?
                .into_iter()
                .flatten()
                .collect();
        let count = parts.iter().map(|(len, _)| len).sum();
        let oldest = parts.iter().filter_map(|(_, ms)| *ms).min();
        let age = oldest.map_or(0, |ms| now_ms.saturating_sub(ms).max(0));
        Ok((count, age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_carry_their_partition() {
        let id = entry_id(7, "1700000000000-3");
        assert_eq!(id, "07-1700000000000-3");
        assert_eq!(parse_entry_id(&id), Some((7, "1700000000000-3")));
        assert_eq!(parse_entry_id("64-1-0"), None);
        assert_eq!(parse_entry_id("x-1-0"), None);
        assert_eq!(parse_entry_id("07-"), None);
        assert_eq!(stream_id_ms("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(stream_id_ms(""), None);
    }

    #[test]
    fn each_feed_has_its_stream_and_group() {
        let keys = Keys::new("kairos:");
        let p = keys.partition(3);
        assert_eq!(Feed::Audit.stream(p), "kairos:{p03}:outbox");
        assert_eq!(Feed::Audit.group(), "audit");
        assert_eq!(Feed::Webhooks.stream(p), "kairos:{p03}:hooks");
        assert_eq!(Feed::Webhooks.group(), "webhooks");
    }
}
