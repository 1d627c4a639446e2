//! Tidy: the project's conventions and architecture invariants that a
//! machine can check, enforced by plain `cargo test` so that breaking one
//! fails the build instead of waiting for a reviewer to notice.
//!
//! Each test reports every offender (with its path) at once, not just the
//! first, so one run shows everything there is to fix.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

/// The workspace crates each workspace crate may depend on, one row per
/// crate in the order of docs/architecture.md's crate headings: (crate,
/// normal and build dependencies, additional dev-dependencies). A crate may
/// always depend on itself (a dev-dependency that turns on a feature). A new
/// crate gets a row here (and a heading there), or the tidy test fails.
const ALLOWED_WORKSPACE_DEPS: &[(&str, &[&str], &[&str])] = &[
    // The core: pure, depends on nothing of ours.
    ("kairos-domain", &[], &[]),
    // Adapters: the core's ports and nothing else of ours. (A crate shared
    // by the Redis adapters, such as their connection settings, goes in
    // their rows and gets a row of its own.)
    ("adapter-memory", &["kairos-domain"], &[]),
    // How the Redis adapters reach Redis (URL, mode, TLS, timeouts): shared
    // by store and bus so neither depends on the other; knows no port.
    ("redis-conn", &[], &[]),
    // Sleeping to the microsecond (a timerfd): a utility of the server's
    // local timers and the load generator's open loops; knows nothing of ours.
    ("precise-sleep", &[], &[]),
    (
        "store-redis",
        &["kairos-domain", "redis-conn"],
        &["adapter-memory", "test-support"],
    ),
    (
        "bus-redis",
        &["kairos-domain", "redis-conn"],
        &["test-support"],
    ),
    ("audit-diesel", &["kairos-domain"], &["test-support"]),
    // The webhook sender (reqwest, DNS, HMAC): the core's types only.
    ("webhook-http", &["kairos-domain"], &[]),
    // The transport: the core only; tests may run it on the memory adapters.
    (
        "http-actix",
        &["kairos-domain"],
        &["adapter-memory", "test-support"],
    ),
    // The composition root knows everything.
    (
        "server",
        &[
            "kairos-domain",
            "adapter-memory",
            "redis-conn",
            "store-redis",
            "bus-redis",
            "audit-diesel",
            "webhook-http",
            "http-actix",
            "precise-sleep",
        ],
        &["test-support"],
    ),
    // A client of the wire contract, like any other: through the Rust
    // client only, none of the server's crates.
    ("loadgen", &["kairos-client", "precise-sleep"], &[]),
    // The Rust client: its own wire types, none of our crates; its tests
    // run the real transport on the memory adapters.
    (
        "kairos-client",
        &[],
        &[
            "kairos-domain",
            "adapter-memory",
            "http-actix",
            "test-support",
        ],
    ),
    // What the tests share (free ports, the test Redis, a test's own
    // sockets): a dev-dependency of the crates above, none of ours itself.
    ("test-support", &[], &[]),
    ("xtask", &[], &[]),
];

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

#[test]
fn no_module_import_cycles_inside_a_crate() -> Result<()> {
    let metadata = cargo_metadata()?;
    let mut reports = Vec::new();
    for root in crate_roots(&metadata)? {
        let tree = ModuleTree::load(&root.file)?;
        for cycle in tree.cycles() {
            let names: Vec<String> = cycle.modules.iter().map(module_name).collect();
            let mut report = format!(
                "{} ({}): {} import each other in a circle:",
                root.package,
                rel(&root.file),
                names.join(", ")
            );
            for (from, to, at) in &cycle.edges {
                report.push_str(&format!(
                    "\n    {} -> {}  ({at})",
                    module_name(from),
                    module_name(to)
                ));
            }
            reports.push(report);
        }
    }
    ensure!(
        reports.is_empty(),
        "no module of a crate may import, through a chain of `crate::`/`super::` paths, a \
         module that imports it back (move what both need into a module of its own):\n{}",
        reports.join("\n")
    );
    Ok(())
}

#[test]
fn crates_depend_only_on_the_crates_the_architecture_allows() -> Result<()> {
    let metadata = cargo_metadata()?;
    let packages = metadata["packages"]
        .as_array()
        .context("metadata has no `packages`")?;
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("metadata has no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let ours: Vec<&Value> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
        .collect();
    let names: BTreeSet<&str> = ours.iter().filter_map(|p| p["name"].as_str()).collect();

    let mut offenders = Vec::new();
    for (name, _, _) in ALLOWED_WORKSPACE_DEPS {
        if !names.contains(name) {
            offenders.push(format!(
                "{name}: has a row in ALLOWED_WORKSPACE_DEPS but is no workspace crate"
            ));
        }
    }
    for package in ours {
        let name = package["name"].as_str().unwrap_or("?");
        let Some((_, normal, dev)) = ALLOWED_WORKSPACE_DEPS.iter().find(|(n, _, _)| *n == name)
        else {
            offenders.push(format!(
                "{name}: no row in ALLOWED_WORKSPACE_DEPS (say which of our crates it may use)"
            ));
            continue;
        };
        let deps = package["dependencies"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for dep in deps {
            let Some(dep_name) = dep["name"].as_str() else {
                continue;
            };
            if dep_name == name || !names.contains(dep_name) {
                continue;
            }
            // `kind` is null for a normal dependency, "dev" or "build" else.
            let is_dev = dep["kind"].as_str() == Some("dev");
            let allowed = normal.contains(&dep_name) || (is_dev && dev.contains(&dep_name));
            if !allowed {
                let kind = dep["kind"].as_str().unwrap_or("normal");
                offenders.push(format!("{name} -> {dep_name} ({kind} dependency)"));
            }
        }
    }
    ensure!(
        offenders.is_empty(),
        "a crate may depend only on the workspace crates its row of ALLOWED_WORKSPACE_DEPS \
         (xtask/tests/tidy.rs, after docs/architecture.md) names:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

#[test]
fn every_crate_root_doc_has_a_layout_naming_all_its_modules() -> Result<()> {
    let metadata = cargo_metadata()?;
    let mut offenders = Vec::new();
    for root in crate_roots(&metadata)? {
        let Some(text) = read(&root.file)? else {
            continue;
        };
        let tree = ModuleTree::load(&root.file)?;
        let modules: Vec<&str> = tree
            .modules
            .keys()
            .filter(|path| path.len() == 1)
            .map(|path| path[0].as_str())
            .collect();
        if modules.is_empty() {
            continue;
        }
        let Some(layout) = layout_section(&text) else {
            offenders.push(format!(
                "{}: its `//!` doc has no `# Layout` section (modules: {})",
                rel(&root.file),
                modules.join(", ")
            ));
            continue;
        };
        let missing: Vec<&str> = modules
            .into_iter()
            .filter(|module| !names_word(&layout, module))
            .collect();
        if !missing.is_empty() {
            offenders.push(format!(
                "{}: `# Layout` does not name {}",
                rel(&root.file),
                missing.join(", ")
            ));
        }
    }
    ensure!(
        offenders.is_empty(),
        "every crate root's `//!` doc has a `# Layout` section naming each module the root \
         declares:\n{}",
        offenders.join("\n")
    );
    Ok(())
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

/// The root file of one lib or bin target of a workspace crate.
struct CrateRoot {
    package: String,
    file: PathBuf,
}

/// The roots of every lib and bin target of the workspace's crates, from
/// `cargo metadata`. Tests, benches and examples are not modules of a crate.
fn crate_roots(metadata: &Value) -> Result<Vec<CrateRoot>> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("metadata has no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut roots = Vec::new();
    for package in metadata["packages"]
        .as_array()
        .context("metadata has no `packages`")?
    {
        if !package["id"]
            .as_str()
            .is_some_and(|id| members.contains(id))
        {
            continue;
        }
        let name = package["name"].as_str().unwrap_or("?");
        for target in package["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let kinds = target["kind"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let code = kinds
                .iter()
                .filter_map(Value::as_str)
                .any(|k| matches!(k, "lib" | "rlib" | "proc-macro" | "bin"));
            if let (true, Some(file)) = (code, target["src_path"].as_str()) {
                roots.push(CrateRoot {
                    package: name.to_owned(),
                    file: PathBuf::from(file),
                });
            }
        }
    }
    roots.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(roots)
}

/// A module by its path from the crate root (`[]` is the root itself).
type ModPath = Vec<String>;

fn module_name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// One strongly connected set of modules, with the imports that tie it.
struct Cycle {
    modules: Vec<ModPath>,
    /// (importer, imported, where: `path:line`), first occurrence of each.
    edges: Vec<(ModPath, ModPath, String)>,
}

/// The modules of one crate (file modules and inline ones, test modules
/// left out) and which imports which.
///
/// Module A imports module B when A's code or doc comments (intra-doc
/// links count: rustdoc resolves them like `use`) hold a path
/// `crate::b::..`, `super::..` or `self::..`, including each path of a
/// `use crate::{b, c::d}` group, that names B or an item in it (the longest
/// prefix of the path that is a module). An import between a module and
/// its ancestor is not counted: a parent declares and re-exports its
/// children, and a child may use its parent.
#[derive(Default)]
struct ModuleTree {
    /// Each module, with the file it is in.
    modules: BTreeMap<ModPath, PathBuf>,
    /// (importer, absolute path it names, `path:line`).
    refs: Vec<(ModPath, Vec<String>, String)>,
}

impl ModuleTree {
    fn load(root: &Path) -> Result<Self> {
        let mut tree = Self::default();
        tree.modules.insert(Vec::new(), root.to_path_buf());
        let dir = root.parent().unwrap_or(root).to_path_buf();
        tree.scan_file(root, Vec::new(), dir)?;
        Ok(tree)
    }

    /// Scans `file`, the module `module`, whose `mod x;` children live in `dir`.
    fn scan_file(&mut self, file: &Path, module: ModPath, dir: PathBuf) -> Result<()> {
        let Some(text) = read(file)? else {
            return Ok(());
        };
        let tokens = lex(&text);
        let at = |line: usize| format!("{}:{line}", rel(file));
        // Open inline modules: (path, children's dir, brace depth inside it).
        let mut stack: Vec<(ModPath, PathBuf, usize)> = vec![(module, dir, 0)];
        let mut depth = 0;
        let mut attrs: Vec<String> = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let (current, current_dir) = match stack.last() {
                Some((m, d, _)) => (m.clone(), d.clone()),
                None => break,
            };
            match &tokens[i].kind {
                Tok::Doc(doc) => {
                    for path in doc_paths(doc) {
                        self.add_ref(&current, &path, at(tokens[i].line));
                    }
                    i += 1;
                    continue;
                }
                Tok::Punct(p) if p == "#" => {
                    // An attribute: `#[..]` is kept for the next item, `#![..]` dropped.
                    let inner = tokens.get(i + 1).is_some_and(|t| t.is("!"));
                    let open = if inner { i + 2 } else { i + 1 };
                    if tokens.get(open).is_some_and(|t| t.is("[")) {
                        let close = matching(&tokens, open);
                        // Paths in attributes count (`#[utoipa::path(.., body = crate::x::Y)]`).
                        let mut k = open + 1;
                        while k < close {
                            if starts_path(&tokens, k) {
                                let (paths, next) = use_tree(&tokens, k);
                                for path in paths {
                                    self.add_ref(&current, &path, at(tokens[k].line));
                                }
                                k = next.max(k + 1);
                            } else {
                                k += 1;
                            }
                        }
                        if !inner {
                            attrs.push(
                                tokens[open + 1..close]
                                    .iter()
                                    .map(Token::text)
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            );
                        }
                        i = close + 1;
                        continue;
                    }
                }
                Tok::Ident(word) if word == "pub" => {
                    i += 1;
                    if tokens.get(i).is_some_and(|t| t.is("(")) {
                        i = matching(&tokens, i) + 1;
                    }
                    continue;
                }
                Tok::Ident(word) if word == "mod" => {
                    if let Some(Tok::Ident(name)) = tokens.get(i + 1).map(|t| &t.kind) {
                        let test_only = attrs.iter().any(|a| a == "cfg ( test )");
                        let mut child = current.clone();
                        child.push(name.clone());
                        let child_dir = current_dir.join(name);
                        match tokens.get(i + 2) {
                            Some(t) if t.is(";") => {
                                if !test_only {
                                    let explicit = attrs.iter().find_map(|a| path_attr(a));
                                    let file_dir = file.parent().unwrap_or(file);
                                    let (child_file, dir) = match explicit {
                                        Some(p) => {
                                            let f = file_dir.join(p);
                                            let d = f.with_extension("");
                                            (f, d)
                                        }
                                        None => {
                                            let flat = current_dir.join(format!("{name}.rs"));
                                            if flat.is_file() {
                                                (flat, child_dir)
                                            } else {
                                                (child_dir.join("mod.rs"), child_dir)
                                            }
                                        }
                                    };
                                    let dir = if child_file.ends_with("mod.rs") {
                                        child_file.parent().unwrap_or(&dir).to_path_buf()
                                    } else {
                                        dir
                                    };
                                    self.modules.insert(child.clone(), child_file.clone());
                                    self.scan_file(&child_file, child, dir)?;
                                }
                                attrs.clear();
                                i += 3;
                                continue;
                            }
                            Some(t) if t.is("{") => {
                                attrs.clear();
                                if test_only {
                                    i = matching(&tokens, i + 2) + 1;
                                } else {
                                    depth += 1;
                                    self.modules.insert(child.clone(), file.to_path_buf());
                                    stack.push((child, child_dir, depth));
                                    i += 3;
                                }
                                continue;
                            }
                            _ => {}
                        }
                    }
                }
                Tok::Ident(_) if starts_path(&tokens, i) => {
                    let line = tokens[i].line;
                    let (paths, next) = use_tree(&tokens, i);
                    for path in paths {
                        self.add_ref(&current, &path, at(line));
                    }
                    attrs.clear();
                    i = next.max(i + 1);
                    continue;
                }
                Tok::Punct(p) if p == "{" => depth += 1,
                Tok::Punct(p) if p == "}" => {
                    if stack.len() > 1 && stack.last().is_some_and(|(_, _, d)| *d == depth) {
                        stack.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
            attrs.clear();
            i += 1;
        }
        Ok(())
    }

    /// Records that `from` names `path` (`crate`/`super`/`self`-relative).
    fn add_ref(&mut self, from: &ModPath, path: &[String], at: String) {
        let mut abs: Vec<String> = Vec::new();
        let mut rest = path;
        match path.first().map(String::as_str) {
            Some("crate") => rest = &path[1..],
            Some("self") => {
                abs = from.clone();
                rest = &path[1..];
            }
            Some("super") => {
                abs = from.clone();
                while rest.first().is_some_and(|s| s == "super") {
                    if abs.pop().is_none() {
                        return; // `super` above the root: not ours to judge.
                    }
                    rest = &rest[1..];
                }
            }
            _ => return,
        }
        abs.extend(rest.iter().filter(|s| *s != "self").cloned());
        self.refs.push((from.clone(), abs, at));
    }

    /// The longest prefix of `path` that is a module.
    fn resolve(&self, path: &[String]) -> ModPath {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains_key(prefix))
            .unwrap_or_default()
    }

    /// Every set of two or more modules that import each other, directly or
    /// through others.
    fn cycles(&self) -> Vec<Cycle> {
        let mut edges: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
        for (from, path, at) in &self.refs {
            let to = self.resolve(path);
            if to.starts_with(from) || from.starts_with(&to) {
                continue;
            }
            edges
                .entry((from.clone(), to))
                .or_insert_with(|| at.clone());
        }
        let graph: BTreeMap<&ModPath, Vec<&ModPath>> =
            edges.keys().fold(BTreeMap::new(), |mut g, (from, to)| {
                g.entry(from).or_insert_with(Vec::new).push(to);
                g
            });
        let reach = |start: &ModPath| -> BTreeSet<ModPath> {
            let mut seen = BTreeSet::new();
            let mut pending = vec![start.clone()];
            while let Some(m) = pending.pop() {
                for next in graph.get(&m).map(Vec::as_slice).unwrap_or(&[]) {
                    if seen.insert((*next).clone()) {
                        pending.push((*next).clone());
                    }
                }
            }
            seen
        };
        let reachable: BTreeMap<&ModPath, BTreeSet<ModPath>> =
            self.modules.keys().map(|m| (m, reach(m))).collect();
        let mut placed: BTreeSet<&ModPath> = BTreeSet::new();
        let mut cycles = Vec::new();
        for (module, from_here) in &reachable {
            if placed.contains(module) || !from_here.contains(*module) {
                continue;
            }
            let members: Vec<ModPath> = from_here
                .iter()
                .filter(|other| reachable.get(*other).is_some_and(|r| r.contains(*module)))
                .cloned()
                .collect();
            placed.extend(reachable.keys().filter(|m| members.contains(m)));
            let inside: Vec<(ModPath, ModPath, String)> = edges
                .iter()
                .filter(|((f, t), _)| members.contains(f) && members.contains(t))
                .map(|((f, t), at)| (f.clone(), t.clone(), at.clone()))
                .collect();
            cycles.push(Cycle {
                modules: members,
                edges: inside,
            });
        }
        cycles
    }
}

/// The file named by a `path = "x"` attribute, if this is one.
fn path_attr(attr: &str) -> Option<String> {
    let rest = attr.strip_prefix("path = ")?;
    rest.strip_prefix('"')?.strip_suffix('"').map(str::to_owned)
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(String),
    /// A string literal, unescaped enough for a `#[path]`.
    Str(String),
    /// The text of a doc comment (`///`, `//!`, `/** */`, `/*! */`).
    Doc(String),
    /// Numbers, char literals: nothing a path is made of.
    Other,
}

struct Token {
    kind: Tok,
    line: usize,
}

impl Token {
    fn is(&self, punct: &str) -> bool {
        matches!(&self.kind, Tok::Punct(p) if p == punct)
    }

    fn text(&self) -> String {
        match &self.kind {
            Tok::Ident(s) | Tok::Punct(s) => s.clone(),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Doc(_) | Tok::Other => String::new(),
        }
    }
}

/// Rust source as tokens, enough to follow modules and paths: comments
/// dropped (doc comments kept as text), strings, chars and lifetimes read
/// whole so that nothing inside them looks like code.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let ident_start = |c: char| c.is_alphabetic() || c == '_';
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            let body: String = chars[i..end].iter().collect();
            let doc =
                (body.starts_with("///") && !body.starts_with("////")) || body.starts_with("//!");
            if doc {
                tokens.push(Token {
                    kind: Tok::Doc(body[3..].to_owned()),
                    line,
                });
            }
            i = end;
        } else if c == '/' && at(i + 1) == '*' {
            let doc = matches!(at(i + 2), '*' | '!') && at(i + 3) != '/';
            let mut nesting = 0;
            let mut j = i;
            while j < chars.len() {
                if chars[j] == '/' && at(j + 1) == '*' {
                    nesting += 1;
                    j += 2;
                } else if chars[j] == '*' && at(j + 1) == '/' {
                    nesting -= 1;
                    j += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    if chars[j] == '\n' {
                        line += 1;
                    }
                    j += 1;
                }
            }
            if doc {
                tokens.push(Token {
                    kind: Tok::Doc(chars[i..j].iter().collect()),
                    line: start_line,
                });
            }
            i = j;
        } else if (c == 'r' || c == 'b' || c == 'c')
            && (at(i + 1) == '"'
                || (at(i + 1) == '#' && c == 'r')
                || (c == 'b' && at(i + 1) == 'r' && matches!(at(i + 2), '"' | '#')))
        {
            // Raw and byte strings: r"..", r#".."#, b"..", br#".."#, c"..".
            let mut j = i + 1;
            if chars[j] == 'r' {
                j += 1;
            }
            let raw = c == 'r' || chars[i + 1] == 'r';
            let hashes = (j..chars.len()).take_while(|&k| chars[k] == '#').count();
            j += hashes;
            if at(j) != '"' {
                // `r#ident`, a raw identifier.
                let end = (j..chars.len())
                    .find(|&k| !ident_char(chars[k]))
                    .unwrap_or(chars.len());
                tokens.push(Token {
                    kind: Tok::Ident(chars[j..end].iter().collect()),
                    line,
                });
                i = end;
                continue;
            }
            j += 1;
            let body_start = j;
            loop {
                if j >= chars.len() {
                    break;
                }
                if !raw && chars[j] == '\\' {
                    j += 2;
                    continue;
                }
                if chars[j] == '\n' {
                    line += 1;
                }
                if chars[j] == '"' && (j + 1..j + 1 + hashes).all(|k| at(k) == '#') {
                    break;
                }
                j += 1;
            }
            tokens.push(Token {
                kind: Tok::Str(chars[body_start..j.min(chars.len())].iter().collect()),
                line: start_line,
            });
            i = j + 1 + hashes;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                }
                if at(j) == '\n' {
                    line += 1;
                }
                j += 1;
            }
            tokens.push(Token {
                kind: Tok::Str(chars[i + 1..j.min(chars.len())].iter().collect()),
                line: start_line,
            });
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                let end = (i + 2..chars.len())
                    .find(|&k| chars[k] == '\'')
                    .unwrap_or(chars.len());
                i = end + 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
            tokens.push(Token {
                kind: Tok::Other,
                line,
            });
        } else if ident_start(c) {
            let end = (i..chars.len())
                .find(|&k| !ident_char(chars[k]))
                .unwrap_or(chars.len());
            tokens.push(Token {
                kind: Tok::Ident(chars[i..end].iter().collect()),
                line,
            });
            i = end;
        } else if c.is_ascii_digit() {
            let end = (i..chars.len())
                .find(|&k| !(ident_char(chars[k]) || chars[k] == '.'))
                .unwrap_or(chars.len());
            tokens.push(Token {
                kind: Tok::Other,
                line,
            });
            i = end;
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                kind: Tok::Punct("::".to_owned()),
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                kind: Tok::Punct(c.to_string()),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// The index of the bracket closing the one at `open` (`(`, `[` or `{`).
fn matching(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, token) in tokens.iter().enumerate().skip(open) {
        if token.is("(") || token.is("[") || token.is("{") {
            depth += 1;
        } else if token.is(")") || token.is("]") || token.is("}") {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return k;
            }
        }
    }
    tokens.len()
}

/// Whether a `crate::`, `super::` or `self::` path starts at `i` (and not
/// in the middle of one, as `self` in `a::self`, which [`use_tree`] reads).
fn starts_path(tokens: &[Token], i: usize) -> bool {
    matches!(&tokens[i].kind, Tok::Ident(w) if matches!(w.as_str(), "crate" | "super" | "self"))
        && tokens.get(i + 1).is_some_and(|t| t.is("::"))
        && !(i > 0 && tokens[i - 1].is("::"))
}

/// The paths of the path or use tree starting at `start` (`a::b::{c, d::e}`
/// is `a::b::c` and `a::b::d::e`), and the index just past it.
fn use_tree(tokens: &[Token], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    loop {
        match tokens.get(i).map(|t| &t.kind) {
            Some(Tok::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
                if tokens.get(i).is_some_and(|t| t.is("::")) {
                    i += 1;
                    continue;
                }
                return (vec![prefix], i);
            }
            Some(Tok::Punct(p)) if p == "{" => {
                let end = matching(tokens, i);
                let mut paths = Vec::new();
                i += 1;
                while i < end {
                    if tokens[i].is(",") {
                        i += 1;
                        continue;
                    }
                    let (subs, next) = use_tree(tokens, i);
                    for sub in subs {
                        let mut path = prefix.clone();
                        path.extend(sub);
                        paths.push(path);
                    }
                    // Skip `as name` and anything else up to the next item.
                    i = next.max(i + 1);
                    while i < end && !tokens[i].is(",") {
                        i += 1;
                    }
                }
                return (paths, end + 1);
            }
            _ => return (vec![prefix], i),
        }
    }
}

/// The `crate::`/`super::`/`self::` paths in the text of a doc comment.
fn doc_paths(doc: &str) -> Vec<Vec<String>> {
    let tokens = lex(&doc.replace(['\'', '"'], " "));
    let mut paths = Vec::new();
    for k in 0..tokens.len() {
        if starts_path(&tokens, k) {
            paths.extend(use_tree(&tokens, k).0);
        }
    }
    paths
}

/// The `# Layout` section of a file's leading `//!` doc, headings and code
/// blocks aside: from its heading to the next heading.
fn layout_section(text: &str) -> Option<String> {
    let doc: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .take_while(|line| line.starts_with("//!") || line.starts_with("#!") || line.is_empty())
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    let mut in_code = false;
    let mut section: Option<Vec<&str>> = None;
    for line in doc {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let heading = !in_code && line.starts_with('#');
        match (&mut section, heading) {
            (None, true) if line.trim_end() == "# Layout" => section = Some(Vec::new()),
            (Some(_), true) => break,
            (Some(lines), false) => lines.push(line),
            _ => {}
        }
    }
    section.map(|lines| lines.join("\n"))
}

/// Whether `text` holds `word` with no identifier character on either side.
fn names_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(start, _)| {
        !text[..start].chars().next_back().is_some_and(ident)
            && !text[start + word.len()..].chars().next().is_some_and(ident)
    })
}

/// The path reader on the spellings it must see through.
#[test]
fn paths_are_read_through_groups_comments_and_strings() {
    let source = r#"
        use crate::{a, b::{self, C}, d::E as F};
        // crate::commented_out
        /// See [`crate::linked`].
        fn f() { let _ = "crate::in_a_string"; let _ = 'x'; let _: &'static str = super::up::X; }
        pub(crate) fn g() { self::down::h(); }
    "#;
    let mut found = Vec::new();
    let tokens = lex(source);
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].kind {
            Tok::Doc(doc) => found.extend(doc_paths(doc)),
            Tok::Ident(_) if starts_path(&tokens, i) => {
                let (paths, next) = use_tree(&tokens, i);
                found.extend(paths);
                i = next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a",
            "crate::b::self",
            "crate::b::C",
            "crate::d::E",
            "crate::linked",
            "super::up::X",
            "self::down::h",
        ]
    );
}

/// The cycle finder on a small crate: a cycle through three modules is one
/// report naming all three; a child using its parent is no cycle; test
/// modules do not count.
#[test]
fn cycles_are_found_whole_and_parents_are_not_cycles() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tidy-cycles-{}", std::process::id()));
    fs::create_dir_all(dir.join("p"))?;
    let files = [
        ("lib.rs", "//! x\nmod a;\nmod b;\nmod c;\nmod p;\nmod d;\n"),
        ("a.rs", "//! x\nuse crate::b::X;\n"),
        ("b.rs", "//! x\nuse crate::{c::Y};\n"),
        ("c.rs", "//! x\n/// [`crate::a`]\nfn f() {}\n"),
        ("p/mod.rs", "//! x\npub mod q;\npub use self::q::Z;\n"),
        ("p/q.rs", "//! x\nuse super::W;\n"),
        (
            "d.rs",
            "//! x\nuse crate::p::Z;\n#[cfg(test)]\nmod tests { use crate::d2; }\n",
        ),
    ];
    for (name, text) in files {
        fs::write(dir.join(name), text)?;
    }
    let tree = ModuleTree::load(&dir.join("lib.rs"));
    let _ = fs::remove_dir_all(&dir);
    let cycles = tree?.cycles();
    let found: Vec<Vec<String>> = cycles
        .iter()
        .map(|c| c.modules.iter().map(module_name).collect())
        .collect();
    assert_eq!(found, [["a", "b", "c"]]);
    assert_eq!(cycles[0].edges.len(), 3);
    Ok(())
}

#[test]
fn layout_sections_are_read_past_code_blocks() {
    let text = "//! # x\n//!\n//! # Layout\n//!\n//! - [`store`]: the store.\n//! \
                - `wire.rs`: frames.\n//!\n//! ```\n//! # fn main() {}\n//! ```\n//! \
                # Other\n//! outbox\n\nmod store;\n";
    let layout = layout_section(text).unwrap_or_default();
    assert!(names_word(&layout, "store"));
    assert!(names_word(&layout, "wire"));
    assert!(!names_word(&layout, "outbox"));
    assert!(!names_word(&layout, "stor"));
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
