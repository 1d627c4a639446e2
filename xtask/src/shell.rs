//! Small helpers for running child processes, so that every failure names
//! the command that failed and shows what it printed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root, found from where this crate lives rather than from the
/// current directory, so `cargo xtask` works from any sub-directory.
pub(crate) fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `xtask/` sits directly under the root; if that ever changes, fall back
    // to the crate directory rather than guessing further.
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
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
