//! # server
//!
//! The `kairos-server` binary's library: it alone knows the configuration
//! and which adapters exist. The binary parses arguments and calls
//! [`startup::Application::build`] then `run_until_stopped`.
//!
//! # Layout
//!
//! - [`config`]: every setting declared once (variable, flag, default,
//!   parser, help), read from the environment and the command line,
//!   validated once; the Redis settings as the store's and the bus's
//!   configurations; the test hooks, apart.
//! - [`telemetry`]: `tracing` set-up.
//! - [`startup`]: wiring, serving, graceful shutdown.
//! - [`timers`]: the local timers: the deadlines this instance committed,
//!   fired when due by one task.
//! - [`workers`]: the timeout safety net (a rare sweep of the deadline
//!   index), the audit drain, the bus statistics, and the workers' metrics
//!   (the webhook workers' included).
//! - [`webhooks`]: the webhook fan-out (hooks outbox to delivery queue) and
//!   the delivery loop (claim, send, retry or disable, log).
//! - [`token`]: `kairos-server token`, minting tokens from `JWT_SECRET`.
//! - [`background`]: the thread at lower CPU priority where the audit and
//!   webhook workers run, so that the hot path gets the cores first.

pub mod background;
pub mod config;
pub mod startup;
pub mod telemetry;
pub mod timers;
pub mod token;
pub mod webhooks;
pub mod workers;

pub use config::{Settings, TestHooks};
pub use startup::Application;
