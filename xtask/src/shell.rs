//! Small helpers for running child processes, so that every failure names
//! the command that failed and shows what it printed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The workspace root, found from where this crate lives rather than from the
/// current directory, so `cargo xtask` works from any sub-directory.
pub(crate) fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `xtask/` sits directly under the root; if that ever changes, fall back
    // to the crate directory rather than guessing further.
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the root) or
/// `target/` under the root.
pub(crate) fn target_dir() -> PathBuf {
    let root = project_root();
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The `kairos-server` binary this process's test run built and ran its
/// tests against (see [`server_binary`]).
static TESTED_SERVER: OnceLock<PathBuf> = OnceLock::new();

/// Records the server binary the workspace tests ran against.
pub(crate) fn remember_tested_server(bin: PathBuf) {
    // Set once per process: a second test run builds the same binary.
    let _ = TESTED_SERVER.set(bin);
}

/// The debug `kairos-server` for the web tests and schemathesis: the one
/// the workspace tests of this process built (in `cargo xtask ci` and
/// `cargo xtask test`), else one built now with `cargo build --bin
/// kairos-server`. Reusing it saves a second build of the server and its
/// adapters: `cargo test --workspace` unifies the features the
/// dev-dependencies ask for, so its server is not the one `cargo build`
/// makes (same code, other feature set, a minute and 1.5 GB more).
pub(crate) fn server_binary() -> Result<PathBuf> {
    if let Some(bin) = TESTED_SERVER.get().filter(|bin| bin.is_file()) {
        println!("==> the server the tests ran: {}", bin.display());
        return Ok(bin.clone());
    }
    let mut build = cargo();
    build.args(["build", "--bin", "kairos-server"]);
    println!("==> {}", describe(&build));
    run(&mut build)?;
    let bin = target_dir().join("debug").join("kairos-server");
    if !bin.is_file() {
        bail!(
            "cargo built kairos-server, but it is not at {}",
            bin.display()
        );
    }
    Ok(bin)
}

/// A `cargo` command run from the workspace root.
///
/// Uses the `CARGO` that `cargo xtask` was started with, so the nested builds
/// use the same toolchain as the outer one.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root());
    cmd
}

/// The command line as a human would type it into `sh`, for messages that
/// should be copy-pasteable to re-run a failed step.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            let plain = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
            if plain {
                part.into_owned()
            } else {
                sh_quote(&part)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `s` as one word for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `cmd` with the terminal attached and returns how it ended.
pub(crate) fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs `cmd` with the terminal attached and fails unless it succeeds.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries
/// everything it printed, which is where the reason usually is.
///
/// Only for commands that leave no background process holding the pipes.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({})\n--- stdout ---\n{}--- stderr ---\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Looks `name` up in `PATH` plus the sbin directories, which Debian leaves
/// out of a normal user's `PATH` although some server binaries live there.
pub(crate) fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether we run as root, which decides how servers and apt-get are run.
pub(crate) fn is_root() -> Result<bool> {
    let uid = output(Command::new("id").arg("-u"))?;
    Ok(uid.trim() == "0")
}
