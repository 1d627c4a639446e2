//! `cargo xtask deploy-check` catches what it is there to catch: each test
//! copies the deployment files to a scratch tree, breaks one thing on
//! purpose, runs the checker on the copy and expects it to fail, naming the
//! culprit. The real tree must pass.
//!
//! The checker installs its tools on first use (a venv under
//! `target/xtask/venv`, promtool and nginx with apt-get); `cargo xtask ci`
//! runs it before the tests, so they find everything in place.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The workspace root (the tests run with CARGO_MANIFEST_DIR = xtask/).
fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// What the checker reads, relative to the root.
const INPUTS: &[&str] = &[
    "deploy",
    ".github/workflows",
    "crates/http-actix/src/metrics.rs",
    "crates/server/src/workers.rs",
    "docs/operations.md",
];

/// A copy of the checker's inputs, removed when dropped.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn new(name: &str) -> Result<Self> {
        let dir = root()
            .join("target")
            .join("xtask")
            .join("deploy-check-tests")
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        for input in INPUTS {
            copy(&root().join(input), &dir.join(input))?;
        }
        Ok(Self { dir })
    }

    /// Replaces `from` (which must occur) by `to` in the copy's `path`.
    fn edit(&self, path: &str, from: &str, to: &str) -> Result<()> {
        let file = self.dir.join(path);
        let text = fs::read_to_string(&file).with_context(|| format!("reading {path}"))?;
        ensure!(
            text.contains(from),
            "{path} no longer contains {from:?}: update this test"
        );
        fs::write(&file, text.replacen(from, to, 1)).with_context(|| format!("writing {path}"))
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    match fs::metadata(from) {
        Ok(_) => {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
            Ok(())
        }
        // An input that does not exist in this checkout is not copied: the
        // checker says so itself if it needs it.
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("reading {}", from.display())),
    }
}

/// Runs `xtask deploy-check <root>`: whether it passed, and all it printed.
fn deploy_check(root: &Path) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("deploy-check")
        .arg(root)
        .output()
        .context("could not run xtask deploy-check")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Breaks the copy with `edit`, then expects the checker to fail with every
/// one of `expected` in its report.
fn expect_failure(
    name: &str,
    edit: impl FnOnce(&Copy) -> Result<()>,
    expected: &[&str],
) -> Result<()> {
    let copy = Copy::new(name)?;
    let (passed, before) = deploy_check(&copy.dir)?;
    ensure!(passed, "the unbroken copy must pass first:\n{before}");
    edit(&copy)?;
    let (passed, report) = deploy_check(&copy.dir)?;
    ensure!(!passed, "deploy-check passed on a broken tree:\n{report}");
    for needle in expected {
        ensure!(
            report.contains(needle),
            "the report does not mention {needle:?}:\n{report}"
        );
    }
    Ok(())
}

#[test]
fn the_real_tree_passes() -> Result<()> {
    let (passed, report) = deploy_check(&root())?;
    ensure!(passed, "deploy-check fails on the real tree:\n{report}");
    ensure!(report.contains("deploy checks passed"), "{report}");
    Ok(())
}

#[test]
fn a_replica_count_that_is_not_a_number_fails() -> Result<()> {
    expect_failure(
        "replicas",
        |copy| {
            copy.edit(
                "deploy/k8s/deployment.yaml",
                "replicas: 3",
                "replicas: \"three\"",
            )
        },
        &[
            "deploy/k8s/deployment.yaml",
            "spec.replicas",
            "'three' is not of type 'integer'",
        ],
    )
}

#[test]
fn an_alert_with_invalid_promql_fails() -> Result<()> {
    expect_failure(
        "promql",
        |copy| {
            copy.edit(
                "deploy/prometheus/alerts.yml",
                "expr: up{job=\"kairos\"} == 0",
                "expr: up{job=\"kairos\" == 0",
            )
        },
        &["promtool check rules", "alerts.yml"],
    )
}

#[test]
fn a_dashboard_without_a_metric_fails() -> Result<()> {
    expect_failure(
        "dashboard",
        |copy| {
            let path = "deploy/grafana/kairos-dashboard.json";
            let file = copy.dir.join(path);
            let text = fs::read_to_string(&file)?;
            ensure!(text.contains("kairos_audit_events_written_total"));
            fs::write(
                &file,
                text.replace(
                    "kairos_audit_events_written_total",
                    "kairos_audit_events_total",
                ),
            )?;
            Ok(())
        },
        &[
            "no panel queries kairos_audit_events_written_total",
            "the dashboard uses kairos_audit_events_total",
        ],
    )
}

#[test]
fn a_sticky_balancer_fails() -> Result<()> {
    expect_failure(
        "sticky",
        |copy| {
            copy.edit(
                "deploy/nginx/templates/kairos-upstream.conf.template",
                "    keepalive 64;",
                "    ip_hash;\n    keepalive 64;",
            )
        },
        &["kairos-upstream.conf.template", "`ip_hash` pins clients"],
    )
}

#[test]
fn a_misspelt_compose_key_fails() -> Result<()> {
    expect_failure(
        "compose",
        |copy| {
            copy.edit(
                "deploy/docker-compose.yml",
                "  stop_grace_period: 30s",
                "  stop_grace_periode: 30s",
            )
        },
        &["vendor.compose-spec", "stop_grace_periode"],
    )
}

#[test]
fn a_tree_without_deploy_is_refused() -> Result<()> {
    let empty = root()
        .join("target")
        .join("xtask")
        .join(format!("deploy-check-tests/empty-{}", std::process::id()));
    fs::create_dir_all(&empty)?;
    let result = deploy_check(&empty);
    let _ = fs::remove_dir_all(&empty);
    let (passed, report) = result?;
    ensure!(
        !passed && report.contains("has no deploy/ directory"),
        "{report}"
    );
    Ok(())
}
