//! `cargo xtask ci`: the whole gate a change must pass, in one command, so
//! that CI (`.ci/run`, `.github/workflows/ci.yml`) and a developer run the
//! same checks in the same order.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::shell::{self, cargo};
use crate::{deploy_check, fuzz, schemathesis, test};

/// Seconds each fuzz target runs in CI: a smoke pass that catches a target
/// that crashes at once; the long runs are `cargo xtask fuzz` (docs/security.md).
const CI_FUZZ_SECONDS: u64 = 20;
/// The schemathesis seed of the CI gate (see [`api_schema`]).
const CI_SCHEMATHESIS_SEED: &str = "20261122";

/// One CI step: runs a check and fails if it does not pass.
type Step = fn() -> Result<()>;

/// Runs every step in order and stops at the first that fails.
///
/// Cheap checks come first, so a formatting slip fails in seconds rather
/// than after a full build.
pub(crate) fn run() -> Result<()> {
    let started = Instant::now();
    let steps: [(&str, Step); 7] = [
        ("fmt", fmt),
        ("clippy", clippy),
        ("doc", doc),
        ("deploy-check", deploy),
        ("test", tests),
        ("schemathesis", api_schema),
        ("fuzz", fuzz_smoke),
    ];
    for (index, (name, step)) in steps.iter().enumerate() {
        println!();
        println!(
            "==================== [{}/{}] {name} ====================",
            index + 1,
            steps.len()
        );
        let step_started = Instant::now();
        step().with_context(|| format!("CI step `{name}` failed"))?;
        println!("==> {name} passed in {:.1?}", step_started.elapsed());
    }
    println!();
    println!("==> CI passed in {:.1?}", started.elapsed());
    Ok(())
}

fn fmt() -> Result<()> {
    run_shown(cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["clippy", "--workspace", "--all-targets"]);
    // `--locked` catches a Cargo.toml change whose lockfile was not updated,
    // but only means something once a lockfile exists.
    if shell::project_root().join("Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    cmd.args(["--", "-D", "warnings"]);
    run_shown(&mut cmd)
}

fn doc() -> Result<()> {
    // Keep whatever flags the caller set (for example `--cfg docsrs`) and
    // make broken intra-doc links and other rustdoc warnings fatal.
    let flags = match std::env::var("RUSTDOCFLAGS") {
        Ok(existing) if !existing.trim().is_empty() => format!("{existing} -D warnings"),
        _ => "-D warnings".to_owned(),
    };
    let mut cmd = cargo();
    cmd.args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", &flags);
    println!("==> RUSTDOCFLAGS={flags:?}");
    run_shown(&mut cmd)
}

/// The deployment files, before the (long) tests: a broken manifest or
/// alert rule fails in seconds. It also installs the tools the tests of
/// `xtask/tests/deploy_check.rs` use, once.
fn deploy() -> Result<()> {
    deploy_check::check_tree(&shell::project_root())
}

fn tests() -> Result<()> {
    let code = test::run(&[])?;
    if code != 0 {
        bail!("`cargo test` exited with code {code}");
    }
    Ok(())
}

/// The live API against its OpenAPI document; after the tests, which
/// already built the server binary it starts. With a fixed seed and no
/// example database (which would replay what earlier runs on the same
/// machine found), so that the gate tests the same cases on every run
/// and a failure reproduces with
/// `cargo xtask schemathesis --seed 20261122 --generation-database none`;
/// runs by hand without them explore further.
fn api_schema() -> Result<()> {
    schemathesis::run(&[
        "--seed".into(),
        CI_SCHEMATHESIS_SEED.into(),
        "--generation-database".into(),
        "none".into(),
    ])
}

/// Every fuzz target for [`CI_FUZZ_SECONDS`], last: it needs its own
/// nightly build.
fn fuzz_smoke() -> Result<()> {
    fuzz::fuzz(CI_FUZZ_SECONDS, &[])
}

/// Echoes the command before running it, so the log shows what to re-run.
fn run_shown(cmd: &mut std::process::Command) -> Result<()> {
    println!("==> {}", shell::describe(cmd));
    shell::run(cmd)
}
