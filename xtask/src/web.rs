//! The browser half of `cargo xtask test`: the SDK's unit tests and the demo
//! page's browser tests under `web/`, run by node's own test runner against
//! a freshly built `kairos-server` and Debian's Chromium.
//!
//! Steps, each only when needed: `npm ci` in `web/` (no `node_modules`, or
//! older than `package-lock.json`), `apt-get install chromium` (no
//! `/usr/bin/chromium` and no `CHROMIUM_PATH`), `cargo build --bin
//! kairos-server`, then `node --test tests/` with `KAIROS_SERVER_BIN` set.
//! Without `node` the step is skipped with a note; any failure fails the
//! command. The whole run is bounded by [`DEADLINE`], each test by its own
//! timeout in the test files.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::services;
use crate::shell::{self, describe, which};

/// Where the browser tests find the server binary.
pub(crate) const SERVER_BIN_VAR: &str = "KAIROS_SERVER_BIN";
/// Where the browser tests find Chromium.
pub(crate) const CHROMIUM_VAR: &str = "CHROMIUM_PATH";
/// Set to 1 to leave the web tests out.
pub(crate) const SKIP_VAR: &str = "KAIROS_SKIP_WEB_TESTS";
/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The packages the web tests exercise: selecting others skips them.
const WEB_PACKAGES: [&str; 2] = ["server", "http-actix"];
/// Longest the node tests may take in all before they are stopped.
const DEADLINE: Duration = Duration::from_secs(600);
/// Default timeout of a single node test (the browser tests set shorter ones).
const TEST_TIMEOUT_MS: u32 = 120_000;

/// Whether `cargo xtask test ARGS` should run the web tests: without a
/// package selection, or when `server` or `http-actix` is among the
/// selected packages; never with `KAIROS_SKIP_WEB_TESTS=1`.
pub(crate) fn wanted(args: &[OsString]) -> bool {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        println!("==> web tests skipped ({SKIP_VAR}=1)");
        return false;
    }
    match selected_packages(args) {
        None => true,
        Some(packages) => {
            let wanted = packages.iter().any(|p| WEB_PACKAGES.contains(&p.as_str()));
            if !wanted {
                println!(
                    "==> web tests skipped: they test {}, which the arguments do not select",
                    WEB_PACKAGES.join(" and ")
                );
            }
            wanted
        }
    }
}

/// The packages named by `-p`/`--package` before a bare `--`, or `None`
/// when there are none (a `--manifest-path` selection counts as none of ours).
fn selected_packages(args: &[OsString]) -> Option<Vec<String>> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| a != "--")
        .collect();
    let mut packages = Vec::new();
    let mut selected = false;
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        if arg == "-p" || arg == "--package" {
            selected = true;
            if let Some(next) = iter.next() {
                packages.extend(next.split(',').map(str::to_owned));
            }
        } else if let Some(p) = arg.strip_prefix("--package=") {
            selected = true;
            packages.extend(p.split(',').map(str::to_owned));
        } else if let Some(p) = arg.strip_prefix("-p").filter(|_| !arg.starts_with("--")) {
            selected = true;
            packages.extend(p.split(',').map(str::to_owned));
        } else if arg == "--manifest-path" || arg.starts_with("--manifest-path=") {
            selected = true;
        }
    }
    selected.then_some(packages)
}

/// Runs the web tests; fails if any fails or if they cannot run.
pub(crate) fn run() -> Result<()> {
    let Some(node) = which("node") else {
        println!("==> node not found: web tests (web/tests/) skipped");
        return Ok(());
    };
    let root = shell::project_root();
    let web = root.join("web");
    ensure_node_modules(&web)?;
    let chromium = ensure_chromium()?;

    let server_bin = shell::server_binary()?;

    let mut cmd = Command::new(node);
    cmd.current_dir(&web)
        .arg("--test")
        .arg(format!("--test-timeout={TEST_TIMEOUT_MS}"))
        .arg("tests/")
        .env(SERVER_BIN_VAR, &server_bin)
        .env(CHROMIUM_VAR, &chromium);
    println!(
        "==> (cd web && {SERVER_BIN_VAR}={} {CHROMIUM_VAR}={} {})",
        server_bin.display(),
        chromium.display(),
        describe(&cmd)
    );
    run_bounded(&mut cmd, DEADLINE)
}

/// `npm ci` when `web/node_modules` is missing or older than the lockfile.
fn ensure_node_modules(web: &Path) -> Result<()> {
    let lock = web.join("package-lock.json");
    // npm writes this after every install; its age tells when that was.
    let installed = web.join("node_modules").join(".package-lock.json");
    let stale = match (
        modified(&installed),
        modified(&lock),
        modified(&web.join("package.json")),
    ) {
        (Some(done), Some(lock), Some(manifest)) => done < lock || done < manifest,
        _ => true,
    };
    if !stale {
        return Ok(());
    }
    let npm = which("npm")
        .context("node is installed but npm is not: install npm (apt-get install npm)")?;
    let mut cmd = Command::new(npm);
    cmd.current_dir(web).args(["ci", "--no-audit", "--no-fund"]);
    println!("==> (cd web && {})", describe(&cmd));
    shell::run(&mut cmd)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Chromium's path: `CHROMIUM_PATH`, else Debian's, installed if missing.
fn ensure_chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(CHROMIUM_VAR).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{CHROMIUM_VAR}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let path = PathBuf::from(CHROMIUM);
    if !path.is_file() {
        services::apt_install(
            &["chromium"],
            "install Chromium yourself and set CHROMIUM_PATH, or set KAIROS_SKIP_WEB_TESTS=1",
        )?;
        if !path.is_file() {
            bail!("{CHROMIUM} is still missing after installing package chromium");
        }
    }
    Ok(path)
}

/// Runs `cmd`, stopping it (SIGTERM, then SIGKILL) if it outlives `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<()> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "the web tests failed ({status}): `{}` in web/",
                    describe(cmd)
                );
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            // The test runner passes SIGTERM on to its test processes, which
            // stop their server and browser; SIGKILL if it does not exit.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while child.try_wait()?.is_none() && grace.elapsed() < Duration::from_secs(10) {
                sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the web tests took longer than {}s and were stopped",
                limit.as_secs()
            );
        }
        sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn package_selections_are_read_like_cargo_does() {
        assert_eq!(selected_packages(&args(&[])), None);
        assert_eq!(
            selected_packages(&args(&["--release", "--", "-p", "x"])),
            None
        );
        assert_eq!(
            selected_packages(&args(&["-p", "server", "--test", "integration"])),
            Some(vec!["server".to_owned()])
        );
        assert_eq!(
            selected_packages(&args(&[
                "-pxtask",
                "--package=http-actix",
                "--package",
                "a,b"
            ])),
            Some(vec![
                "xtask".into(),
                "http-actix".into(),
                "a".into(),
                "b".into()
            ])
        );
        assert_eq!(
            selected_packages(&args(&["--manifest-path", "x/Cargo.toml"])),
            Some(vec![])
        );
    }

    #[test]
    fn web_tests_run_for_the_packages_they_test() {
        assert!(wanted(&args(&[])));
        assert!(wanted(&args(&["-p", "server", "--test", "integration"])));
        assert!(wanted(&args(&["-p", "http-actix"])));
        assert!(!wanted(&args(&["-p", "kairos-domain"])));
        assert!(!wanted(&args(&["-p", "xtask"])));
    }
}
