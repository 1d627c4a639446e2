//! The event bus between SyncKairos instances on Redis Pub/Sub: every commit
//! made on any instance reaches the WebSocket subscribers of its session on
//! every instance.
//!
//! # Design
//!
//! - **One channel per session**, `<prefix>:{<session id>}:bus`. Standalone
//!   and Sentinel use `PUBLISH`/`SUBSCRIBE`; Cluster uses sharded
//!   `SPUBLISH`/`SSUBSCRIBE`, so a message travels only to the shard owning
//!   the channel's slot (the braces make the session id its hash tag; the
//!   store's keys are tagged by partition, `{pNN}`, so that slot is usually
//!   another).
//! - **Traffic only for watched sessions.** An instance subscribes a session
//!   in Redis when it gets its first local subscription and unsubscribes
//!   when the last one is dropped.
//! - **The bus routes; it does not fan out.** A received message is decoded
//!   once and pushed, in order, onto the bounded queue of each local
//!   subscription of its session; there is no per-session buffer. Fan-out to
//!   many readers belongs to the caller, who holds one subscription per
//!   session per instance as the [`EventBus`](kairos_domain::EventBus)
//!   contract asks (the server's hub serializes each message once for all
//!   of a session's WebSockets). A subscription whose queue is full loses
//!   its oldest message (counted in [`BusStats`]) and gets
//!   [`BusMessage::Lagged`](kairos_domain::BusMessage::Lagged) next, without
//!   holding back the others. An idle subscription costs a few words and a
//!   queue with no buffer.
//! - **One subscriber connection, one owner.** A background task owns the
//!   Pub/Sub connection, receives messages, applies subscription changes sent
//!   to it over a channel, and pings the connection when idle. When the
//!   connection is lost it reconnects with exponential backoff, subscribes
//!   every watched session again, then sends `Lagged` to every local
//!   subscription (the WebSocket layer resynchronises its sockets from the
//!   store).
//!   `is_healthy()` (of [`EventBus`](kairos_domain::EventBus)) is false from
//!   the loss until that is done.
//! - **Updates are published by the commit that makes them** when there is
//!   one server (standalone, Sentinel): the service asks the bus to encode
//!   each version a commit makes ([`EventBus::encode_update`](kairos_domain::EventBus::encode_update))
//!   and the store's commit script `PUBLISH`es the bytes in the same atomic
//!   step, so subscribers learn of every committed version even when the
//!   committing instance dies right after, and a switch sends Redis one
//!   command. On Cluster, and for creations, deletions and presence events,
//!   the bus publishes itself (next item). The two paths are not ordered
//!   with each other: a creation's message may arrive after the session's
//!   first update, as messages of two instances could always arrive in
//!   either order; subscribers and the service's cache keep the newest
//!   version they have seen.
//! - **Publishing never waits on Redis.** `publish` encodes the message
//!   (MessagePack with field names: the state with its version, the events,
//!   the instant) and pushes it on a bounded queue; a publisher task sends
//!   what is queued in pipelines on a multiplexed connection, in order. A full queue or a Redis
//!   error drops the message, with a warning and a counter ([`BusStats`]):
//!   clients notice the version gap and resync.
//! - **No detached task.** [`RedisBus::connect`] takes a shutdown signal and
//!   returns [`RedisBusTasks`] to join.
//!
//! ```no_run
//! # async fn run() -> Result<(), bus_redis::ConnectError> {
//! use bus_redis::{RedisBus, RedisBusConfig};
//!
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let (bus, tasks) =
//!     RedisBus::connect(RedisBusConfig::standalone("redis://127.0.0.1:6379/"), shutdown).await?;
//! // ... hand `bus` to the service as its `EventBus` ...
//! let _ = stop.send(true);
//! tasks.join().await;
//! # drop(bus);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`config`]: [`RedisBusConfig`]: the `RedisTarget` (URL, mode, TLS roots;
//!   from the `redis-conn` crate, shared with `store-redis`) and the bus's own
//!   queue sizes and timings.
//! - `bus`: [`RedisBus`], the `EventBus` implementation, and [`RedisBusTasks`].
//! - `local`: the routing table from each watched session to its subscriptions' queues.
//! - `queue`: one subscription's bounded queue (drop oldest, then `Lagged`).
//! - `subscriber`: the task owning the Pub/Sub connection.
//! - `publisher`: the task sending queued messages in pipelines.
//! - `wire`: channel names and the message encoding shared by all instances.
//! - `connect`: where Redis is now (follows Sentinel failovers), through the
//!   target's clients.
//! - `stats`: [`BusStats`], the counters behind the metrics.
//! - `shutdown`: how the tasks wait for the shutdown signal.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bus;
pub mod config;
mod connect;
mod local;
mod publisher;
mod queue;
mod shutdown;
mod stats;
mod subscriber;
mod wire;

pub use bus::{ConnectError, RedisBus, RedisBusTasks};
pub use config::{DEFAULT_COMMAND_TIMEOUT, RedisBusConfig};
pub use redis_conn::{RedisMode, RedisTarget};
pub use stats::BusStats;
