//! The [`Outbox`] of [`RedisStore`]: one Redis stream per partition, drained
//! through the consumer group `audit`.
//!
//! Entry ids handed to callers are `NN-<stream id>` (`NN` the partition, two
//! digits), so `ack` knows which stream each belongs to. Acknowledging
//! deletes the entry too (`XACK` + `XDEL`, atomically), so a stream holds
//! exactly the events not yet written to the audit store and its length is
//! the backlog.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use kairos_domain::{Outbox, OutboxEntry, StoreError};

use crate::codec::decode_event;
use crate::keys::PARTITIONS;
use crate::store::{GROUP, RedisStore};

/// At most this many ids per `ACK` script call (Lua's `unpack` has a stack limit).
const ACK_CHUNK: usize = 1000;

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

impl RedisStore {
    /// Reads up to `quota` entries of partition `p` for `consumer`.
    async fn read_partition(
        &self,
        p: usize,
        quota: usize,
        consumer: &str,
        reclaim_after_ms: i64,
    ) -> Result<(Vec<OutboxEntry>, bool), StoreError> {
        let keys = self.keys.partition(p);
        let flat: Vec<Vec<u8>> = self
            .eval(
                "outbox read",
                &self.scripts.read,
                &[&keys.outbox],
                &[
                    GROUP.as_bytes().to_vec(),
                    consumer.as_bytes().to_vec(),
                    reclaim_after_ms.max(0).to_string().into_bytes(),
                    quota.to_string().into_bytes(),
                ],
            )
            .await?;
        let filled = flat.len() / 2 >= quota;
        let mut entries = Vec::with_capacity(flat.len() / 2);
        let mut poisoned = Vec::new();
        for pair in flat.chunks_exact(2) {
            let stream_id = String::from_utf8_lossy(&pair[0]).into_owned();
            match decode_event(&pair[1]) {
                Ok(event) => entries.push(OutboxEntry {
                    id: entry_id(p, &stream_id),
                    event,
                }),
                Err(e) => {
                    // An entry nobody can decode would otherwise come back on
                    // every reclaim forever and hold up the ones behind it.
                    tracing::error!(partition = p, stream_id, error = %e, "dropping an undecodable outbox entry");
                    poisoned.push(entry_id(p, &stream_id));
                }
            }
        }
        if !poisoned.is_empty() {
            self.ack(&poisoned).await?;
        }
        Ok((entries, filled))
    }

    /// One partition's (length, oldest entry's ms).
    async fn backlog_partition(&self, p: usize) -> Result<(u64, Option<i64>), StoreError> {
        let keys = self.keys.partition(p);
        let (len, oldest): (u64, String) = self
            .eval(
                "outbox backlog",
                &self.scripts.backlog,
                &[&keys.outbox],
                &[],
            )
            .await?;
        Ok((len, stream_id_ms(&oldest)))
    }
}

#[async_trait]
impl Outbox for RedisStore {
    #[tracing::instrument(skip(self))]
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after_ms: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if !self.outbox_enabled || max == 0 {
            return Ok(Vec::new());
        }
        let start = self.read_rotation.fetch_add(1, Ordering::Relaxed) % PARTITIONS;
        Self::sweep(start, max, |p, quota| {
            self.read_partition(p, quota, consumer, reclaim_after_ms)
        })
        .await
    }

    #[tracing::instrument(skip(self, ids), fields(count = ids.len()))]
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
        let calls = by_partition.iter().flat_map(|(&p, stream_ids)| {
            stream_ids.chunks(ACK_CHUNK).map(move |chunk| {
                let mut args = Vec::with_capacity(chunk.len() + 1);
                args.push(GROUP.as_bytes().to_vec());
                args.extend(chunk.iter().cloned());
                async move {
                    let outbox = &self.keys.partition(p).outbox;
                    self.eval::<i64>("outbox ack", &self.scripts.ack, &[outbox], &args)
                        .await
                }
            })
        });
        try_join_all(calls).await.map(|_| ())
    }

    #[tracing::instrument(skip(self))]
    async fn backlog(&self, now_ms: i64) -> Result<(u64, i64), StoreError> {
        if !self.outbox_enabled {
            return Ok((0, 0));
        }
        let parts = try_join_all((0..PARTITIONS).map(|p| self.backlog_partition(p))).await?;
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
}
