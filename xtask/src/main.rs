//! `cargo xtask`: the project's automation, written in Rust so that CI and a
//! developer's machine run exactly the same steps with nothing but cargo.
//!
//! The binary only parses arguments and hands over to one module per command.
//!
//! # Layout
//!
//! - [`bench`](mod@bench): the performance run that writes `docs/performance.md`.
//! - [`ci`]: the full gate (fmt, clippy, rustdoc, deploy-check, tests,
//!   schemathesis, a short fuzz pass), as CI runs it.
//! - [`deploy_check`]: static checks of `deploy/` (Dockerfile, Kubernetes,
//!   compose, alerts, nginx, dashboard) with pinned tools, offline.
//! - [`fuzz`]: the libFuzzer targets of `fuzz/` (nightly, or stable with `RUSTC_BOOTSTRAP=1`).
//! - [`schemathesis`]: property-based tests of a live server from its OpenAPI document.
//! - [`test`](mod@test): `cargo test --workspace` against throwaway Redis and PostgreSQL.
//! - [`web`](mod@web): the SDK's and demo page's tests under `web/` (node, Chromium).
//! - [`pyvenv`]: pinned Python virtual environments under `target/` for the
//!   PyPI tools that deploy-check and schemathesis run.
//! - [`services`]: finds or installs the server binaries, starts the
//!   throwaway servers and guarantees they are stopped again.
//! - [`shell`]: running child processes with errors that name the command.

// Printing progress and step headers to stdout is this tool's whole job; the
// workspace-wide lint exists to keep stray prints out of the service crates.
#![allow(clippy::print_stdout)]

mod bench;
mod ci;
mod deploy_check;
mod fuzz;
mod pyvenv;
mod schemathesis;
mod services;
mod shell;
mod test;
mod web;

use std::ffi::OsString;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: cargo xtask <command> [args]

Commands:
  test [ARGS...]  Run `cargo test --workspace ARGS...` against a throwaway
                  Redis and PostgreSQL (installed with apt-get if missing).
                  If ARGS select packages (-p/--package), `--workspace` is
                  left out so that only those packages are tested.
                  If KAIROS_TEST_REDIS_URL and KAIROS_TEST_DATABASE_URL are
                  both set, those servers are used and nothing is started.
                  Then, if node is installed and ARGS select no packages or
                  server/http-actix: `npm ci` in web/ when needed, Chromium
                  (apt-get) when missing, `cargo build --bin kairos-server`
                  and `node --test tests/` in web/ (KAIROS_SKIP_WEB_TESTS=1
                  leaves this out).
  ci              fmt check, clippy -D warnings, rustdoc -D warnings,
                  deploy-check, the same as `test`, then `schemathesis` with
                  a fixed seed and `fuzz --seconds 20`. Stops at the first
                  failing step.
  deploy-check [ROOT]
                  Check deploy/ (and .github/workflows) of ROOT (default:
                  this workspace) without Docker or a cluster: hadolint,
                  kubernetes-validate, compose and workflow schemas, promtool,
                  nginx -t, the Grafana dashboard against the metrics, and
                  the agreements between files. Installs its pinned tools
                  into target/xtask/venv (pip) and promtool and nginx
                  (apt-get) when missing; validates offline.
  fuzz [--seconds N] [TARGET...]
                  Build the libFuzzer targets of fuzz/ with `cargo fuzz
                  build` (nightly, or stable with RUSTC_BOOTSTRAP=1 when no
                  nightly is installed) and run each (all without TARGET),
                  one after the other, for N seconds (default 60); print the
                  executions per target; fail if one crashes, naming the
                  saved input. Installs cargo-fuzz (cargo install) when
                  missing.
  schemathesis [ARGS...]
                  Build and start kairos-server (debug, loopback, AUTH_MODE=off,
                  RATE_LIMITS=off) and run the pinned schemathesis
                  (xtask/schemathesis-requirements.txt, venv in
                  target/xtask/schemathesis-venv) against its /openapi.json:
                  no 5xx, responses match the schema. ARGS go to
                  `schemathesis run`. Offline but for loopback.
  bench [--quick] Build the release server and kairos-loadgen, run the
                  domain's criterion benchmarks, start a throwaway Redis and
                  the server instances (1, then 3), run the bare Redis
                  baseline and every load scenario, and write
                  docs/performance.md (generated part) with SVG plots in
                  docs/perf/. --quick: short and small runs (a few minutes
                  once built), table printed and written under
                  target/xtask/bench-quick/ instead of docs/.
  help            Print this message.

Exported to the tests:
  KAIROS_TEST_REDIS_URL     redis://127.0.0.1:<port>/
  KAIROS_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:<port>/kairos
  KAIROS_TEST_REDIS_SERVER  path of the redis-server binary
  KAIROS_TEST_PG_BIN        PostgreSQL bin directory (initdb, pg_ctl, ...)
  KAIROS_TEST_NGINX         nginx, for the load-balancer test of deploy/nginx
  KAIROS_SERVER_BIN         the kairos-server binary (web tests)
  CHROMIUM_PATH             the Chromium the browser tests drive (web tests)
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let command = args.next();
    let rest: Vec<OsString> = args.collect();

    let result = match command.as_ref().and_then(|c| c.to_str()) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("test") => test::run(&rest).map(exit_code),
        Some("bench") => bench::run(&rest).map(|()| ExitCode::SUCCESS),
        Some("deploy-check") => deploy_check::run(&rest).map(|()| ExitCode::SUCCESS),
        Some("fuzz") => fuzz::run(&rest).map(|()| ExitCode::SUCCESS),
        Some("schemathesis") => schemathesis::run(&rest).map(|()| ExitCode::SUCCESS),
        Some("ci") => {
            if !rest.is_empty() {
                eprintln!("error: `cargo xtask ci` takes no arguments\n\n{USAGE}");
                return ExitCode::from(2);
            }
            ci::run().map(|()| ExitCode::SUCCESS)
        }
        // Internal: the watchdog that stops the throwaway servers once its
        // parent xtask is gone, however it went (see `services`).
        Some(services::REAPER_COMMAND) => services::reap(&rest).map(|()| ExitCode::SUCCESS),
        Some(_) => {
            let shown = command.unwrap_or_default();
            eprintln!("error: unknown command {shown:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    match result {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns the tests' exit code into ours, so callers see what cargo reported.
fn exit_code(code: i32) -> ExitCode {
    // Exit codes outside 0..=255 cannot be passed on as they are; any failure
    // must stay a failure, so clamp rather than wrap.
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
