//! Tidy: the project's conventions and architecture invariants that a
//! machine can check, enforced by plain `cargo test` so that breaking one
//! fails the build instead of waiting for a reviewer to notice.
//!
//! Each test reports every offender (with its path) at once, not just the
//! first, so one run shows everything there is to fix.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

/// Crates that do I/O or read the wall clock. `kairos-domain` is pure: it
/// must not depend on any of them, even indirectly, so that the state
/// machine stays a function of (state, command, now) and tests need no
/// runtime.
const DOMAIN_FORBIDDEN_DEPS: &[&str] = &[
    "tokio",
    "mio",
    "redis",
    "deadpool",
    "deadpool-redis",
    "diesel",
    "diesel-async",
    "actix",
    "actix-web",
    "actix-rt",
    "actix-ws",
    "hyper",
    "reqwest",
    "tokio-postgres",
    "chrono",
];

/// `now` comes into the domain as an argument; these would read the clock
/// behind the caller's back. Built with `concat!` so that this file does not
/// match its own patterns.
const CLOCK_READS: &[&str] = &[concat!("SystemTime", "::now"), concat!("Instant", "::now")];

/// Macros that mark unfinished code.
const PLACEHOLDER_MACROS: &[&str] = &[concat!("todo", "!("), concat!("unimplemented", "!(")];

/// Attributes that hide a test or loosen what it checks. Matched as a prefix
/// followed by a non-identifier character, so `#[ignore]`,
/// `#[ignore = "why"]` and `#[should_panic(expected = "..")]` all count.
const TEST_WEAKENING_ATTRS: &[&str] = &[concat!("#[", "ignore"), concat!("#[", "should_panic")];

// ---------------------------------------------------------------------------
// The checks.

#[test]
fn every_rust_file_starts_with_a_module_doc() -> Result<()> {
    let mut offenders = Vec::new();
    for file in rust_files(&["crates", "xtask"])? {
        let Some(text) = read(&file)? else { continue };
        let first = text.lines().map(str::trim).find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            offenders.push(format!(
                "{}: first non-blank line is {:?}",
                rel(&file),
                first.unwrap_or("<empty file>")
            ));
        }
    }
    ensure!(
        offenders.is_empty(),
        "every .rs file must open with a `//!` comment saying why it exists:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn domain_depends_on_no_io_crate() -> Result<()> {
    let metadata = cargo_metadata()?;
    let closure = normal_dependency_closure(&metadata, "kairos-domain")?;
    let mut offenders: Vec<String> = closure
        .iter()
        .filter(|(name, _)| DOMAIN_FORBIDDEN_DEPS.contains(&name.as_str()))
        .map(|(_, chain)| chain.join(" -> "))
        .collect();
    offenders.sort();
    ensure!(
        offenders.is_empty(),
        "kairos-domain must depend on no I/O or wall-clock crate, but:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn domain_never_reads_the_clock() -> Result<()> {
    let src = root().join("crates/kairos-domain/src");
    ensure!(
        src.is_dir(),
        "{} is missing: update this test if the domain moved",
        rel(&src)
    );
    let offenders = find_patterns(&rust_files_under(&src)?, CLOCK_READS, |_, _| true)?;
    ensure!(
        offenders.is_empty(),
        "kairos-domain takes `now` as an argument and must not read a clock:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn no_placeholders_or_skipped_tests() -> Result<()> {
    let mut files = rust_files(&["crates"])?;
    files.extend(rust_files(&["xtask/src"])?);

    let mut offenders = find_patterns(&files, PLACEHOLDER_MACROS, |_, _| true)?;
    offenders.extend(find_patterns(&files, TEST_WEAKENING_ATTRS, |line, end| {
        // `#[ignore_this]` is some other attribute; only the bare name counts.
        !line[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })?);
    ensure!(
        offenders.is_empty(),
        "no placeholder macros, ignored tests or should_panic tests (finish the code, or \
         assert on the error instead):\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn every_crate_opts_into_workspace_lints() -> Result<()> {
    let mut manifests: Vec<PathBuf> = entries(&root().join("crates"))?
        .into_iter()
        .map(|dir| dir.join("Cargo.toml"))
        // A directory without a manifest is not a crate (yet).
        .filter(|manifest| manifest.is_file())
        .collect();
    manifests.push(root().join("xtask/Cargo.toml"));

    let mut offenders = Vec::new();
    for manifest in manifests {
        let Some(text) = read(&manifest)? else {
            continue;
        };
        if !uses_workspace_lints(&text) {
            offenders.push(rel(&manifest));
        }
    }
    ensure!(
        offenders.is_empty(),
        "every crate must have `[lints]\\nworkspace = true` so the workspace lints apply:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

/// The parser behind `every_crate_opts_into_workspace_lints`, checked on the
/// spellings Cargo accepts, so a false alarm cannot come from it.
#[test]
fn workspace_lints_are_recognised_in_every_spelling() {
    assert!(uses_workspace_lints(
        "[package]\nname = \"a\"\n\n[lints]\nworkspace = true\n"
    ));
    assert!(uses_workspace_lints(
        "[lints]  # shared\n workspace=true # yes\n"
    ));
    assert!(uses_workspace_lints("lints.workspace = true\n[package]\n"));
    assert!(uses_workspace_lints("lints = { workspace = true }\n"));
    assert!(!uses_workspace_lints("[package]\nname = \"a\"\n"));
    assert!(!uses_workspace_lints(
        "[lints]\n[features]\nworkspace = true\n"
    ));
    assert!(!uses_workspace_lints("[lints]\nworkspace = false\n"));
}

// ---------------------------------------------------------------------------
// Helpers.

fn root() -> PathBuf {
    // The tests run with CARGO_MANIFEST_DIR = xtask/, one level below the root.
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `path` relative to the workspace root, for readable reports.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The file's text, or `None` if it vanished since it was listed: the tree
/// may be edited while the tests run, and a deleted file breaks no rule.
fn read(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Entries of `dir`, sorted so reports come out in a stable order.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(paths),
        Err(err) => return Err(err).with_context(|| format!("could not list {}", dir.display())),
    };
    for entry in listing {
        paths.push(
            entry
                .with_context(|| format!("could not list {}", dir.display()))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

/// Every `.rs` file under the given directories (relative to the root).
fn rust_files(dirs: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(rust_files_under(&root().join(dir))?);
    }
    Ok(files)
}

/// Every `.rs` file under `dir`, skipping build output (`target`) and
/// hidden directories, which hold no code of ours.
fn rust_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for path in entries(&dir)? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Lines of `files` containing any of `patterns`, as `path:line: text`.
///
/// `accept(line, end)` gets the line and the byte offset just past the match
/// and decides whether that occurrence counts.
fn find_patterns(
    files: &[PathBuf],
    patterns: &[&str],
    accept: impl Fn(&str, usize) -> bool,
) -> Result<Vec<String>> {
    let mut hits = Vec::new();
    for file in files {
        let Some(text) = read(file)? else { continue };
        for (number, line) in text.lines().enumerate() {
            let found = patterns.iter().any(|pattern| {
                line.match_indices(pattern)
                    .any(|(start, _)| accept(line, start + pattern.len()))
            });
            if found {
                hits.push(format!("{}:{}: {}", rel(file), number + 1, line.trim()));
            }
        }
    }
    Ok(hits)
}

/// Whether a Cargo.toml opts into `[workspace.lints]`. A line-based reading
/// is enough for the spellings a manifest uses, and keeps a TOML parser out
/// of the dependencies.
fn uses_workspace_lints(manifest: &str) -> bool {
    let mut section = String::new();
    for raw in manifest.lines() {
        // Drop comments and all spaces: `workspace = true` == `workspace=true`.
        let line: String = raw
            .split('#')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let opted_in = match section.as_str() {
            "[lints]" => line == "workspace=true",
            // Dotted or inline keys before the first table.
            "" => line == "lints.workspace=true" || line == "lints={workspace=true}",
            _ => false,
        };
        if opted_in {
            return true;
        }
    }
    false
}

/// `cargo metadata` for the whole workspace, with every feature of our own
/// crates on, so an optional dependency cannot slip past the check.
fn cargo_metadata() -> Result<Value> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(root())
        .output()
        .context("could not run `cargo metadata`")?;
    ensure!(
        out.status.success(),
        "`cargo metadata` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("`cargo metadata` printed invalid JSON")
}

/// Every package `package` depends on through normal (not dev, not build)
/// dependencies, directly or not, each with the chain of packages that
/// brings it in (shortest first found), keyed by package name.
fn normal_dependency_closure(
    metadata: &Value,
    package: &str,
) -> Result<HashMap<String, Vec<String>>> {
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .context("metadata has no `packages`")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let name_of = |id: &str| names.get(id).copied().unwrap_or(id).to_owned();

    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("metadata has no `resolve.nodes`")?
        .iter()
        .filter_map(|node| Some((node["id"].as_str()?, node)))
        .collect();

    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("metadata has no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let start = members
        .iter()
        .copied()
        .find(|id| names.get(id) == Some(&package))
        .with_context(|| format!("`{package}` is not a workspace member"))?;

    // Breadth-first, so each chain reported is a shortest one.
    let mut chains: HashMap<&str, Vec<String>> = HashMap::from([(start, vec![name_of(start)])]);
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        let node = nodes
            .get(id)
            .with_context(|| format!("`{id}` is missing from the resolve graph"))?;
        let deps = node["deps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for dep in deps {
            // `kind` is null for a normal dependency, "dev" or "build" else.
            // An edge may carry several kinds; one normal kind is enough.
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if !normal || chains.contains_key(dep_id) {
                continue;
            }
            let mut chain = chains[id].clone();
            chain.push(name_of(dep_id));
            chains.insert(dep_id, chain);
            queue.push_back(dep_id);
        }
    }
    chains.remove(start);
    Ok(chains
        .into_iter()
        .map(|(id, chain)| (name_of(id), chain))
        .collect())
}

/// The closure logic on a small hand-written graph: dev and build edges must
/// not count, and what they bring in must not leak through other paths.
#[test]
fn closure_follows_only_normal_edges() -> Result<()> {
    let edge = |pkg: &str, kinds: &[Option<&str>]| {
        serde_json::json!({
            "pkg": pkg,
            "dep_kinds": kinds.iter().map(|k| serde_json::json!({ "kind": k, "target": null })).collect::<Vec<_>>(),
        })
    };
    let metadata = serde_json::json!({
        "packages": [
            { "id": "d", "name": "kairos-domain" },
            { "id": "s", "name": "serde" },
            { "id": "t", "name": "tokio" },
            { "id": "c", "name": "cc" },
            { "id": "m", "name": "mio" },
        ],
        "workspace_members": ["d"],
        "resolve": { "nodes": [
            { "id": "d", "deps": [edge("s", &[None]), edge("t", &[Some("dev")]), edge("c", &[Some("build")])] },
            { "id": "s", "deps": [edge("m", &[Some("dev"), None])] },
            { "id": "t", "deps": [] },
            { "id": "c", "deps": [] },
            { "id": "m", "deps": [] },
        ] },
    });
    let closure = normal_dependency_closure(&metadata, "kairos-domain")?;
    let mut names: Vec<&str> = closure.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["mio", "serde"]);
    assert_eq!(closure["mio"], ["kairos-domain", "serde", "mio"]);
    Ok(())
}
