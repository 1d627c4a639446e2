//! # redis-conn
//!
//! Where SyncKairos finds Redis and how it opens connections there, written
//! once for the two crates that talk to Redis: `store-redis` (state, clock,
//! limits) and `bus-redis` (Pub/Sub between instances). Both are handed the
//! same [`RedisTarget`] by the server, so a URL, a mode, a private CA or an
//! `#insecure` flag means the same thing to each, and a connection is built
//! the same way (TLS roots, connect and response timeouts) whichever of the
//! two asks.
//!
//! What stays with each adapter: what it does over the connection, its own
//! time budget per call, and its key or channel layout.
//!
//! # Layout
//!
//! - [`mode`]: [`RedisMode`] (standalone, Sentinel, Cluster), parsed from
//!   the strings a deployment sets, and [`ConfigError`].
//! - [`target`]: [`RedisTarget`], the URL, the mode and the TLS roots, and
//!   the clients it builds ([`RedisTarget::client`],
//!   [`RedisTarget::sentinel_client`], [`RedisTarget::cluster_builder`]).
//! - [`url`]: [`redact_url`] for logs and [`split_urls`] for URL lists.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod mode;
pub mod target;
pub mod url;

pub use mode::{ConfigError, RedisMode, check_key_prefix};
pub use target::{RedisTarget, SENTINEL_PRIMARY_URL, read_ca_file};
pub use url::{redact_url, split_urls};
