//! `cargo xtask deploy-check [ROOT]`: checks everything under `deploy/`
//! (and the CI workflow) without a Docker engine, a cluster or a PaaS, each
//! file with the tool that knows its format:
//!
//! | what | how |
//! | --- | --- |
//! | `deploy/Dockerfile` | hadolint |
//! | `deploy/k8s/*.yaml` | kubernetes-validate `--strict` against the schemas of [`KUBERNETES_VERSION`]; also the `kubectl kustomize` output, when kubectl is installed |
//! | `deploy/docker-compose*.yml` | check-jsonschema, builtin `vendor.compose-spec` |
//! | `.github/workflows/*.yml` | check-jsonschema, builtin `vendor.github-workflows` |
//! | `deploy/prometheus/` | `promtool check rules`, `promtool test rules`, `promtool check config` |
//! | `deploy/nginx/` | templates rendered for loopback, then `nginx -t` |
//! | `deploy/grafana/kairos-dashboard.json` | parses; has every metric of `crates/http-actix/src/metrics.rs` and `crates/server/src/workers.rs`; its PromQL parses (promtool) |
//! | `deploy/fly.toml`, every YAML file | parse |
//!
//! plus the agreements between files that no single tool sees: the preStop
//! sleep equals `SHUTDOWN_DRAIN_SECONDS` and the grace period exceeds both,
//! the WebSocket alert sits at 90% of `WS_MAX_CONNECTIONS` everywhere, no
//! balancer is sticky, every alert is documented in `docs/operations.md`.
//!
//! The Python tools live in a venv cached under `target/xtask/venv`, built
//! from the pinned `xtask/deploy-tools.txt` and rebuilt only when that file
//! changes; promtool (Debian's `prometheus`) and nginx are installed with
//! apt-get when missing. Every tool runs offline: the schemas ship inside
//! the packages, and the tools run with an HTTP(S) proxy that refuses every
//! connection, so a tool that tried to download something would fail here
//! instead of depending on the network in silence.
//!
//! `ROOT` (default: this workspace) is the tree to check, so that tests can
//! check a copy with a file broken on purpose. Every check runs, and all
//! failures are reported together.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::shell::{self, describe, which};
use crate::{pyvenv, services};

/// The Kubernetes release whose schemas the manifests must satisfy. It must
/// be one that kubernetes-validate ships (see `xtask/deploy-tools.txt`).
const KUBERNETES_VERSION: &str = "1.33.0";

/// Pinned Python tools; the venv is rebuilt whenever this text changes.
const REQUIREMENTS: &str = include_str!("../deploy-tools.txt");

/// Metrics the dashboard and the alerts use that are not registered in
/// `crates/http-actix/src/metrics.rs` (yet): the event bus reports them.
const BUS_METRICS: &[&str] = &[
    "kairos_bus_subscriber_up",
    "kairos_bus_publish_failures_total",
];

/// Where the metrics are registered, relative to the root: the transport's
/// and the background workers' (one registry at run time).
const METRICS_FILES: &[&str] = &[
    "crates/http-actix/src/metrics.rs",
    "crates/server/src/workers.rs",
];
/// How messages name them.
const METRICS_RS: &str = "crates/http-actix/src/metrics.rs or crates/server/src/workers.rs";

/// The placeholders of `deploy/nginx/templates/*.template`, with values
/// for a loopback rendering (`nginx -t` binds nothing, so any port does).
const NGINX_LOOPBACK: &[(&str, &str)] = &[
    ("KAIROS_LISTEN", "127.0.0.1:18080"),
    ("KAIROS_RESOLVER", ""),
    (
        "KAIROS_UPSTREAM_SERVERS",
        "server 127.0.0.1:18081 max_fails=3 fail_timeout=5s; \
         server 127.0.0.1:18082 max_fails=3 fail_timeout=5s;",
    ),
];

/// Balancing directives that pin a client to an instance. SyncKairos needs
/// plain round-robin: any instance serves any request.
const STICKY_DIRECTIVES: &[&str] = &[
    "ip_hash",
    "hash",
    "sticky",
    "least_conn",
    "least_time",
    "random",
];

/// An HTTP(S) proxy nobody listens on: any download attempt fails at once.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// One check: its name in the report, and what it runs.
type Check = fn(&Ctx) -> Result<()>;

const CHECKS: &[(&str, Check)] = &[
    ("Dockerfile (hadolint)", dockerfile),
    ("Kubernetes manifests (kubernetes-validate)", kubernetes),
    (
        "Kubernetes: probes, drain, affinity, autoscaling",
        kubernetes_agreements,
    ),
    ("docker-compose files (compose-spec schema)", compose),
    ("GitHub workflows (github-workflows schema)", workflows),
    ("Prometheus rules and config (promtool)", prometheus),
    (
        "alerts: labels, annotations, documentation",
        alerts_documented,
    ),
    ("nginx (rendered for loopback, nginx -t)", nginx),
    ("Grafana dashboard", dashboard),
    ("WS_MAX_CONNECTIONS and its alert agree", ws_limit),
    ("fly.toml and every YAML file parse", parse_all),
];

/// `cargo xtask deploy-check [ROOT]`.
pub(crate) fn run(args: &[OsString]) -> Result<()> {
    let root = match args {
        [] => shell::project_root(),
        [root] => PathBuf::from(root),
        _ => bail!("usage: cargo xtask deploy-check [ROOT]"),
    };
    check_tree(&root)
}

/// Runs every check on the tree at `root` and fails if any fails.
pub(crate) fn check_tree(root: &Path) -> Result<()> {
    ensure!(
        root.join("deploy").is_dir(),
        "{} has no deploy/ directory to check",
        root.display()
    );
    let tools = Tools::ensure()?;
    let scratch = Scratch::new()?;
    let deploy = root.join("deploy");
    let yaml = tools.yaml_files(&yaml_files_under(&deploy)?)?;
    let ctx = Ctx {
        root: root.to_path_buf(),
        deploy,
        tools,
        scratch: scratch.0.clone(),
        yaml,
    };
    println!("==> checking {}", ctx.deploy.display());

    let mut failures = Vec::new();
    for (name, check) in CHECKS {
        println!("--> {name}");
        let started = Instant::now();
        match check(&ctx) {
            Ok(()) => println!("    ok ({:.1?})", started.elapsed()),
            Err(err) => {
                println!("    FAILED ({:.1?})", started.elapsed());
                eprintln!("deploy-check: {name}: {err:#}\n");
                failures.push(*name);
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} deploy checks failed (details above): {}",
            failures.len(),
            CHECKS.len(),
            failures.join("; ")
        );
    }
    println!("==> all {} deploy checks passed", CHECKS.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Tools.

/// The checkers, installed and found.
#[derive(Debug)]
struct Tools {
    /// The venv's Python, which runs the Python tools as modules.
    python: PathBuf,
    hadolint: PathBuf,
    promtool: PathBuf,
    nginx: Option<PathBuf>,
    /// Optional: renders the kustomization when present.
    kubectl: Option<PathBuf>,
}

impl Tools {
    /// Installs what is missing. Several runs may do this at once (tests run
    /// in parallel), so they take turns on a lock file.
    fn ensure() -> Result<Self> {
        let dir = shell::project_root().join("target").join("xtask");
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let lock_path = dir.join("deploy-tools.lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("could not create {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("could not lock {}", lock_path.display()))?;

        let venv = ensure_venv(&dir.join("venv"))?;
        let mut missing = Vec::new();
        if which("promtool").is_none() {
            missing.push("prometheus");
        }
        if which("nginx").is_none() {
            missing.push("nginx");
        }
        if !missing.is_empty() {
            services::apt_install(
                &missing,
                "install promtool (Debian package prometheus) and nginx yourself",
            )?;
        }
        let tools = Tools {
            python: venv.join("bin").join("python"),
            hadolint: venv.join("bin").join("hadolint"),
            promtool: which("promtool").context("promtool is not on PATH after installing it")?,
            nginx: which("nginx"),
            kubectl: which("kubectl"),
        };
        drop(lock);
        tools.print_versions();
        Ok(tools)
    }

    fn print_versions(&self) {
        let version = |cmd: &mut Command| {
            let out = cmd.stdin(Stdio::null()).output().ok();
            out.map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "?".to_owned())
        };
        let py = |module: &str| {
            version(Command::new(&self.python).args([
                "-c",
                &format!(
                    "import importlib.metadata as m; print('{module}', m.version('{module}'))"
                ),
            ]))
        };
        println!(
            "==> tools: {}; {}; {}; {}; {}{}",
            version(Command::new(&self.hadolint).arg("--version")),
            py("kubernetes-validate"),
            py("check-jsonschema"),
            version(Command::new(&self.promtool).arg("--version")),
            self.nginx.as_ref().map_or_else(
                || "nginx: none".to_owned(),
                |n| version(Command::new(n).arg("-v"))
            ),
            self.kubectl.as_ref().map_or_else(String::new, |k| format!(
                "; kubectl {}",
                version(Command::new(k).args(["version", "--client"]))
            )),
        );
    }

    /// `python -m <module> args...`, offline.
    fn python_module(&self, module: &str) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", module]);
        offline(&mut cmd);
        cmd
    }

    /// Runs a Python snippet with `args` and returns what it printed.
    fn python_script(&self, script: &str, args: &[&Path]) -> Result<String> {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-c").arg(script).args(args);
        offline(&mut cmd);
        shell::output(&mut cmd)
    }

    /// The documents of each YAML file, as JSON values, or why it does not
    /// parse. PyYAML reads them (in one process, for speed), so anchors and
    /// merge keys are resolved as Compose resolves them.
    fn yaml_files(
        &self,
        paths: &[PathBuf],
    ) -> Result<HashMap<PathBuf, Result<Vec<Value>, String>>> {
        const SCRIPT: &str = "import json, sys, yaml\n\
            out = []\n\
            for path in sys.argv[1:]:\n    \
                try:\n        \
                    with open(path) as f:\n            \
                        out.append({'docs': [d for d in yaml.safe_load_all(f) if d is not None]})\n    \
                except Exception as e:\n        \
                    out.append({'error': str(e)})\n\
            json.dump(out, sys.stdout, default=str)\n";
        let args: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let text = self.python_script(SCRIPT, &args)?;
        let parsed: Vec<Value> =
            serde_json::from_str(&text).context("the YAML reader printed invalid JSON")?;
        ensure!(parsed.len() == paths.len(), "the YAML reader skipped files");
        Ok(paths
            .iter()
            .cloned()
            .zip(parsed)
            .map(|(path, mut result)| {
                let parsed = match result["docs"].take() {
                    Value::Array(docs) => Ok(docs),
                    _ => Err(result["error"].as_str().unwrap_or("unreadable").to_owned()),
                };
                (path, parsed)
            })
            .collect())
    }

    /// A TOML file as a JSON value.
    fn toml(&self, path: &Path) -> Result<Value> {
        const SCRIPT: &str = "import json, sys, tomllib\n\
            with open(sys.argv[1], 'rb') as f:\n    json.dump(tomllib.load(f), sys.stdout, default=str)\n";
        let text = self
            .python_script(SCRIPT, &[path])
            .with_context(|| format!("{} is not valid TOML", rel(path)))?;
        serde_json::from_str(&text).context("the TOML reader printed invalid JSON")
    }
}

/// Makes `cmd` unable to download anything: every HTTP(S) request goes to a
/// proxy that refuses connections.
fn offline(cmd: &mut Command) {
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        cmd.env(var, DEAD_PROXY);
    }
    for var in ["NO_PROXY", "no_proxy"] {
        cmd.env(var, "");
    }
    cmd.env("PYTHONNOUSERSITE", "1");
}

/// The venv at `venv` with the pinned tools, created or rebuilt if it is
/// missing, broken or was built from other pins. The caller holds the lock.
fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    pyvenv::Venv {
        what: "deploy-check",
        requirements: REQUIREMENTS,
        stamp: "kairos-deploy-tools.txt",
        probe: "import check_jsonschema, kubernetes_validate",
    }
    .ensure(venv)?;
    Ok(venv.to_path_buf())
}

/// A scratch directory for rendered files, removed when dropped.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = shell::project_root()
            .join("target")
            .join("xtask")
            .join(format!("deploy-check-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What every check gets.
#[derive(Debug)]
struct Ctx {
    root: PathBuf,
    deploy: PathBuf,
    tools: Tools,
    scratch: PathBuf,
    /// Every YAML file under deploy/, read once.
    yaml: HashMap<PathBuf, Result<Vec<Value>, String>>,
}

impl Ctx {
    /// The documents of a YAML file, as JSON values.
    fn yaml(&self, path: &Path) -> Result<Vec<Value>> {
        let parsed = match self.yaml.get(path) {
            Some(parsed) => parsed.clone(),
            None => self
                .tools
                .yaml_files(&[path.to_path_buf()])?
                .remove(path)
                .unwrap_or_else(|| Err("not read".to_owned())),
        };
        parsed.map_err(|err| anyhow::anyhow!("{} is not valid YAML: {err}", rel(path)))
    }

    /// `deploy/<path>`, which must exist.
    fn file(&self, path: &str) -> Result<PathBuf> {
        let full = self.deploy.join(path);
        ensure!(full.is_file(), "{} is missing", rel(&full));
        Ok(full)
    }

    fn read(&self, path: &Path) -> Result<String> {
        fs::read_to_string(path).with_context(|| format!("could not read {}", rel(path)))
    }

    /// Every document of every manifest in deploy/k8s except the
    /// kustomization, with its file.
    fn manifests(&self) -> Result<Vec<(PathBuf, Value)>> {
        let mut docs = Vec::new();
        for file in files_with(&self.deploy.join("k8s"), &["yaml", "yml"])? {
            if is_kustomization(&file) {
                continue;
            }
            for doc in self.yaml(&file)? {
                docs.push((file.clone(), doc));
            }
        }
        Ok(docs)
    }

    /// The first manifest of `kind`.
    fn manifest(&self, kind: &str) -> Result<Value> {
        self.manifests()?
            .into_iter()
            .map(|(_, doc)| doc)
            .find(|doc| doc["kind"] == kind)
            .with_context(|| format!("deploy/k8s has no {kind}"))
    }
}

/// Runs `cmd` (offline) and fails with its output unless it succeeds.
fn run_quiet(cmd: &mut Command) -> Result<String> {
    offline(cmd);
    shell::output(cmd)
}

// ---------------------------------------------------------------------------
// The checks.

fn dockerfile(ctx: &Ctx) -> Result<()> {
    let file = ctx.file("Dockerfile")?;
    let mut cmd = Command::new(&ctx.tools.hadolint);
    cmd.args(["--no-color", "--failure-threshold", "info"])
        .arg(&file)
        .current_dir(&ctx.root);
    run_quiet(&mut cmd)?;
    // The health check script the image copies must exist.
    ctx.file("docker/healthcheck.sh")?;
    Ok(())
}

fn kubernetes(ctx: &Ctx) -> Result<()> {
    let dir = ctx.deploy.join("k8s");
    let files = files_with(&dir, &["yaml", "yml"])?;
    let (kustomizations, manifests): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|f| is_kustomization(f));
    ensure!(!manifests.is_empty(), "{} holds no manifest", rel(&dir));
    validate_manifests(ctx, &manifests)?;

    // The kustomization must list exactly the manifests that exist.
    let [kustomization] = kustomizations.as_slice() else {
        bail!("{} must hold one kustomization.yaml", rel(&dir));
    };
    let doc = ctx
        .yaml(kustomization)?
        .into_iter()
        .next()
        .context("kustomization.yaml is empty")?;
    let listed: BTreeSet<String> = doc["resources"]
        .as_array()
        .context("kustomization.yaml has no resources list")?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let present: BTreeSet<String> = manifests
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
        .collect();
    let unlisted: Vec<_> = present.difference(&listed).collect();
    let absent: Vec<_> = listed.difference(&present).collect();
    ensure!(
        unlisted.is_empty() && absent.is_empty(),
        "kustomization.yaml resources do not match deploy/k8s: not listed {unlisted:?}, \
         listed but missing {absent:?}"
    );

    // What `kubectl apply -k` would send, when kubectl is there to render it.
    if let Some(kubectl) = &ctx.tools.kubectl {
        let mut render = Command::new(kubectl);
        render.arg("kustomize").arg(&dir);
        let rendered = run_quiet(&mut render)?;
        let out = ctx.scratch.join("kustomize-rendered.yaml");
        fs::write(&out, rendered).with_context(|| format!("could not write {}", out.display()))?;
        validate_manifests(ctx, &[out])?;
    } else {
        println!("    (no kubectl: the kustomize output is not rendered)");
    }
    Ok(())
}

/// kubernetes-validate, strict. A kind it has no schema for is only a
/// warning to the tool, but here it fails: a misspelt kind or apiVersion
/// must not pass unchecked.
fn validate_manifests(ctx: &Ctx, files: &[PathBuf]) -> Result<()> {
    let mut cmd = ctx.tools.python_module("kubernetes_validate");
    cmd.args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(files)
        .stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("INFO"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure!(
        out.status.success() && problems.is_empty(),
        "`{}` ({}):\n{}{}",
        describe(&cmd),
        out.status,
        problems.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn kubernetes_agreements(ctx: &Ctx) -> Result<()> {
    let config = ctx.manifest("ConfigMap")?;
    let deployment = ctx.manifest("Deployment")?;
    let service = ctx.manifest("Service")?;
    let hpa = ctx.manifest("HorizontalPodAutoscaler")?;
    let mut problems = Vec::new();

    let setting = |name: &str| -> Result<u64> {
        let raw = config["data"][name]
            .as_str()
            .with_context(|| format!("the ConfigMap does not set {name}"))?;
        raw.parse()
            .with_context(|| format!("the ConfigMap's {name} is not a number: {raw:?}"))
    };
    let drain = setting("SHUTDOWN_DRAIN_SECONDS")?;
    let port = setting("PORT")?;
    let metrics_port = setting("METRICS_PORT")?;

    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let container = spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "kairos-server"))
        .context("the Deployment has no container named kairos-server")?;

    // preStop sleeps as long as the drain, and the grace period covers both.
    let sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .and_then(|cmd| cmd.last())
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .context("the kairos-server container has no preStop `sleep <seconds>`")?;
    if sleep != drain {
        problems.push(format!(
            "preStop sleeps {sleep} s but SHUTDOWN_DRAIN_SECONDS is {drain}"
        ));
    }
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    if grace <= sleep + drain {
        problems.push(format!(
            "terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + drain {drain} s"
        ));
    }

    // Probes: liveness on /health, readiness on /ready, on the main port.
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        if container[probe]["httpGet"]["path"] != path {
            problems.push(format!("{probe} must GET {path}"));
        }
    }
    let ports = container["ports"].as_array().cloned().unwrap_or_default();
    let has_port = |n: u64| ports.iter().any(|p| p["containerPort"] == n);
    if !has_port(port) || !has_port(metrics_port) {
        problems.push(format!(
            "the container must expose PORT {port} and METRICS_PORT {metrics_port}"
        ));
    }
    let annotations = &pod["metadata"]["annotations"];
    if annotations["prometheus.io/scrape"] != "true"
        || annotations["prometheus.io/port"] != metrics_port.to_string().as_str()
    {
        problems.push(format!(
            "the pod must carry prometheus.io/scrape \"true\" and prometheus.io/port \"{metrics_port}\""
        ));
    }
    let security = &container["securityContext"];
    if security["readOnlyRootFilesystem"] != true || spec["securityContext"]["runAsNonRoot"] != true
    {
        problems.push("pods must run as non-root with a read-only root filesystem".to_owned());
    }

    // Round-robin, never sticky.
    if service["spec"]["sessionAffinity"] != "None" {
        problems.push("the Service must set sessionAffinity: None".to_owned());
    }

    // Autoscaling on the WebSocket gauge, below the cap.
    let ws_max = setting("WS_MAX_CONNECTIONS")?;
    let ws_target = hpa["spec"]["metrics"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["pods"]["metric"]["name"] == "kairos_ws_connections")
        })
        .and_then(|m| m["pods"]["target"]["averageValue"].as_str())
        .and_then(|v| v.parse::<u64>().ok());
    match ws_target {
        None => problems.push(
            "the HPA must scale on the Pods metric kairos_ws_connections (averageValue)"
                .to_owned(),
        ),
        Some(target) if target >= ws_max => problems.push(format!(
            "the HPA's kairos_ws_connections target {target} must stay below WS_MAX_CONNECTIONS {ws_max}"
        )),
        Some(_) => {}
    }
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    if deployment["spec"]["replicas"].as_u64().unwrap_or(1) < min {
        problems.push(format!(
            "the Deployment's replicas must be at least the HPA's minReplicas ({min})"
        ));
    }

    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

fn compose(ctx: &Ctx) -> Result<()> {
    let files: Vec<PathBuf> = files_with(&ctx.deploy, &["yml", "yaml"])?
        .into_iter()
        .filter(|f| file_name(f).starts_with("docker-compose"))
        .collect();
    ensure!(
        !files.is_empty(),
        "no docker-compose*.yml in {}",
        rel(&ctx.deploy)
    );
    check_schema(ctx, "vendor.compose-spec", &files)
}

fn workflows(ctx: &Ctx) -> Result<()> {
    let dir = ctx.root.join(".github").join("workflows");
    if !dir.is_dir() {
        println!("    (no {}: nothing to check)", rel(&dir));
        return Ok(());
    }
    let files = files_with(&dir, &["yml", "yaml"])?;
    if files.is_empty() {
        return Ok(());
    }
    check_schema(ctx, "vendor.github-workflows", &files)
}

/// check-jsonschema with one of its vendored schemas (no download).
fn check_schema(ctx: &Ctx, schema: &str, files: &[PathBuf]) -> Result<()> {
    let mut cmd = ctx.tools.python_module("check_jsonschema");
    cmd.args(["--builtin-schema", schema, "--color", "never"])
        .args(files);
    shell::output(&mut cmd)?;
    Ok(())
}

fn prometheus(ctx: &Ctx) -> Result<()> {
    let alerts = ctx.file("prometheus/alerts.yml")?;
    let promtool = |args: &[&str], file: &Path| -> Result<()> {
        let mut cmd = Command::new(&ctx.tools.promtool);
        cmd.args(args)
            .arg(file_name(file))
            .current_dir(file.parent().unwrap_or(Path::new(".")));
        run_quiet(&mut cmd).map(drop)
    };
    promtool(&["check", "rules"], &alerts)?;
    let tests = ctx.deploy.join("prometheus").join("alerts.test.yml");
    if tests.is_file() {
        promtool(&["test", "rules"], &tests)?;
    }
    let config = ctx.deploy.join("prometheus").join("prometheus.yml");
    if config.is_file() {
        promtool(&["check", "config"], &config)?;
    }
    Ok(())
}

fn alerts_documented(ctx: &Ctx) -> Result<()> {
    let alerts = ctx.file("prometheus/alerts.yml")?;
    let doc = ctx
        .yaml(&alerts)?
        .into_iter()
        .next()
        .context("alerts.yml is empty")?;
    let operations = ctx.root.join("docs").join("operations.md");
    let runbooks = if operations.is_file() {
        Some(ctx.read(&operations)?)
    } else {
        println!("    (no {}: runbooks not checked)", rel(&operations));
        None
    };
    let mut problems = Vec::new();
    let rules = doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten());
    for rule in rules {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning"].contains(&severity) {
            problems.push(format!(
                "{name}: severity must be critical or warning, not {severity:?}"
            ));
        }
        for annotation in ["summary", "description", "runbook"] {
            if rule["annotations"][annotation]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no {annotation} annotation"));
            }
        }
        if let Some(text) = &runbooks
            && !text.contains(&format!("`{name}`"))
        {
            problems.push(format!(
                "{name} is not in the alert table of docs/operations.md (as `{name}`)"
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

fn nginx(ctx: &Ctx) -> Result<()> {
    let conf = ctx.file("nginx/nginx.conf")?;
    let templates = files_with(&ctx.deploy.join("nginx").join("templates"), &["template"])?;
    ensure!(
        !templates.is_empty(),
        "deploy/nginx/templates holds no *.template"
    );

    // No stickiness, anywhere.
    let mut sources = vec![conf.clone()];
    sources.extend(templates.iter().cloned());
    for file in &sources {
        for (number, line) in ctx.read(file)?.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("").trim();
            let directive = code.split_whitespace().next().unwrap_or("");
            let directive = directive.trim_end_matches(';');
            ensure!(
                !STICKY_DIRECTIVES.contains(&directive),
                "{}:{}: `{directive}` pins clients to an instance; SyncKairos needs plain \
                 round-robin",
                rel(file),
                number + 1
            );
        }
    }

    // Every placeholder is known, and docker-compose sets every one.
    let compose_file = ctx.deploy.join("docker-compose.yml");
    let compose_env = if compose_file.is_file() {
        ctx.yaml(&compose_file)?
            .into_iter()
            .next()
            .map(|doc| doc["services"]["nginx"]["environment"].clone())
    } else {
        None
    };
    let prefix = ctx.scratch.join("nginx");
    let conf_d = prefix.join("conf.d");
    fs::create_dir_all(&conf_d)
        .with_context(|| format!("could not create {}", conf_d.display()))?;
    for template in &templates {
        let text = ctx.read(template)?;
        for name in placeholders(&text) {
            ensure!(
                NGINX_LOOPBACK.iter().any(|(known, _)| *known == name),
                "{}: unknown placeholder ${{{name}}}",
                rel(template)
            );
            if let Some(env) = &compose_env {
                ensure!(
                    env.get(&name).is_some(),
                    "docker-compose.yml's nginx service does not set {name}, which {} uses \
                     (envsubst would leave it in place)",
                    rel(template)
                );
            }
        }
        let rendered = render_template(&text, NGINX_LOOPBACK);
        let name = file_name(template).trim_end_matches(".template").to_owned();
        fs::write(conf_d.join(&name), rendered)
            .with_context(|| format!("could not write {name}"))?;
    }
    fs::copy(&conf, prefix.join("nginx.conf")).context("could not copy nginx.conf")?;

    let Some(nginx) = &ctx.tools.nginx else {
        println!("    (no nginx: nginx -t skipped)");
        return Ok(());
    };
    let mut cmd = Command::new(nginx);
    cmd.arg("-t")
        .arg("-p")
        .arg(format!("{}/", prefix.display()))
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-e", "stderr", "-g"])
        .arg(format!("pid {};", prefix.join("nginx.pid").display()));
    run_quiet(&mut cmd)?;
    Ok(())
}

/// Names of the `${NAME}` placeholders in `text`.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        if let Some(end) = rest.find('}') {
            names.insert(rest[..end].to_owned());
            rest = &rest[end + 1..];
        }
    }
    names
}

/// `text` with every `${NAME}` of `values` replaced.
fn render_template(text: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(text.to_owned(), |text, (name, value)| {
        text.replace(&format!("${{{name}}}"), value)
    })
}

fn dashboard(ctx: &Ctx) -> Result<()> {
    let file = ctx.file("grafana/kairos-dashboard.json")?;
    let text = ctx.read(&file)?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", rel(&file)))?;
    ensure!(
        json["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "{} has no panels",
        rel(&file)
    );

    let registered = registered_metrics(&ctx.root)?;
    let mut problems = Vec::new();
    // A panel for every metric the server exports, and for the bus.
    let exprs = panel_exprs(&json["panels"]);
    let all_exprs = exprs.join("\n");
    let queried = metric_names(&all_exprs);
    for metric in registered
        .iter()
        .map(String::as_str)
        .chain(BUS_METRICS.iter().copied())
    {
        if !queried.iter().any(|m| base_name(m) == metric) {
            problems.push(format!("no panel queries {metric}"));
        }
    }
    // Nothing that does not exist, here or in the alerts.
    let alerts = ctx.read(&ctx.file("prometheus/alerts.yml")?)?;
    for (what, source) in [("the dashboard", &all_exprs), ("alerts.yml", &alerts)] {
        for name in metric_names(source) {
            let base = base_name(&name);
            if !registered.contains(base) && !BUS_METRICS.contains(&base) {
                problems.push(format!(
                    "{what} uses {name}, which {METRICS_RS} does not register"
                ));
            }
        }
    }

    // The PromQL must parse: promtool checks it as recording rules, with
    // Grafana's variables given plausible values.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$instance", ".*")
            .replace("$ws_max", "50000");
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let rules_file = ctx.scratch.join("dashboard-rules.yml");
    fs::write(&rules_file, rules).context("could not write the dashboard's rules")?;
    let mut cmd = Command::new(&ctx.tools.promtool);
    cmd.args(["check", "rules"]).arg(&rules_file);
    if let Err(err) = run_quiet(&mut cmd) {
        problems.push(format!("a panel's PromQL does not parse: {err:#}"));
    }

    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Every `expr` of every panel target, rows' nested panels included.
fn panel_exprs(panels: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
        exprs.extend(panel_exprs(&panel["panels"]));
    }
    exprs
}

/// The metric names (`kairos_...`) registered in [`METRICS_FILES`].
fn registered_metrics(root: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for file in METRICS_FILES {
        let path = root.join(file);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        // The unit tests at the end quote series names too (`..._bucket`).
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        names.extend(code.match_indices("\"kairos_").filter_map(|(start, _)| {
            let literal = &code[start + 1..];
            let name: String = literal.chars().take_while(|&c| is_name_char(c)).collect();
            // A whole string literal, not the start of a longer text.
            literal[name.len()..].starts_with('"').then_some(name)
        }));
    }
    ensure!(
        !names.is_empty(),
        "{METRICS_RS} registers no kairos_ metric"
    );
    Ok(names)
}

/// Every `kairos_...` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("kairos_") {
        let before = text[..start].chars().next_back();
        if before.is_some_and(is_name_char) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .collect();
        names.insert(name);
    }
    names
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// A histogram's series name without its `_bucket`/`_count`/`_sum` suffix.
fn base_name(name: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|base| base.ends_with("_seconds"))
        .unwrap_or(name)
}

fn ws_limit(ctx: &Ctx) -> Result<()> {
    let mut limits: Vec<(String, u64)> = Vec::new();
    let mut record = |place: String, value: &Value| -> Result<()> {
        if value.is_null() {
            return Ok(());
        }
        let number = value
            .as_u64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .with_context(|| format!("{place}: WS_MAX_CONNECTIONS is not a number: {value}"))?;
        limits.push((place, number));
        Ok(())
    };
    for file in files_with(&ctx.deploy, &["yml", "yaml"])? {
        if !file_name(&file).starts_with("docker-compose") {
            continue;
        }
        let doc = ctx.yaml(&file)?.into_iter().next().unwrap_or_default();
        for (name, service) in doc["services"].as_object().into_iter().flatten() {
            record(
                format!("{} service {name}", rel(&file)),
                &service["environment"]["WS_MAX_CONNECTIONS"],
            )?;
        }
    }
    for (file, doc) in ctx.manifests()? {
        if doc["kind"] == "ConfigMap" {
            record(rel(&file), &doc["data"]["WS_MAX_CONNECTIONS"])?;
        }
    }
    let fly = ctx.deploy.join("fly.toml");
    if fly.is_file() {
        record(
            rel(&fly),
            &ctx.tools.toml(&fly)?["env"]["WS_MAX_CONNECTIONS"],
        )?;
    }
    let Some((_, limit)) = limits.first().cloned() else {
        bail!("no deployment file sets WS_MAX_CONNECTIONS");
    };
    let disagree: Vec<String> = limits
        .iter()
        .filter(|(_, v)| *v != limit)
        .map(|(place, v)| format!("{place}: {v}"))
        .collect();
    ensure!(
        disagree.is_empty(),
        "WS_MAX_CONNECTIONS differs between files ({limit} in {}; {})",
        limits[0].0,
        disagree.join(", ")
    );
    let alerts = ctx.read(&ctx.file("prometheus/alerts.yml")?)?;
    let expected = format!(
        "kairos_ws_connections{{job=\"kairos\"}} > {}",
        limit * 9 / 10
    );
    ensure!(
        alerts.contains(&expected),
        "alerts.yml must alert at 90% of WS_MAX_CONNECTIONS {limit}: `{expected}`"
    );
    Ok(())
}

fn parse_all(ctx: &Ctx) -> Result<()> {
    let files = yaml_files_under(&ctx.deploy)?;
    let broken: Vec<String> = files
        .iter()
        .filter_map(|file| ctx.yaml(file).err())
        .map(|err| format!("{err:#}"))
        .collect();
    ensure!(broken.is_empty(), "{}", broken.join("\n"));
    let fly = ctx.deploy.join("fly.toml");
    if fly.is_file() {
        let doc = ctx.tools.toml(&fly)?;
        let env_port = |name: &str| {
            doc["env"][name]
                .as_str()
                .and_then(|p| p.parse::<u64>().ok())
        };
        ensure!(
            doc["http_service"]["internal_port"].as_u64() == env_port("PORT"),
            "fly.toml: http_service.internal_port must equal env.PORT"
        );
        ensure!(
            doc["metrics"]["port"].as_u64() == env_port("METRICS_PORT"),
            "fly.toml: metrics.port must equal env.METRICS_PORT"
        );
        let drain = env_port("SHUTDOWN_DRAIN_SECONDS").unwrap_or(15);
        ensure!(
            doc["kill_signal"] == "SIGTERM" && doc["kill_timeout"].as_u64() > Some(drain),
            "fly.toml: kill_signal must be SIGTERM and kill_timeout exceed SHUTDOWN_DRAIN_SECONDS"
        );
    }
    println!("    {} YAML files", files.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Files.

/// Every `.yml`/`.yaml` file under `dir`, at any depth, sorted.
fn yaml_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for path in entries(&dir)? {
            if path.is_dir() {
                pending.push(path);
            } else if matches!(extension(&path), "yml" | "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Files directly in `dir` whose extension is one of `extensions`, sorted.
fn files_with(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|p| p.is_file() && extensions.contains(&extension(p)))
        .collect())
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        paths.push(
            entry
                .with_context(|| format!("could not list {}", dir.display()))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        file_name(path),
        "kustomization.yaml" | "kustomization.yml" | "Kustomization"
    )
}

/// `path` from `deploy/` on, for messages that read the same whatever the root.
fn rel(path: &Path) -> String {
    let text = path.display().to_string();
    for marker in ["/deploy/", "/.github/", "/docs/"] {
        if let Some(at) = text.rfind(marker) {
            return text[at + 1..].to_owned();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_whole_identifiers() {
        let names = metric_names(
            "rate(kairos_http_requests_total{job=\"kairos\"}[5m]) / x_kairos_no + kairos_ws_connections",
        );
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            ["kairos_http_requests_total", "kairos_ws_connections"]
        );
    }

    #[test]
    fn histogram_suffixes_are_stripped_only_from_histograms() {
        assert_eq!(
            base_name("kairos_switch_duration_seconds_bucket"),
            "kairos_switch_duration_seconds"
        );
        assert_eq!(
            base_name("kairos_timeout_lateness_seconds_count"),
            "kairos_timeout_lateness_seconds"
        );
        assert_eq!(base_name("kairos_ws_connections"), "kairos_ws_connections");
        assert_eq!(base_name("kairos_thing_count"), "kairos_thing_count");
    }

    #[test]
    fn templates_render_every_placeholder() {
        let text = "${A}\nlisten ${B};\n# ${A} again\n";
        assert_eq!(
            placeholders(text).into_iter().collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(
            render_template(text, &[("A", "x"), ("B", "1")]),
            "x\nlisten 1;\n# x again\n"
        );
    }

    #[test]
    fn paths_are_reported_from_deploy_on() {
        assert_eq!(
            rel(Path::new("/tmp/copy/deploy/k8s/deployment.yaml")),
            "deploy/k8s/deployment.yaml"
        );
        assert_eq!(rel(Path::new("/elsewhere/file")), "/elsewhere/file");
    }
}
