//! Python virtual environments for the PyPI tools xtask runs (the
//! deploy-check validators, schemathesis): pinned, cached under `target/`,
//! rebuilt only when the pins change or the venv is broken.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::services;
use crate::shell::{self, describe, which};

/// What one cached venv holds and how to tell it is intact.
pub(crate) struct Venv<'a> {
    /// Named in the progress line ("building the {what} venv").
    pub(crate) what: &'a str,
    /// The pinned requirements (a `requirements.txt` text).
    pub(crate) requirements: &'a str,
    /// File inside the venv that records the pins it was built from.
    pub(crate) stamp: &'a str,
    /// Python statement that must run in an intact venv (`import x, y`).
    pub(crate) probe: &'a str,
}

impl Venv<'_> {
    /// Creates or rebuilds the venv at `venv` if it is missing, broken or
    /// was built from other pins. The caller serialises overlapping runs
    /// (a lock file next to the venv).
    pub(crate) fn ensure(&self, venv: &Path) -> Result<()> {
        let stamp = venv.join(self.stamp);
        let python = venv.join("bin").join("python");
        let current = fs::read_to_string(&stamp).is_ok_and(|s| s == self.requirements)
            && Command::new(&python)
                .args(["-c", self.probe])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
        if current {
            return Ok(());
        }

        println!("==> building the {} venv {}", self.what, venv.display());
        if venv.exists() {
            fs::remove_dir_all(venv)
                .with_context(|| format!("could not remove {}", venv.display()))?;
        }
        let base = match which("python3") {
            Some(p) => p,
            None => {
                services::apt_install(&["python3", "python3-venv"], "install python3 yourself")?;
                which("python3").context("python3 is not on PATH after installing it")?
            }
        };
        let mut create = Command::new(&base);
        create.arg("-m").arg("venv").arg(venv);
        if shell::run(&mut create).is_err() {
            // Debian's python3 without its venv module: install it and retry.
            let _ = fs::remove_dir_all(venv);
            services::apt_install(&["python3-venv"], "install python3-venv yourself")?;
            shell::run(&mut create)?;
        }
        let requirements = venv.join("requirements.txt");
        fs::write(&requirements, self.requirements)
            .with_context(|| format!("could not write {}", requirements.display()))?;
        let mut install = Command::new(&python);
        install
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", "--require-virtualenv"])
            .arg("-r")
            .arg(&requirements)
            .env("PYTHONNOUSERSITE", "1");
        println!("==> {}", describe(&install));
        shell::run(&mut install)?;
        // Written last: a venv without it is rebuilt from scratch next time.
        fs::write(&stamp, self.requirements)
            .with_context(|| format!("could not write {}", stamp.display()))?;
        Ok(())
    }
}
