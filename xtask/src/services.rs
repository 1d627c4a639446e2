//! Throwaway Redis and PostgreSQL servers for the test run.
//!
//! The machine may be shared, so each run gets its own loopback ports (asked
//! of the kernel, never fixed) and its own directory `target/xtask/<pid>`.
//!
//! Both servers detach from us (Redis daemonizes, `pg_ctl` starts the
//! postmaster in its own session), so nothing stops them when we exit. To
//! stop them on every path, including Ctrl-C or a kill, a small watchdog (this
//! same binary, run as `xtask __reap`) is started *before* either server. It
//! sits in its own process group, so the terminal's Ctrl-C does not reach it,
//! and blocks reading a pipe whose only writer is us. When the pipe closes,
//! because [`Servers`] was dropped or because we died, it stops both servers
//! by pid and removes the directory. That makes it the one shutdown path.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{self, describe, is_root, output, sh_quote, which};

/// The hidden subcommand under which the watchdog runs.
pub(crate) const REAPER_COMMAND: &str = "__reap";

/// Name of the database the tests use.
const DATABASE: &str = "kairos";

/// How long a server may take to come up or go down before we give up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Running servers; dropping this stops them and removes their directory.
#[derive(Debug)]
pub(crate) struct Servers {
    redis_url: String,
    database_url: String,
    redis_server: PathBuf,
    pg_bin: PathBuf,
    // Never read: its `Drop` is what stops the servers.
    _reaper: Reaper,
}

impl Servers {
    /// Installs the server packages if needed, then starts both servers.
    pub(crate) fn start() -> Result<Self> {
        let root = is_root()?;
        let (redis_server, pg_bin) = ensure_binaries()?;

        let dir = shell::project_root()
            .join("target")
            .join("xtask")
            .join(std::process::id().to_string());
        // A directory left by an earlier run whose pid we now reuse would
        // hold a stale PostgreSQL cluster; start clean.
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;

        // From here on, every way out (error, panic, signal) goes through
        // the reaper, so it must exist before any server does.
        let reaper = Reaper::spawn(&dir, &pg_bin)?;

        // Hold both listeners at once so the two ports differ; they are
        // released just before the servers bind them.
        let (redis_port, pg_port) = {
            let a = TcpListener::bind("127.0.0.1:0").context("could not pick a free port")?;
            let b = TcpListener::bind("127.0.0.1:0").context("could not pick a free port")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };

        start_redis(&redis_server, &dir.join("redis"), redis_port)?;
        start_postgres(&pg_bin, &dir.join("pg"), pg_port, root)?;

        let servers = Servers {
            redis_url: format!("redis://127.0.0.1:{redis_port}/"),
            database_url: format!("postgres://postgres@127.0.0.1:{pg_port}/{DATABASE}"),
            redis_server,
            pg_bin,
            _reaper: reaper,
        };
        println!("==> redis:    {}", servers.redis_url);
        println!("==> postgres: {}", servers.database_url);
        Ok(servers)
    }

    pub(crate) fn redis_url(&self) -> &str {
        &self.redis_url
    }

    pub(crate) fn database_url(&self) -> &str {
        &self.database_url
    }

    pub(crate) fn redis_server(&self) -> &Path {
        &self.redis_server
    }

    pub(crate) fn pg_bin(&self) -> &Path {
        &self.pg_bin
    }
}

/// A throwaway Redis (and PostgreSQL when asked) for `cargo xtask bench`; dropping it stops the
/// server and removes its directory, through the same watchdog.
#[derive(Debug)]
pub(crate) struct RedisServer {
    url: String,
    pid: Option<u32>,
    database_url: Option<String>,
    // Never read: its `Drop` is what stops the server.
    _reaper: Reaper,
}

impl RedisServer {
    /// Installs `redis-server` (and PostgreSQL when `postgres`) if needed
    /// (apt-get), then starts Redis on a free loopback port without
    /// persistence, and a throwaway PostgreSQL when asked (the bench's
    /// runs with the defaults a user gets: the audit trail on).
    pub(crate) fn start(postgres: bool) -> Result<Self> {
        let (redis_server, pg_bin) = if postgres {
            let (redis, pg) = ensure_binaries()?;
            (redis, Some(pg))
        } else {
            let redis = match find_redis_server() {
                Some(path) => path,
                None => {
                    apt_install(&["redis-server"], "install redis-server yourself")?;
                    find_redis_server().context(
                        "redis-server is still not on PATH after installing package redis-server",
                    )?
                }
            };
            (redis, None)
        };
        let dir = shell::project_root()
            .join("target")
            .join("xtask")
            .join(format!("bench-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        // Without PostgreSQL the reaper finds no postmaster.pid and skips it.
        let reaper = Reaper::spawn(&dir, pg_bin.as_deref().unwrap_or(Path::new("")))?;
        let (port, pg_port) = {
            let a = TcpListener::bind("127.0.0.1:0").context("could not pick a free port")?;
            let b = TcpListener::bind("127.0.0.1:0").context("could not pick a free port")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let redis_dir = dir.join("redis");
        start_redis(&redis_server, &redis_dir, port)?;
        let pid = fs::read_to_string(redis_dir.join("redis.pid"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let url = format!("redis://127.0.0.1:{port}/");
        println!("==> redis:    {url}");
        let database_url = match &pg_bin {
            Some(pg_bin) => {
                start_postgres(pg_bin, &dir.join("pg"), pg_port, is_root()?)?;
                let url = format!("postgres://postgres@127.0.0.1:{pg_port}/{DATABASE}");
                println!("==> postgres: {url}");
                Some(url)
            }
            None => None,
        };
        Ok(Self {
            url,
            pid,
            database_url,
            _reaper: reaper,
        })
    }

    /// The PostgreSQL URL, when it was started.
    pub(crate) fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The server's pid (from its pidfile), to read its CPU time.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }
}

// ---------------------------------------------------------------------------
// Finding and installing the binaries.

/// The `redis-server` binary, if installed.
pub(crate) fn find_redis_server() -> Option<PathBuf> {
    which("redis-server")
}

/// `/usr/lib/postgresql/<highest version>/bin`, if it has what we run.
///
/// Debian keeps the server binaries out of `PATH`, under one directory per
/// major version; several may be installed side by side.
pub(crate) fn find_pg_bin() -> Option<PathBuf> {
    let entries = fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            // Compare versions as numbers ("16" > "9.6"), not as strings.
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            let complete = ["initdb", "pg_ctl"].iter().all(|b| bin.join(b).is_file());
            complete.then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// Debian's nginx, for the load-balancer test of `deploy/nginx`.
pub(crate) fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Returns nginx, installing Debian's package when it is missing.
pub(crate) fn ensure_nginx() -> Result<PathBuf> {
    if let Some(nginx) = find_nginx() {
        return Ok(nginx);
    }
    apt_install(
        &["nginx"],
        "install nginx yourself (the load-balancer test needs it)",
    )?;
    find_nginx().context("nginx is still missing after installing package nginx")
}

/// Returns (`redis-server`, PostgreSQL bin dir), installing what is missing.
fn ensure_binaries() -> Result<(PathBuf, PathBuf)> {
    let redis = find_redis_server();
    let pg_bin = find_pg_bin();
    if let (Some(redis), Some(pg_bin)) = (redis.clone(), pg_bin.clone()) {
        return Ok((redis, pg_bin));
    }

    let mut packages = Vec::new();
    if redis.is_none() {
        packages.push("redis-server");
    }
    if pg_bin.is_none() {
        packages.push("postgresql");
    }
    apt_install(
        &packages,
        "install them yourself, or set KAIROS_TEST_REDIS_URL and KAIROS_TEST_DATABASE_URL to \
         servers you run",
    )?;

    let redis = find_redis_server()
        .context("redis-server is still not on PATH after installing package redis-server")?;
    let pg_bin = find_pg_bin().context(
        "no /usr/lib/postgresql/<version>/bin with initdb and pg_ctl after installing package postgresql",
    )?;
    Ok((redis, pg_bin))
}

/// Installs Debian `packages` (`apt-get update`, then `apt-get install
/// --no-install-recommends`) as root, or through sudo if we are not root.
///
/// `instead` tells the user what to do where that is impossible (no apt-get,
/// or neither root nor sudo), e.g. "install them yourself".
pub(crate) fn apt_install(packages: &[&str], instead: &str) -> Result<()> {
    let root = is_root()?;
    let wanted = packages.join(" ");
    println!("==> installing {wanted} with apt-get");
    apt_get(root, &["update"], &wanted, instead)?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages);
    apt_get(root, &install, &wanted, instead)
}

/// Runs `apt-get <args>` as root, through sudo if we are not root.
fn apt_get(root: bool, args: &[&str], wanted: &str, instead: &str) -> Result<()> {
    if which("apt-get").is_none() {
        bail!(
            "the packages {wanted} are needed, and this system has no apt-get to install them: \
             {instead}"
        );
    }
    let mut cmd = if root {
        Command::new("apt-get")
    } else if which("sudo").is_some() {
        // sudo resets the environment; `env` carries the variable through
        // whatever the sudoers policy says about setting variables.
        let mut cmd = Command::new("sudo");
        cmd.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        cmd
    } else {
        bail!(
            "the packages {wanted} must be installed (apt-get install {wanted}), and we are \
             neither root nor have sudo: {instead}"
        );
    };
    // Another apt run (an image build, unattended upgrades) may hold the
    // dpkg lock; wait for it rather than fail at once.
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args);
    shell::run(&mut cmd)
}

// ---------------------------------------------------------------------------
// Starting the servers.

fn start_redis(redis_server: &Path, dir: &Path, port: u16) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut cmd = Command::new(redis_server);
    cmd.arg("--bind")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        // No persistence: the data is thrown away anyway, and fsyncs only
        // slow the tests down.
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "yes"])
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null());
    // With --daemonize the process we start exits once the daemon is forked;
    // its exit status only says whether the configuration was accepted.
    shell::run(&mut cmd)?;

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if redis_answers_ping(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            bail!("redis-server on port {port} did not answer PING in time; its log:\n{log}");
        }
        sleep(Duration::from_millis(20));
    }
}

/// Whether a Redis server on `port` answers `PING`: an open port alone could
/// be someone else's server that grabbed it between our pick and our bind.
fn redis_answers_ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}

/// A PostgreSQL command, run as user `postgres` when we are root, because
/// PostgreSQL refuses to run as root.
fn pg_command(program: &Path, root: bool) -> Command {
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn start_postgres(pg_bin: &Path, dir: &Path, port: u16, root: bool) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    if root {
        // The data directory and socket directory must belong to the user
        // the server runs as.
        shell::run(Command::new("chown").arg("postgres:postgres").arg(dir))?;
    }
    let data = dir.join("data");
    let log = dir.join("postgres.log");

    // `postgres` cannot read root's working directory; run from ours so the
    // tools do not warn about it.
    let initdb = pg_command(&pg_bin.join("initdb"), root)
        .current_dir(dir)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync"])
        // Fixed locale: the caller's LANG may name a locale that is not
        // installed, which makes initdb fail.
        .args(["--locale=C", "--encoding=UTF8"])
        .output();
    check_pg_output("initdb", initdb, None)?;

    // pg_ctl hands these to the server through `sh`, so quote the path.
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c fsync=off -k {}",
        sh_quote(&dir.to_string_lossy())
    );
    // `-l` sends the server's output to a file; without it the server would
    // hold our pipes open and `output()` would never return.
    let start = pg_command(&pg_bin.join("pg_ctl"), root)
        .current_dir(dir)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "60", "-o", &options, "start"])
        .stdin(Stdio::null())
        .output();
    check_pg_output("pg_ctl start", start, Some(&log))?;

    // Connect over TCP exactly as the tests will, which also proves the
    // URL we export works.
    let mut createdb = match pg_client(pg_bin, "createdb") {
        Some(createdb) => {
            let mut cmd = Command::new(createdb);
            cmd.arg(DATABASE);
            cmd
        }
        None => {
            let psql = pg_client(pg_bin, "psql")
                .context("neither createdb nor psql found to create the test database")?;
            let mut cmd = Command::new(psql);
            cmd.args(["-d", "postgres", "-c"])
                .arg(format!("CREATE DATABASE {DATABASE}"));
            cmd
        }
    };
    createdb
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(port.to_string());
    output(&mut createdb).context("could not create the test database")?;
    Ok(())
}

/// A client program from the server's bin directory or else from `PATH`.
fn pg_client(pg_bin: &Path, name: &str) -> Option<PathBuf> {
    let local = pg_bin.join(name);
    if local.is_file() {
        Some(local)
    } else {
        which(name)
    }
}

/// Turns a PostgreSQL tool's result into an error with everything it (and,
/// for the server, its log) said.
fn check_pg_output(
    what: &str,
    result: std::io::Result<std::process::Output>,
    log: Option<&Path>,
) -> Result<()> {
    let out = result.with_context(|| format!("could not run {what}"))?;
    if out.status.success() {
        return Ok(());
    }
    let log = log
        .and_then(|log| fs::read_to_string(log).ok())
        .map(|text| format!("--- server log ---\n{text}"))
        .unwrap_or_default();
    bail!(
        "{what} failed ({})\n--- stdout ---\n{}--- stderr ---\n{}{log}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    )
}

// ---------------------------------------------------------------------------
// Stopping the servers: the reaper.

/// Our end of the watchdog; dropping it triggers the shutdown and waits for
/// it, so the servers are gone by the time `drop` returns.
#[derive(Debug)]
struct Reaper {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Reaper {
    fn spawn(dir: &Path, pg_bin: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("could not find our own executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg(REAPER_COMMAND)
            .arg(dir)
            .arg(pg_bin)
            .stdin(Stdio::piped())
            // Its report comes back to us to print in order; if we are dead
            // by then, it has nobody to tell and that is fine.
            .stdout(Stdio::piped())
            // A process group of its own, so Ctrl-C in the terminal (sent to
            // the foreground group: us, cargo, the tests) leaves it running.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start the watchdog `{}`", describe(&cmd)))?;
        let pipe = child.stdin.take();
        Ok(Reaper { child, pipe })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the only writer is the signal to shut down.
        drop(self.pipe.take());
        let mut report = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            // The report ends when the reaper exits and its stdout closes.
            let _ = stdout.read_to_string(&mut report);
        }
        print!("{report}");
        match self.child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("warning: stopping the test servers failed ({status})"),
            Err(err) => eprintln!("warning: could not wait for the test servers to stop: {err}"),
        }
    }
}

/// Body of `xtask __reap <dir> <pg_bin>`: waits until its parent closes the
/// pipe on stdin (or dies), then stops both servers and removes `dir`.
pub(crate) fn reap(args: &[std::ffi::OsString]) -> Result<()> {
    let [dir, pg_bin] = args else {
        bail!("usage: xtask {REAPER_COMMAND} <dir> <pg_bin>");
    };
    let (dir, pg_bin) = (Path::new(dir), Path::new(pg_bin));

    // Nobody ever writes; this returns at EOF, i.e. once the parent is done.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());

    let mut failures = Vec::new();
    if let Err(err) = stop_redis(&dir.join("redis")) {
        failures.push(format!("{err:#}"));
    }
    if let Err(err) = stop_postgres(pg_bin, &dir.join("pg")) {
        failures.push(format!("{err:#}"));
    }
    // Only remove the directory once nothing runs from it any more, or a
    // surviving server would be left without its data under it.
    if failures.is_empty()
        && dir.exists()
        && let Err(err) = fs::remove_dir_all(dir)
    {
        failures.push(format!("could not remove {}: {err}", dir.display()));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// Writes a line of the reaper's report. The reader may be gone (after a
/// Ctrl-C), so a failed write is ignored rather than allowed to panic.
fn report(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn stop_redis(dir: &Path) -> Result<()> {
    if !dir.exists() {
        // We never got as far as starting it.
        return Ok(());
    }
    let pidfile = dir.join("redis.pid");
    // The daemon writes its pidfile shortly after the launcher returns; if
    // we were interrupted in between, give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pidfile.exists() && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    let Ok(text) = fs::read_to_string(&pidfile) else {
        return Ok(());
    };
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("bad pid {text:?} in {}", pidfile.display()))?;

    // SIGTERM makes Redis shut down cleanly (it saves nothing: --save '').
    signal(pid, "TERM")?;
    if !wait_until_gone(pid, SHUTDOWN_TIMEOUT) {
        signal(pid, "KILL")?;
        if !wait_until_gone(pid, SHUTDOWN_TIMEOUT) {
            bail!("redis-server (pid {pid}) is still running");
        }
    }
    report(&format!("==> stopped redis-server (pid {pid})"));
    Ok(())
}

fn stop_postgres(pg_bin: &Path, dir: &Path) -> Result<()> {
    let data = dir.join("data");
    let pidfile = data.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pidfile) else {
        // No server was started (or it already stopped and cleaned up).
        return Ok(());
    };
    // The first line of postmaster.pid is the postmaster's pid.
    let pid: Option<u32> = text.lines().next().and_then(|l| l.trim().parse().ok());
    // pg_ctl stops it by the pid in that same file; "fast" rolls back open
    // transactions instead of waiting for clients to leave.
    let root = is_root()?;
    let stopped = pg_command(&pg_bin.join("pg_ctl"), root)
        .current_dir(dir)
        .arg("-D")
        .arg(&data)
        .args(["-m", "fast", "-w", "-t", "30", "stop"])
        .stdin(Stdio::null())
        .output();
    match (stopped, pid) {
        (Ok(out), _) if out.status.success() => {}
        // pg_ctl could not do it; fall back to signals so nothing survives.
        (_, Some(pid)) => {
            signal(pid, "KILL")?;
            if !wait_until_gone(pid, SHUTDOWN_TIMEOUT) {
                bail!("postgres (pid {pid}) is still running");
            }
        }
        (_, None) => bail!(
            "could not stop postgres and found no pid in {}",
            pidfile.display()
        ),
    }
    let shown = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    report(&format!("==> stopped postgres{shown}"));
    Ok(())
}

/// Sends `SIGNAL` to `pid` with kill(1); std offers no safe way of its own.
fn signal(pid: u32, signal: &str) -> Result<()> {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("could not run kill")?;
    // Failure is fine if the process is gone already (it may have exited
    // between our check and the signal).
    if !out.status.success() && is_alive(pid) {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn wait_until_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
    true
}

/// Whether `pid` still runs. A zombie counts as gone: a daemon's parent is
/// init, and in some containers init never reaps, so `kill -0` would
/// report a dead server as alive forever.
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces and parentheses, hence the search from the right.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) if Path::new("/proc/self").exists() => false,
        // No procfs (not Linux): ask the kernel through kill(1).
        Err(_) => Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}
