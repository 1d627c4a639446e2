//! The publisher task: takes encoded messages from a bounded queue and sends
//! them to Redis in pipelines, so that `publish` costs the request path one
//! serialisation and one queue push, never a Redis round trip.
//!
//! One task, one FIFO queue and one connection keep this instance's messages
//! in the order they were published. A batch that fails is sent once more
//! (the failure is usually the first command on a connection Redis dropped,
//! and the retry goes out on the reconnected one before anything newer, so
//! order holds; a duplicate is skipped by version). A batch that fails again
//! is counted and dropped; a client that misses a version recovers it from
//! the store on the next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisResult};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};

use crate::connect::{Connector, Target};
use crate::shutdown::signalled;
use crate::stats::Counters;

/// One message ready for the wire.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) channel: String,
    pub(crate) payload: Vec<u8>,
}

/// The multiplexed connection messages are published on.
pub(crate) enum PubConn {
    /// Standalone or Sentinel. `ConnectionManager` reconnects by itself after
    /// an I/O error; `address` tells whether a Sentinel failover moved the primary.
    Primary {
        manager: ConnectionManager,
        address: String,
    },
    /// Cluster: redis-rs routes each `SPUBLISH` to the shard owning the channel.
    Cluster(ClusterConnection),
}

/// Opens a connection manager to `client` that fails fast: a publish that
/// waits seconds for a reconnect only holds up the messages queued behind it.
async fn manager_for(client: Client, timing: Duration) -> RedisResult<PubConn> {
    let address = client.get_connection_info().addr().to_string();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timing))
        .set_response_timeout(Some(timing))
        .set_number_of_retries(1)
        .set_max_delay(timing);
    let manager = ConnectionManager::new_with_config(client, config).await?;
    Ok(PubConn::Primary { manager, address })
}

impl PubConn {
    /// Connects to wherever the connector says Redis is.
    pub(crate) async fn open(
        connector: &Connector,
        command_timeout: Duration,
    ) -> RedisResult<Self> {
        match connector.target(None, command_timeout).await? {
            Target::Primary(client) => manager_for(*client, command_timeout).await,
            Target::Cluster(client) => Ok(Self::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// The publisher task's state.
pub(crate) struct Publisher {
    pub(crate) conn: PubConn,
    pub(crate) connector: Arc<Connector>,
    pub(crate) queue: mpsc::Receiver<Outgoing>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) batch: usize,
    pub(crate) command_timeout: Duration,
    /// Whether the last batch failed, so that an outage logs one warning and
    /// one recovery line instead of one warning per batch.
    pub(crate) failing: bool,
}

impl Publisher {
    /// Publishes until shutdown (or until every bus handle is dropped), then
    /// flushes what is already queued, bounded by one command timeout.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(self.batch);
        loop {
            tokio::select! {
                biased;
                () = signalled(&mut shutdown) => break,
                received = self.queue.recv_many(&mut batch, self.batch) => {
                    if received == 0 {
                        return;
                    }
                    self.send(&mut batch).await;
                }
            }
        }
        // The last commits of a draining instance should still reach the
        // other instances; after the deadline the rest is counted as dropped.
        self.queue.close();
        let deadline = Instant::now() + self.command_timeout;
        while self.queue.recv_many(&mut batch, self.batch).await > 0 {
            if Instant::now() >= deadline {
                Counters::add(&self.counters.publish_dropped, batch.len() as u64);
                batch.clear();
                continue;
            }
            self.send(&mut batch).await;
        }
    }

    /// Sends one batch and empties it, counting the outcome.
    async fn send(&mut self, batch: &mut Vec<Outgoing>) {
        let count = batch.len() as u64;
        let sharded = matches!(self.conn, PubConn::Cluster(_));
        let mut result = timeout(self.command_timeout, send_batch(&mut self.conn, batch)).await;
        if !matches!(result, Ok((_, None))) {
            // The first command on a connection Redis dropped (a restart, a
            // failover) fails and makes the manager reconnect; the batch is
            // sent once more on the fresh connection. Resending what may have
            // gone out already is harmless: subscribers skip versions they
            // have, and nothing newer was sent in between, so order holds.
            result = timeout(self.command_timeout, send_batch(&mut self.conn, batch)).await;
        }
        batch.clear();
        let (sent, error) = match result {
            Ok((sent, None)) => (sent, None),
            Ok((sent, Some(e))) => (sent, Some(e.to_string())),
            Err(_) => (0, Some("timed out".to_owned())),
        };
        Counters::add(&self.counters.published, sent);
        let Some(error) = error else {
            if self.failing {
                self.failing = false;
                tracing::info!("publishing to Redis recovered");
            }
            return;
        };
        let lost = count.saturating_sub(sent);
        let total = Counters::add(&self.counters.publish_failed, lost);
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                %error, lost, total_failed = total, sharded,
                "publishing to Redis failed; messages dropped (clients resync by version), \
                 further failures are counted until it recovers"
            );
        }
        self.follow_failover().await;
    }

    /// After a failure on Sentinel, asks for the primary again and moves there
    /// if it changed: `ConnectionManager` would otherwise keep reconnecting
    /// to the demoted node, where a `PUBLISH` reaches nobody.
    async fn follow_failover(&mut self) {
        let PubConn::Primary { address, .. } = &self.conn else {
            return;
        };
        if !matches!(*self.connector, Connector::Sentinel(_)) {
            return;
        }
        let resolved = timeout(
            self.command_timeout,
            self.connector.target(None, self.command_timeout),
        )
        .await;
        let Ok(Ok(Target::Primary(client))) = resolved else {
            return;
        };
        if client.get_connection_info().addr().to_string() == *address {
            return;
        }
        match timeout(
            self.command_timeout,
            manager_for(*client, self.command_timeout),
        )
        .await
        {
            Ok(Ok(conn)) => {
                tracing::info!("publisher moved to the new primary named by Sentinel");
                self.conn = conn;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "new primary not reachable yet"),
            Err(_) => tracing::debug!("new primary not reachable yet: timed out"),
        }
    }
}

/// Sends a batch; returns how many messages Redis accepted and the error, if any.
async fn send_batch(conn: &mut PubConn, batch: &[Outgoing]) -> (u64, Option<redis::RedisError>) {
    match conn {
        PubConn::Primary { manager, .. } => {
            let mut pipe = redis::pipe();
            for message in batch {
                pipe.cmd("PUBLISH")
                    .arg(&message.channel)
                    .arg(&message.payload)
                    .ignore();
            }
            match pipe.query_async::<()>(manager).await {
                Ok(()) => (batch.len() as u64, None),
                Err(e) => (0, Some(e)),
            }
        }
        PubConn::Cluster(cluster) => {
            // A pipeline goes to one shard, so the batch is split by channel:
            // each session's messages stay in order inside their pipeline,
            // and sessions, which nobody orders against each other, go in parallel.
            let mut by_channel: HashMap<&str, redis::Pipeline> = HashMap::new();
            for message in batch {
                by_channel
                    .entry(message.channel.as_str())
                    .or_insert_with(redis::pipe)
                    .cmd("SPUBLISH")
                    .arg(&message.channel)
                    .arg(&message.payload)
                    .ignore();
            }
            let sends = by_channel.into_values().map(|pipe| {
                let mut cluster = cluster.clone();
                async move {
                    let size = pipe.len() as u64;
                    (size, pipe.query_async::<()>(&mut cluster).await)
                }
            });
            let mut sent = 0;
            let mut error = None;
            for (size, result) in join_all(sends).await {
                match result {
                    Ok(()) => sent += size,
                    Err(e) => error = Some(e),
                }
            }
            (sent, error)
        }
    }
}
