//! A Rust client for SyncKairos: typed REST calls, a WebSocket subscription
//! that keeps a session in version order and measures the clock offset (as
//! the browser SDK does), and a verifier of webhook signatures.
//!
//! It speaks the wire contract (`docs/protocol.md`) and nothing else: its
//! wire types are its own, so it depends on none of the server's crates and
//! works against any SyncKairos server, local or remote.
//!
//! ```no_run
//! use kairos_client::{Client, SessionConfig, SyncMode, Update};
//!
//! # async fn game() -> Result<(), kairos_client::Error> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let config = SessionConfig::new(SyncMode::PerParticipant)
//!     .participant("white", 300_000)
//!     .participant("black", 300_000)
//!     .increment_ms(2_000);
//! let view = client.create(&config).await?;
//! let id = view.session_id;
//!
//! // Watch it: views arrive in version order, the offset is measured.
//! let mut live = client.subscribe(id)?;
//! client.start(id, Some(view.version)).await?;
//! while let Some(update) = live.next().await {
//!     if let Update::State(view) = update {
//!         let white = live.time_remaining_ms("white", live.now_local_ms());
//!         println!("version {}: white has {white:?} ms", view.version);
//!         if view.version >= 4 {
//!             break;
//!         }
//!         // Press the clock over the socket; two presses of the same
//!         // version give one switch and one CONFLICT.
//!         live.switch(None, Some(view.version)).await?;
//!     }
//! }
//! client.delete(id).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors the server answers are [`Error::Api`] with the contract's
//! [`ErrorCode`], message, details, HTTP status and `Retry-After`.
//!
//! # Layout
//!
//! - [`types`]: the wire types: session config (with a builder), session
//!   view, events, server time; tolerant of fields they do not know.
//! - [`error`]: [`Error`], [`ApiError`] and [`ErrorCode`].
//! - [`rest`]: [`Client`], one method per REST endpoint.
//! - [`subscription`]: [`Subscription`], the WebSocket side: version order,
//!   reconnection with backoff and resync, socket commands.
//! - [`offset`]: the clock-offset estimator and the monotonic local clock.
//! - [`display`]: the clocks of a view at any server instant (calculate,
//!   don't count).
//! - [`webhook`]: [`WebhookVerifier`], Standard
//!   Webhooks signatures.
//! - [`backend`]: the wire types of the app's backend and the people in a
//!   session (contract section 9): webhook endpoints, deliveries, presence,
//!   and the body of `add_time`.

#![warn(missing_docs)]

pub mod backend;
pub mod display;
pub mod error;
pub mod offset;
pub mod rest;
pub mod subscription;
pub mod types;
pub mod webhook;

pub use backend::{AddTime, Delivery, NewWebhook, Presence, PresenceUser, Webhook};
pub use error::{ApiError, Error, ErrorCode, FieldError};
pub use offset::OffsetEstimate;
pub use rest::{Client, ClientBuilder, POOL_IDLE_TIMEOUT};
pub use subscription::{Backoff, ConnectionState, SubscribeOptions, Subscription, Update};
pub use types::{
    ActionOnTimeout, Event, EventsQuery, GroupConfig, GroupView, ParticipantConfig,
    ParticipantView, ServerTime, SessionConfig, SessionView, Status, SyncMode,
};
pub use webhook::{WebhookError, WebhookVerifier};
