//! # store-redis
//!
//! SyncKairos's primary store on Redis: the [`kairos_domain::SessionStore`]
//! (state, deadline index) and [`kairos_domain::Outbox`] ports in
//! [`RedisStore`], the [`kairos_domain::WebhookStore`] in
//! [`RedisWebhookStore`], and the deployment-wide clock in [`RedisClock`]. With
//! `bus-redis` and `redis-conn` (where Redis is, shared by the two), this is
//! one of the only crates that know Redis.
//!
//! What it guarantees, on standalone, Sentinel and Cluster alike:
//!
//! - One state change is one atomic round trip: a Lua script on one
//!   partition compares the version, counts the session's switch limit
//!   when asked, writes the state (renewing its TTL), moves its deadline
//!   and appends its events to the outbox (and, with the webhook feed on,
//!   to the webhook stream), or does nothing at all (and returns the stored
//!   state on a version mismatch, so a stale caller needs no load).
//! - Keys are spread over [`PARTITIONS`] hash-tagged partitions ([`keys`]),
//!   so a cluster spreads the load and no script crosses a slot.
//! - Every call is bounded by [`RedisConfig::command_timeout`]; an
//!   unreachable Redis is `StoreError::Unavailable` (a 503) within it, and
//!   the same store works again once Redis is back, without a restart.
//! - "Now" is Redis `TIME`, tracked as an offset from the local monotonic
//!   clock; the host's wall clock is never read.
//!
//! # Layout
//!
//! - [`config`]: [`RedisConfig`]: the [`RedisTarget`] (URL, [`RedisMode`],
//!   TLS roots; from the `redis-conn` crate, shared with `bus-redis`) and
//!   what the store adds (timeout, TTL, outbox, key prefix).
//! - [`conn`]: [`RedisConnection`], one handle over the three modes, the
//!   time limit on every call and the mapping of Redis errors.
//! - [`keys`]: the partitioned key layout.
//! - `scripts`: the Lua scripts, one per atomic operation, and the GCRA
//!   step they share with the limiter.
//! - [`codec`]: the encodings of sessions (MessagePack, JSON) and events (JSON).
//! - [`store`]: [`RedisStore`] as a `SessionStore`, with deadline claims.
//! - [`outbox`]: [`RedisOutbox`], an `Outbox` over Redis Streams: the audit
//!   outbox (which [`RedisStore`] is) and the webhook feed
//!   ([`RedisStore::webhook_outbox`]).
//! - [`webhooks`]: [`RedisWebhookStore`], webhook endpoints, the delivery
//!   queue with leased claims, and the bounded delivery log.
//! - [`clock`]: [`RedisClock`], the shared clock.
//! - [`ratelimit`]: [`RedisRateLimiter`], GCRA shared by all instances.
//! - [`places`]: [`RedisPlaceRegistry`], the per-user WebSocket cap shared
//!   by all instances.
//! - [`presence`]: [`RedisPresence`], who is connected to which session
//!   (leased entries, pending leaves, absences), shared by all instances.
//!
//! # Wiring
//!
//! ```no_run
//! # async fn wire() -> Result<(), kairos_domain::StoreError> {
//! use std::{sync::Arc, time::Duration};
//! use store_redis::{RedisClock, RedisConfig, RedisStore};
//!
//! let config = RedisConfig::new("redis://127.0.0.1:6379/");
//! let store = Arc::new(RedisStore::connect(&config).await?);
//! let (_stop, stopped) = tokio::sync::watch::channel(false);
//! let (clock, clock_task) =
//!     RedisClock::connect(store.connection(), Duration::from_secs(5), stopped).await?;
//! # let _ = (clock, clock_task);
//! # Ok(()) }
//! ```
//!
//! # State encoding
//!
//! Sessions are stored as MessagePack with field names ([`StateCodec`]);
//! JSON values written by an older build still decode. Measured by
//! `cargo bench -p store-redis --bench encoding` (release build, the
//! project's shared 2-core machine, three runs), encode + decode of one
//! running per-participant session:
//!
//! | participants | JSON | MessagePack | size JSON / MessagePack |
//! | --- | --- | --- | --- |
//! | 2 | 3.6 - 7.0 µs | 3.1 - 5.6 µs | 888 / 668 bytes |
//! | 1000 | 730 - 790 µs | 425 - 640 µs | 125.5 / 94.1 KB |
//!
//! MessagePack was faster in every run, by 15-25 % for small sessions and up
//! to 45 % for large ones, and 25 % smaller on the wire and in memory.
//! (`postcard` and `bincode` cannot decode the free-form `metadata` maps,
//! which need a self-describing format.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod codec;
pub mod config;
pub mod conn;
pub mod keys;
pub mod outbox;
pub mod places;
pub mod presence;
pub mod ratelimit;
mod scripts;
pub mod store;
pub mod webhooks;

pub use clock::RedisClock;
pub use codec::StateCodec;
pub use config::{DEFAULT_COMMAND_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_SESSION_TTL, RedisConfig};
// Where Redis is, shared with the bus (the crate `redis-conn`).
pub use conn::RedisConnection;
pub use keys::{PARTITIONS, partition_of};
pub use outbox::{Feed, RedisOutbox};
pub use places::RedisPlaceRegistry;
pub use presence::RedisPresence;
pub use ratelimit::RedisRateLimiter;
pub use redis_conn::{ConfigError, RedisMode, RedisTarget, redact_url, split_urls};
pub use store::RedisStore;
pub use webhooks::{DELIVERY_LOG_LEN, RedisWebhookStore};
