//! # webhook-http
//!
//! The webhook sender of SyncKairos (contract section 9): an adapter that
//! turns one queued delivery into one signed HTTP POST and its outcome. The
//! workers that decide what to send and when (fan-out, retry schedule,
//! disabling) live in the server and the domain (`kairos_domain::webhook`);
//! this crate knows HTTP, TLS, DNS and HMAC, and nothing of the stores.
//!
//! # Layout
//!
//! - [`guard`]: the SSRF guard: [`UrlPolicy`], the address classes refused,
//!   [`check_url`] for a URL about to be stored (scheme, host resolved,
//!   every address public).
//! - [`sign`]: the Standard Webhooks signature of one attempt.
//! - [`sender`]: [`Sender`], attempts over a bounded pool of kept-alive
//!   HTTP/1.1 connections per origin (hyper-util, rustls on ring); 10 s for
//!   everything, no redirects, no proxy; the answer mapped to
//!   [`kairos_domain::webhook::AttemptOutcome`] (2xx, 410, `Retry-After`).
//! - [`connect`]: the pool's connector: every new connection goes to an
//!   address the guard allows, resolved when it is opened (DNS rebinding
//!   reaches nothing).

pub mod connect;
pub mod guard;
pub mod sender;
pub mod sign;

pub use guard::{UrlError, UrlPolicy, check_url};
pub use sender::{BuildError, IDLE_TIMEOUT, MAX_IDLE_PER_ORIGIN, Message, SEND_TIMEOUT, Sender};
