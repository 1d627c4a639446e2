//! `kairos-loadgen`: the load scenarios behind `cargo xtask bench`.
//!
//! Every scenario is bounded in count and time, talks only to loopback
//! addresses (anything else is refused before a byte is sent) and stops by
//! itself. Progress goes to stderr; the result is one JSON object on stdout,
//! which `cargo xtask bench` parses into `docs/performance.md`.
//!
//! # Layout
//!
//! - [`common`]: loopback checks, latency histograms, CPU and memory readings,
//!   the HTTP and WebSocket helpers shared by the scenarios.
//! - [`switch`]: HTTP switch load, closed loop or open loop.
//! - [`fanout`]: switches delivered to many WebSocket subscribers.
//! - [`fleet`]: many WebSocket clients opened with bounded parallelism, each
//!   reading its session's messages until told to stop.
//! - [`connections`]: many idle WebSockets and the server's memory per socket.
//! - [`timeouts`]: many deadlines in the same second, lateness to clients.
//! - [`time_controls`]: many time warnings and scheduled starts in the same
//!   window, lateness to clients.
//! - [`redis_ping`]: the bare Redis round trip the switch is compared with.
//! - [`http_ping`]: the bare HTTP round trip to the service (`GET /v1/time`,
//!   no I/O behind it), the floor under the switch.
//! - [`webhooks`]: switches with a signed webhook per switch to a receiver
//!   in the load generator; the delivery latency beside the switch's.
//! - [`redis_commands`]: the Redis commands the server sends per switch,
//!   counted with `MONITOR`.
//! - [`http_load`]: the request outcome, tally, closed-loop driver and report
//!   fields shared by `switch` and `http-ping`.
//! - [`lean_http`]: the closed loops' client, one keep-alive HTTP/1.1
//!   connection per client and target with requests built once.

// The report on stdout is this tool's output.
#![allow(clippy::print_stdout)]

mod common;
mod connections;
mod fanout;
mod fleet;
mod http_load;
mod http_ping;
mod lean_http;
mod redis_commands;
mod redis_ping;
mod switch;
mod time_controls;
mod timeouts;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The same allocator as the server: the load generator shares the machine
/// with it, so every cycle it spends in `malloc` is taken from the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load scenarios for SyncKairos. Loopback targets only.
#[derive(Debug, Parser)]
#[command(name = "kairos-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// HTTP switches round-robin over sessions and targets.
    Switch(switch::Args),
    /// Switches at a fixed rate, delivered to WebSocket subscribers.
    Fanout(fanout::Args),
    /// Idle WebSockets held on one instance; its memory per socket.
    Connections(connections::Args),
    /// Many sessions timing out in the same second; lateness to clients.
    Timeouts(timeouts::Args),
    /// Many time warnings and scheduled starts in the same window; lateness to clients.
    TimeControls(time_controls::Args),
    /// Bare Redis PING round trips at a given concurrency (the baseline).
    RedisPing(redis_ping::Args),
    /// Bare HTTP round trips (`GET /v1/time`) at a given concurrency (the HTTP floor).
    HttpPing(http_ping::Args),
    /// Switches with a signed webhook each; delivery latency to a local receiver.
    Webhooks(webhooks::Args),
    /// The Redis commands one switch costs, counted with `MONITOR`.
    RedisCommands(redis_commands::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::Switch(args) => switch::run(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Connections(args) => connections::run(args).await,
            Scenario::Timeouts(args) => timeouts::run(args).await,
            Scenario::TimeControls(args) => time_controls::run(args).await,
            Scenario::RedisPing(args) => redis_ping::run(args).await,
            Scenario::HttpPing(args) => http_ping::run(args).await,
            Scenario::Webhooks(args) => webhooks::run(args).await,
            Scenario::RedisCommands(args) => redis_commands::run(args).await,
        }
    });
    // Sockets still held by finished tasks are closed with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
