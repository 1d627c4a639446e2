//! The server's integration suite as one test binary, so the server is
//! linked once: each module is the suite of one concern (the REST contract,
//! the WebSocket contract, authentication, limits, the audit trail, several
//! instances, nginx in front, the demo page, the time controls' deadlines
//! on three instances through a kill, presence and the auto-pause on
//! three instances through a kill), and `common` is the shared harness
//! they all use.
//!
//! `cargo xtask test` runs it whole on the embedded adapters, then runs the
//! service-level modules (`api`, `ws`, `limits`, `auth`, `ws_security`,
//! `web`) once more with `KAIROS_TEST_ADAPTERS=redis` (see
//! `xtask/src/test.rs`). One module alone: `cargo xtask test -p server
//! --test integration -- ws::`.

// The start-up future (configuration, adapters, servers) is deep enough
// that computing the layout of a test's async block passes the default 128.
#![recursion_limit = "256"]

mod api;
mod audit;
mod auth;
mod common;
mod limits;
mod multi_instance;
mod nginx;
mod presence;
mod time_controls;
mod web;
mod ws;
mod ws_security;
