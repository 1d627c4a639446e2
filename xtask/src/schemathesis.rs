//! `cargo xtask schemathesis [ARGS...]`: property-based tests of the REST
//! API against its own OpenAPI document, on a live server.
//!
//! Builds `kairos-server` (debug) and starts it on a free loopback port with
//! the embedded default, `AUTH_MODE=off` and `RATE_LIMITS=off`, then runs
//! schemathesis against `http://127.0.0.1:<port>/openapi.json`: every
//! documented operation gets generated requests, valid and invalid, and
//! every response must be no server error (5xx) and match the document
//! (status code, content type, headers, body schema). The run is bounded by
//! [`MAX_EXAMPLES`] per operation and by [`DEADLINE`] in all, and stops the
//! server by pid on every way out.
//!
//! Schemathesis and its dependencies are pinned in
//! `xtask/schemathesis-requirements.txt` and installed into a venv cached
//! under `target/xtask/schemathesis-venv`, rebuilt only when that file
//! changes. Everything runs offline but for loopback: the tools get an
//! HTTP(S) proxy that refuses every connection, with loopback exempted.
//! `ARGS` are passed on to `schemathesis run` (e.g. `--seed 1`).

use std::ffi::OsString;
use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pyvenv;
use crate::shell::{self, describe};

/// Pinned Python packages; the venv is rebuilt whenever this text changes.
const REQUIREMENTS: &str = include_str!("../schemathesis-requirements.txt");
/// Generated test cases per API operation and phase, at most.
const MAX_EXAMPLES: u32 = 50;
/// Longest the whole schemathesis run may take before it is stopped.
const DEADLINE: Duration = Duration::from_secs(300);
/// Longest the server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The checks every response must pass (`schemathesis run --checks`).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";
/// An HTTP(S) proxy nobody listens on: any request off the loopback fails.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// `cargo xtask schemathesis [ARGS...]`.
pub(crate) fn run(args: &[OsString]) -> Result<()> {
    let root = shell::project_root();
    let work = root.join("target").join("xtask").join("schemathesis");
    fs::create_dir_all(&work).with_context(|| format!("could not create {}", work.display()))?;
    let venv = ensure_venv(&root.join("target").join("xtask"))?;

    let bin = shell::server_binary()?;

    let server = Server::start(&bin, &work.join("server.log"))?;
    let url = format!("http://127.0.0.1:{}/openapi.json", server.port);
    let mut cmd = Command::new(venv.join("bin").join("schemathesis"));
    cmd.current_dir(&work)
        .args(["run", &url, "--checks", CHECKS])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--wait-for-schema", "30", "--request-timeout", "10"])
        // One worker: with several threads, CPython 3.11's `ast.parse`
        // (which hypothesis calls) fails now and then with "AST constructor
        // recursion depth mismatch", an error of the tool, not of the API.
        .args(["--workers", "1", "--no-color"])
        .args(args);
    offline(&mut cmd);
    println!("==> {}", describe(&cmd));
    let started = Instant::now();
    let result = run_bounded(&mut cmd, DEADLINE);
    println!("==> schemathesis ran for {:.1?}", started.elapsed());

    // Stop the server before reporting, and report a server that crashed
    // even if every response looked fine.
    let stopped = server.stop();
    result?;
    let status = stopped?;
    if !status.success() {
        bail!(
            "kairos-server did not shut down cleanly ({status}); its log: {}",
            work.join("server.log").display()
        );
    }
    Ok(())
}

/// Makes `cmd` unable to reach anything but loopback.
fn offline(cmd: &mut Command) {
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        cmd.env(var, DEAD_PROXY);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        cmd.env(var, "127.0.0.1,localhost");
    }
    cmd.env("PYTHONNOUSERSITE", "1");
}

/// The venv with the pinned packages under `dir`, created or rebuilt if it
/// is missing, broken or was built from other pins. Runs that overlap take
/// turns on a lock file.
fn ensure_venv(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let lock_path = dir.join("schemathesis-venv.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("could not create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("could not lock {}", lock_path.display()))?;

    let venv = dir.join("schemathesis-venv");
    pyvenv::Venv {
        what: "schemathesis",
        requirements: REQUIREMENTS,
        stamp: "kairos-schemathesis-requirements.txt",
        probe: "import schemathesis",
    }
    .ensure(&venv)?;
    drop(lock);
    Ok(venv)
}

/// The server under test; dropping it stops it.
#[derive(Debug)]
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    /// Starts `bin` on a free loopback port (metrics on the same port),
    /// with nothing from our environment but `PATH`, so that no `REDIS_URL`
    /// or `JWT_SECRET` of the caller changes what is tested. Returns once
    /// the port accepts connections.
    fn start(bin: &Path, log_path: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("could not pick a free port")?
            .port();
        let log = File::create(log_path)
            .with_context(|| format!("could not create {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("METRICS_PORT", port.to_string())
            .env("AUTH_MODE", "off")
            .env("RATE_LIMITS", "off")
            .env("SHUTDOWN_DRAIN_SECONDS", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!(
            "==> starting {} on 127.0.0.1:{port} (AUTH_MODE=off RATE_LIMITS=off), log {}",
            bin.display(),
            log_path.display()
        );
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        let mut server = Server {
            child: Some(child),
            port,
        };
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                server.child = None;
                bail!(
                    "kairos-server exited at start ({status}); its log: {}",
                    log_path.display()
                );
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "kairos-server did not accept connections within {}s; its log: {}",
                    STARTUP_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM by pid, then SIGKILL if it has not exited within 15 s.
    fn stop(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("kairos-server was already gone");
        };
        terminate(&mut child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child);
        }
    }
}

/// Stops `child` by pid: SIGTERM (graceful shutdown), SIGKILL after 15 s.
fn terminate(child: &mut Child) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let grace = Instant::now();
    while grace.elapsed() < Duration::from_secs(15) {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        sleep(Duration::from_millis(50));
    }
    child.kill()?;
    let status = child.wait()?;
    bail!("kairos-server ignored SIGTERM for 15 s and was killed ({status})")
}

/// Runs `cmd`, stopping it (SIGTERM, then SIGKILL) if it outlives `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("schemathesis found failures ({status}): see its report above");
            }
            return Ok(());
        }
        if started.elapsed() > limit {
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
                "schemathesis took longer than {}s and was stopped",
                limit.as_secs()
            );
        }
        sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemathesis_is_pinned_with_its_dependencies() {
        let pins: Vec<&str> = REQUIREMENTS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(pins.contains(&"schemathesis==4.32.5"), "{pins:?}");
        assert!(pins.len() > 10, "the dependencies are pinned too: {pins:?}");
        for pin in pins {
            let (name, version) = pin.split_once("==").unwrap_or_default();
            assert!(
                !name.is_empty() && !version.is_empty() && !version.contains('*'),
                "not an exact pin: {pin:?}"
            );
        }
    }

    #[test]
    fn tools_are_kept_off_the_network_but_for_loopback() {
        let mut cmd = Command::new("true");
        offline(&mut cmd);
        let env: Vec<(String, String)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert!(env.contains(&("HTTPS_PROXY".into(), DEAD_PROXY.into())));
        assert!(env.contains(&("NO_PROXY".into(), "127.0.0.1,localhost".into())));
    }
}
