//! In-process adapters: everything the service needs to run as one instance
//! with nothing installed (the embedded default), and the fast test double of
//! the same ports the Redis and PostgreSQL adapters implement.
//!
//! # Layout
//!
//! - [`store`]: [`MemoryStore`], a `SessionStore` and `Outbox` with TTLs and a deadline
//!   index, and its webhook feed [`MemoryOutbox`].
//! - [`webhooks`]: [`MemoryWebhookStore`], a `WebhookStore`: endpoints, the leased
//!   delivery queue, the bounded delivery log.
//! - [`bus`]: [`MemoryBus`], an `EventBus` that routes each message to a bounded queue per subscription.
//! - [`audit`]: [`MemoryAudit`], an `AuditSink` that keeps recent events per session.
//! - [`presence`]: [`MemoryPresence`], a `PresenceRegistry` with leased entries.
//! - [`ratelimit`]: [`MemoryRateLimiter`], GCRA state for one instance.
//! - [`clock`]: [`SystemClock`], the host clock, never going backwards.

#![forbid(unsafe_code)]

pub mod audit;
pub mod bus;
pub mod clock;
pub mod presence;
pub mod ratelimit;
pub mod store;
pub mod webhooks;

pub use audit::MemoryAudit;
pub use bus::MemoryBus;
pub use clock::SystemClock;
pub use presence::MemoryPresence;
pub use ratelimit::MemoryRateLimiter;
pub use store::{MemoryOutbox, MemoryStore};
pub use webhooks::MemoryWebhookStore;
