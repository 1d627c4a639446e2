//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the libFuzzer targets
//! of `fuzz/` (hostile input: session configs, WebSocket client messages,
//! state-machine transitions; `docs/security.md`) for N seconds each.
//!
//! Steps:
//!
//! 1. cargo-fuzz passes `-Z` flags, so it runs on the nightly toolchain when
//!    one is installed, and otherwise on stable with `RUSTC_BOOTSTRAP=1`
//!    (the same compiler features; rustup cannot download a nightly here).
//! 2. `cargo install cargo-fuzz --locked` when `cargo fuzz` is missing.
//! 3. `cargo +nightly fuzz build -a`: every target once, in release mode
//!    with debug assertions and overflow checks, under AddressSanitizer,
//!    into `fuzz/target`.
//! 4. Each target in turn, one process at a time, for `-max_total_time=N`
//!    on its corpus `fuzz/corpus/<target>` (kept between runs, ignored by
//!    git) plus its committed seeds `fuzz/seeds/<target>`, with the
//!    dictionary `fuzz/dicts/<target>.dict` when there is one.
//!
//! libFuzzer's per-input lines (`NEW`, `REDUCE`, `pulse`) are left out of
//! the output and kept in `target/xtask/fuzz/<target>.log`. The summary
//! gives each target's executions; a target that crashes fails the command
//! (after the others ran) with the input libFuzzer saved and the commands
//! that reproduce and minimize it.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::shell::{self, describe, which};

/// Seconds per target when `--seconds` is not given.
pub(crate) const DEFAULT_SECONDS: u64 = 60;
/// Longest a single input may run before libFuzzer reports it as a hang.
const INPUT_TIMEOUT_SECONDS: u64 = 30;
/// The toolchain cargo-fuzz builds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toolchain {
    /// An installed nightly: the usual way to run cargo-fuzz.
    Nightly,
    /// No nightly installed: stable, with `RUSTC_BOOTSTRAP=1` so that it
    /// accepts the `-Z` flags (sanitizer, coverage) cargo-fuzz passes.
    StableBootstrap,
}

impl Toolchain {
    /// The rustup toolchain name.
    fn name(self) -> &'static str {
        match self {
            Self::Nightly => "nightly",
            Self::StableBootstrap => "stable",
        }
    }

    /// How to run `cargo fuzz` by hand on this toolchain.
    fn cargo_fuzz_prefix(self) -> &'static str {
        match self {
            Self::Nightly => "cargo +nightly fuzz",
            Self::StableBootstrap => "RUSTC_BOOTSTRAP=1 cargo +stable fuzz",
        }
    }
}

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    seconds: u64,
    targets: Vec<String>,
}

/// `cargo xtask fuzz [--seconds N] [TARGET...]`.
pub(crate) fn run(args: &[OsString]) -> Result<()> {
    let args = parse_args(args)?;
    fuzz(args.seconds, &args.targets)
}

fn parse_args(args: &[OsString]) -> Result<Args> {
    const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [TARGET...]";
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        let value = if arg == "--seconds" {
            Some(
                iter.next()
                    .with_context(|| format!("--seconds needs a value; {USAGE}"))?,
            )
        } else {
            arg.strip_prefix("--seconds=").map(str::to_owned)
        };
        if let Some(value) = value {
            seconds = value
                .parse()
                .ok()
                .filter(|&s| s > 0)
                .with_context(|| format!("--seconds {value:?}: give a whole number above 0"))?;
        } else if arg.starts_with('-') {
            bail!("unknown option {arg:?}; {USAGE}");
        } else {
            targets.push(arg);
        }
    }
    Ok(Args { seconds, targets })
}

/// Builds the targets and runs each of `wanted` (all when empty) for
/// `seconds`; fails if any crashed or could not run.
pub(crate) fn fuzz(seconds: u64, wanted: &[String]) -> Result<()> {
    let dir = shell::project_root().join("fuzz");
    let available = list_targets(&dir)?;
    let targets = select(&available, wanted)?;
    let toolchain = choose_toolchain()?;
    ensure_cargo_fuzz(toolchain)?;

    let mut build = cargo_fuzz(toolchain);
    build.args(["build", "-a"]);
    println!("==> {}", describe(&build));
    let started = Instant::now();
    shell::run(&mut build)?;
    println!("==> fuzz targets built in {:.1?}", started.elapsed());

    let logs = shell::project_root()
        .join("target")
        .join("xtask")
        .join("fuzz");
    fs::create_dir_all(&logs).with_context(|| format!("could not create {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(toolchain, &dir, &logs, target, seconds)?);
    }

    println!();
    println!("==> fuzzing summary ({seconds} s per target, -max_total_time={seconds})");
    for o in &outcomes {
        println!("    {}", o.summary());
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for o in &failed {
        eprintln!(
            "fuzz target {} failed; its output is in {}",
            o.target,
            o.log.display()
        );
        if let Some(artifact) = &o.artifact {
            eprintln!(
                "  input: {artifact}\n  reproduce: {c} run -a {t} {artifact}\n  \
                 minimize:  {c} tmin -a {t} {artifact}",
                c = toolchain.cargo_fuzz_prefix(),
                t = o.target
            );
        }
    }
    let names: Vec<&str> = failed.iter().map(|o| o.target.as_str()).collect();
    bail!("fuzzing failed: {}", names.join(", "))
}

/// The targets: the file stems of `fuzz/fuzz_targets/*.rs`, sorted.
fn list_targets(dir: &Path) -> Result<Vec<String>> {
    let sources = dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in
        fs::read_dir(&sources).with_context(|| format!("could not read {}", sources.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    ensure!(
        !names.is_empty(),
        "{} has no fuzz targets",
        sources.display()
    );
    Ok(names)
}

/// The targets to run: `wanted`, which must exist, or all.
fn select(available: &[String], wanted: &[String]) -> Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(available.to_vec());
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|w| !available.contains(w))
        .map(String::as_str)
        .collect();
    ensure!(
        unknown.is_empty(),
        "unknown fuzz target(s) {}; the targets are {}",
        unknown.join(", "),
        available.join(", ")
    );
    Ok(wanted.to_vec())
}

/// Nightly when rustup lists one, else stable with `RUSTC_BOOTSTRAP=1`.
fn choose_toolchain() -> Result<Toolchain> {
    let Some(rustup) = which("rustup") else {
        bail!(
            "rustup is not on PATH: cargo fuzz needs a toolchain selected through rustup \
             (nightly, or stable with RUSTC_BOOTSTRAP=1); nothing was fuzzed"
        );
    };
    let list = shell::output(Command::new(rustup).args(["toolchain", "list"]))?;
    if has_nightly(&list) {
        return Ok(Toolchain::Nightly);
    }
    println!(
        "==> no nightly toolchain is installed: building the fuzz targets with stable and \
         RUSTC_BOOTSTRAP=1 (the -Z flags of cargo-fuzz need one or the other)"
    );
    Ok(Toolchain::StableBootstrap)
}

/// Whether `rustup toolchain list` shows a nightly toolchain.
fn has_nightly(list: &str) -> bool {
    list.lines().any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|name| name == "nightly" || name.starts_with("nightly-"))
    })
}

/// `cargo install cargo-fuzz --locked` unless `cargo fuzz` already runs.
fn ensure_cargo_fuzz(toolchain: Toolchain) -> Result<()> {
    let installed = |cmd: &mut Command| {
        cmd.arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut probe = cargo_fuzz(toolchain);
    if installed(&mut probe) {
        return Ok(());
    }
    let mut install = shell::cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    println!("==> cargo-fuzz is missing: {}", describe(&install));
    shell::run(&mut install)?;
    ensure!(
        installed(&mut cargo_fuzz(toolchain)),
        "`cargo fuzz` still does not run after installing cargo-fuzz: is ~/.cargo/bin on PATH?"
    );
    Ok(())
}

/// `cargo fuzz` on `toolchain` from the project root, as rustup runs it:
/// nested cargo calls by cargo-fuzz pick the same toolchain too, whatever
/// toolchain runs this xtask.
fn cargo_fuzz(toolchain: Toolchain) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain.name(), "cargo", "fuzz"])
        .current_dir(shell::project_root())
        // The cargo that runs xtask, and a target directory meant for the
        // main workspace, must not leak into the fuzz build.
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTUP_TOOLCHAIN", toolchain.name());
    if toolchain == Toolchain::StableBootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd
}

/// How one target's run ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    target: String,
    passed: bool,
    log: PathBuf,
    wall: Duration,
    stats: Stats,
    /// The input libFuzzer saved (crash, leak, timeout, out of memory).
    artifact: Option<String>,
}

impl Outcome {
    fn summary(&self) -> String {
        let s = &self.stats;
        let runs = s.runs.map_or_else(|| "?".to_owned(), |r| r.to_string());
        let rate = match (s.runs, s.seconds) {
            (Some(r), Some(secs)) if secs > 0 => format!(" ({}/s)", r / secs),
            _ => String::new(),
        };
        let extra = [
            s.cov.map(|c| format!("cov {c}")),
            s.features.map(|f| format!("ft {f}")),
            s.corpus.map(|c| format!("corpus {c}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        format!(
            "{:<20} {:>12} runs in {:.0?}{rate}; {extra}: {}",
            self.target,
            runs,
            self.wall,
            if self.passed { "ok" } else { "FAILED" }
        )
    }
}

/// What libFuzzer reported about a run.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Stats {
    /// Inputs executed (`stat::number_of_executed_units`, else `Done N runs`).
    runs: Option<u64>,
    /// The run's length by libFuzzer's count (`Done N runs in S second(s)`).
    seconds: Option<u64>,
    /// Coverage counters and features of the last status line.
    cov: Option<u64>,
    features: Option<u64>,
    /// Inputs in the corpus at the end.
    corpus: Option<u64>,
}

impl Stats {
    /// Takes in one line of libFuzzer's output.
    fn read(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = n.trim().parse().ok().or(self.runs);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 123 runs in 61 second(s)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words[..] {
                self.runs = self.runs.or_else(|| runs.parse().ok());
                self.seconds = secs.parse().ok();
            }
        } else if line.starts_with('#') {
            // "#123\tNEW    cov: 45 ft: 67 corp: 8/90b ..."
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                let value = || pair[1].parse().ok();
                match pair[0] {
                    "cov:" => self.cov = value().or(self.cov),
                    "ft:" => self.features = value().or(self.features),
                    "corp:" => {
                        self.corpus = pair[1]
                            .split('/')
                            .next()
                            .and_then(|n| n.parse().ok())
                            .or(self.corpus);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Whether a libFuzzer line is only progress (one per new input or
/// periodic), which the log keeps and the terminal does not need.
fn is_progress(line: &str) -> bool {
    let status = line.starts_with('#')
        && line
            .split_whitespace()
            .nth(1)
            .is_some_and(|word| matches!(word, "NEW" | "REDUCE" | "pulse" | "RELOAD"));
    // "\tNEW_FUNC[1/2]: 0x... in <function>": newly covered functions.
    status || line.trim_start().starts_with("NEW_FUNC[")
}

/// Which lines of libFuzzer's output reach the terminal: not the progress
/// lines, nor the "recommended dictionary" it prints at the end.
#[derive(Debug, Default)]
struct Shown {
    in_dictionary: bool,
}

impl Shown {
    fn shows(&mut self, line: &str) -> bool {
        if line.starts_with("###### Recommended dictionary") {
            self.in_dictionary = true;
        }
        let shown = !self.in_dictionary && !is_progress(line);
        if line.starts_with("###### End of recommended dictionary") {
            self.in_dictionary = false;
        }
        shown
    }
}

/// The file libFuzzer saved a failing input to, from
/// "artifact_prefix='...'; Test unit written to .../crash-...". A
/// `slow-unit-` is only a note (libFuzzer goes on): it is not a failure.
fn artifact_of(line: &str) -> Option<String> {
    let (_, path) = line.split_once("Test unit written to ")?;
    let path = path.trim();
    let name = Path::new(path).file_name()?.to_string_lossy();
    (!name.starts_with("slow-unit-")).then(|| path.to_owned())
}

/// Runs one target for `seconds` and reports how it went.
fn run_target(
    toolchain: Toolchain,
    dir: &Path,
    logs: &Path,
    target: &str,
    seconds: u64,
) -> Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    fs::create_dir_all(&corpus)
        .with_context(|| format!("could not create {}", corpus.display()))?;
    let mut cmd = cargo_fuzz(toolchain);
    cmd.args(["run", "-a", target]).arg(&corpus);
    let seeds = dir.join("seeds").join(target);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1");
    let dict = dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let log_path = logs.join(format!("{target}.log"));
    let mut log = File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;

    println!();
    println!("==> fuzzing {target} for {seconds} s");
    println!("==> {}", describe(&cmd));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    let mut stats = Stats::default();
    let mut artifact = None;
    let mut shown = Shown::default();
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut raw = Vec::new();
        // Byte lines: a panic message may quote input that is not UTF-8.
        while reader.read_until(b'\n', &mut raw)? > 0 {
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end();
            writeln!(log, "{line}")?;
            stats.read(line);
            if let Some(path) = artifact_of(line) {
                artifact = Some(path);
            }
            if shown.shows(line) {
                eprintln!("{line}");
            }
            raw.clear();
        }
    }
    let status = child.wait()?;
    Ok(Outcome {
        target: target.to_owned(),
        passed: status.success() && artifact.is_none(),
        log: log_path,
        wall: started.elapsed(),
        stats,
        artifact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_give_seconds_and_targets() {
        assert_eq!(
            parse_args(&args(&[])).unwrap(),
            Args {
                seconds: DEFAULT_SECONDS,
                targets: vec![]
            }
        );
        assert_eq!(
            parse_args(&args(&["--seconds", "5", "transitions", "--seconds=7"])).unwrap(),
            Args {
                seconds: 7,
                targets: vec!["transitions".into()]
            }
        );
        for bad in [
            &["--seconds"][..],
            &["--seconds", "0"],
            &["--seconds=x"],
            &["-j"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_must_exist() {
        let all: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(select(&all, &[]).unwrap(), all);
        assert_eq!(select(&all, &["b".into()]).unwrap(), vec!["b".to_owned()]);
        let err = select(&all, &["c".into()]).unwrap_err().to_string();
        assert!(
            err.contains("unknown fuzz target(s) c") && err.contains("a, b"),
            "{err}"
        );
    }

    #[test]
    fn the_committed_targets_are_found() {
        let names = list_targets(&shell::project_root().join("fuzz")).unwrap();
        assert_eq!(
            names,
            ["session_config", "transitions", "ws_client_message"]
        );
    }

    #[test]
    fn nightly_is_recognised_in_rustup_listings() {
        assert!(has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n"
        ));
        assert!(has_nightly("nightly-2026-05-15-x86_64-unknown-linux-gnu\n"));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (active, default)\n1.95.0-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }

    #[test]
    fn libfuzzer_statistics_are_read() {
        let mut s = Stats::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 40Mb",
            "#4096\tpulse  cov: 30 ft: 40 corp: 5/77b lim: 43 exec/s: 2048 rss: 41Mb",
            "#5000\tNEW    cov: 31 ft: 42 corp: 6/80b lim: 43 exec/s: 2500 rss: 41Mb",
            "#812345\tDONE   cov: 31 ft: 45 corp: 9/99b lim: 43 exec/s: 13310 rss: 55Mb",
            "Done 812345 runs in 61 second(s)",
            "stat::number_of_executed_units: 812346",
            "stat::peak_rss_mb:              55",
        ] {
            s.read(line);
        }
        assert_eq!(
            s,
            Stats {
                runs: Some(812_346),
                seconds: Some(61),
                cov: Some(31),
                features: Some(45),
                corpus: Some(9),
            }
        );
        assert!(is_progress("#5000\tNEW    cov: 31 ft: 42"));
        assert!(is_progress("#4096\tpulse  cov: 30"));
        assert!(is_progress(
            "\tNEW_FUNC[1/9]: 0x55ce6c84e9a0 in serde_json::x"
        ));
        assert!(!is_progress("#812345\tDONE   cov: 31"));
        assert!(!is_progress("#2\tINITED cov: 12"));
        assert!(!is_progress(
            "thread '<unnamed>' panicked at fuzz_targets/x.rs:1:1:"
        ));
    }

    #[test]
    fn the_recommended_dictionary_is_left_out() {
        let mut shown = Shown::default();
        let lines = [
            "#100\tDONE   cov: 1",
            "###### Recommended dictionary. ######",
            "\"type\" # Uses: 141",
            "###### End of recommended dictionary. ######",
            "Done 100 runs in 1 second(s)",
        ];
        let kept: Vec<&str> = lines.into_iter().filter(|l| shown.shows(l)).collect();
        assert_eq!(kept, [lines[0], lines[4]]);
    }

    #[test]
    fn saved_inputs_are_found() {
        assert_eq!(
            artifact_of(
                "artifact_prefix='/r/fuzz/artifacts/t/'; Test unit written to /r/fuzz/artifacts/t/crash-abc"
            )
            .as_deref(),
            Some("/r/fuzz/artifacts/t/crash-abc")
        );
        assert_eq!(artifact_of("==1== ERROR: libFuzzer: deadly signal"), None);
        assert_eq!(
            artifact_of("artifact_prefix='/a/'; Test unit written to /a/slow-unit-0123"),
            None
        );
    }
}
