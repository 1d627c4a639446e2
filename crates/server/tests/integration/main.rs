//! The server's integration suite as one test binary, so the server is
//! linked once: each module is the suite of one concern (the REST contract,
//! the WebSocket contract, authentication, limits, the audit trail, several
//! instances, nginx in front, the demo page, the time controls' deadlines
//! on three instances through a kill, the Redis commands one switch costs,
//! participants joining and leaving, the admin view's endpoints, webhooks to
//! a receiver inside the test, presence and the auto-pause on three
//! instances through a kill), and `common` is the shared harness they all
//! use.
//!
//! `cargo xtask test` runs it whole on the embedded adapters, then runs the
//! service-level modules (`api`, `ws`, `limits`, `auth`, `ws_security`,
//! `web`, `participants`, `admin`) once more with `KAIROS_TEST_ADAPTERS=redis` (see
//! `xtask/src/test.rs`). One module alone: `cargo xtask test -p server
//! --test integration -- ws::`.

// The start-up future (configuration, adapters, servers) is deep enough
// that computing the layout of a test's async block passes the default 128.
#![recursion_limit = "256"]

mod admin;
mod api;
mod audit;
mod auth;
mod common;
mod limits;
mod multi_instance;
mod nginx;
mod participants;
mod presence;
mod round_trips;
mod time_controls;
mod web;
mod webhooks;
mod ws;
mod ws_security;
