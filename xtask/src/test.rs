//! `cargo xtask test`: runs the workspace tests against real Redis and
//! PostgreSQL, so nobody has to start servers by hand and no test is skipped
//! for want of one, then the browser SDK's and demo page's tests ([`web`]).

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::services::{self, Servers};
use crate::{shell, web};

/// Environment variables through which tests find their servers.
pub(crate) const REDIS_URL_VAR: &str = "KAIROS_TEST_REDIS_URL";
pub(crate) const DATABASE_URL_VAR: &str = "KAIROS_TEST_DATABASE_URL";
pub(crate) const REDIS_SERVER_VAR: &str = "KAIROS_TEST_REDIS_SERVER";
pub(crate) const PG_BIN_VAR: &str = "KAIROS_TEST_PG_BIN";
pub(crate) const NGINX_VAR: &str = "KAIROS_TEST_NGINX";

/// The server's integration test binary (`crates/server/tests/integration/`).
const SERVER_SUITE: &str = "integration";

/// The service-level modules of [`SERVER_SUITE`] that run a second time on
/// the Redis and PostgreSQL adapters (`KAIROS_TEST_ADAPTERS=redis`), each
/// selected by the test name filter `<module>::`.
const REDIS_SUITES: &[&str] = &[
    "api",
    "ws",
    "limits",
    "auth",
    "ws_security",
    "web",
    "participants",
    "admin",
];

/// Runs `cargo test` with `extra_args` and returns its exit code.
///
/// The servers are stopped before this returns, whatever the tests did.
pub(crate) fn run(extra_args: &[OsString]) -> Result<i32> {
    let preset = std::env::var_os(REDIS_URL_VAR).is_some_and(|v| !v.is_empty())
        && std::env::var_os(DATABASE_URL_VAR).is_some_and(|v| !v.is_empty());

    // Held until the tests are done: dropping it stops the servers.
    let servers: Option<Servers>;
    let mut vars: Vec<(&str, OsString)> = Vec::new();
    if preset {
        println!("==> using the servers named by {REDIS_URL_VAR} and {DATABASE_URL_VAR}");
        servers = None;
        // Tests that start their own servers still need the binaries; pass
        // on what is installed, but install nothing the caller did not ask for.
        if std::env::var_os(REDIS_SERVER_VAR).is_none()
            && let Some(redis) = services::find_redis_server()
        {
            vars.push((REDIS_SERVER_VAR, redis.into()));
        }
        if std::env::var_os(PG_BIN_VAR).is_none()
            && let Some(bin) = services::find_pg_bin()
        {
            vars.push((PG_BIN_VAR, bin.into()));
        }
        if std::env::var_os(NGINX_VAR).is_none()
            && let Some(nginx) = services::find_nginx()
        {
            vars.push((NGINX_VAR, nginx.into()));
        }
    } else {
        let started = Servers::start()?;
        vars.push((REDIS_URL_VAR, started.redis_url().into()));
        vars.push((DATABASE_URL_VAR, started.database_url().into()));
        vars.push((REDIS_SERVER_VAR, started.redis_server().into()));
        vars.push((PG_BIN_VAR, started.pg_bin().into()));
        vars.push((NGINX_VAR, services::ensure_nginx()?.into()));
        servers = Some(started);
    }

    let mut cmd = shell::cargo();
    cmd.arg("test");
    if !selects_packages(extra_args) {
        // Every failing test binary is reported, not only the first.
        cmd.args(["--workspace", "--no-fail-fast"]);
    }
    cmd.args(extra_args).envs(vars.iter().map(|(k, v)| (k, v)));
    println!("==> {}", shell::describe(&cmd));
    let mut status = shell::status(&mut cmd);

    // The service-level suites once more, on the Redis store, bus, clock and
    // limiter and the PostgreSQL audit trail: the same tests, other adapters.
    // The test binary the run above built is run directly: `cargo test -p
    // server` would resolve features for that package alone and build the
    // server and every adapter a second time (over a minute and 1.5 GB).
    if !selects_packages(extra_args) && status.as_ref().is_ok_and(|s| s.success()) {
        let built = built_by_the_run(extra_args)?;
        if let Some(server) = built.server {
            shell::remember_tested_server(server);
        }
        status = match built.suite {
            Some(suite) => {
                let mut again = Command::new(&suite);
                again
                    .current_dir(shell::project_root().join("crates").join("server"))
                    .args(redis_filters())
                    .envs(vars.iter().map(|(k, v)| (k, v)))
                    .env("KAIROS_TEST_ADAPTERS", "redis");
                println!("==> KAIROS_TEST_ADAPTERS=redis {}", shell::describe(&again));
                shell::status(&mut again)
            }
            None => {
                println!(
                    "==> the arguments left out the server's `{SERVER_SUITE}` tests: \
                     their pass on the Redis adapters is skipped"
                );
                status
            }
        };
    }

    // Stop the servers before reporting, so their shutdown messages do not
    // land after our last line and nothing outlives this function.
    drop(servers);

    let status = status?;
    let code = status
        .code()
        // Killed by a signal: report it the way a shell would.
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1);
    // Then the SDK and the demo page in a browser (web/tests/), once the
    // Rust tests pass: they need the server binary those tests just built.
    if code == 0 && web::wanted(extra_args) {
        web::run()?;
    }
    Ok(code)
}

/// The test name filters that select the [`REDIS_SUITES`] modules, and
/// only them: `ws::` does not match `ws_security::`.
fn redis_filters() -> Vec<String> {
    REDIS_SUITES.iter().map(|m| format!("{m}::")).collect()
}

/// What the workspace test run built that later steps run again.
#[derive(Debug, Default, PartialEq)]
struct Built {
    /// The server's [`SERVER_SUITE`] test binary.
    suite: Option<PathBuf>,
    /// The `kairos-server` binary its tests started.
    server: Option<PathBuf>,
}

/// What the workspace run with `extra_args` built (asking cargo again
/// builds nothing): `None`s for what those arguments left out.
fn built_by_the_run(extra_args: &[OsString]) -> Result<Built> {
    let mut cmd = shell::cargo();
    cmd.args(["test", "--workspace", "--no-run", "--message-format=json"])
        .args(extra_args.iter().take_while(|a| *a != "--"));
    Ok(built_in_listing(&shell::output(&mut cmd)?))
}

/// The [`Built`] artifacts in cargo's JSON messages
/// (`--message-format=json`, one per line).
fn built_in_listing(listing: &str) -> Built {
    let mut built = Built::default();
    for message in listing
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
    {
        let Some(executable) = message["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        let name = &message["target"]["name"];
        let is = |kind: &str| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        };
        // `cargo test` also builds `kairos-server`'s own unit tests (a
        // `bin` target with the `test` profile, in `deps/`): the binary
        // is the one outside `deps/`.
        if *name == SERVER_SUITE && is("test") {
            built.suite = Some(executable);
        } else if *name == "kairos-server" && is("bin") && message["profile"]["test"] == false {
            built.server = Some(executable);
        }
    }
    built
}

/// Whether the caller picked packages itself. `cargo test --workspace -p x`
/// silently tests the whole workspace, so `--workspace` must then be left out.
fn selects_packages(args: &[OsString]) -> bool {
    args.iter()
        .map(|a| a.to_string_lossy())
        // Everything after a bare `--` belongs to the test binaries.
        .take_while(|a| a != "--")
        .any(|a| {
            a == "-p"
                || a == "--package"
                || a.starts_with("--package=")
                || (a.starts_with("-p") && !a.starts_with("--"))
                || a == "--manifest-path"
                || a.starts_with("--manifest-path=")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn package_flags_drop_workspace() {
        assert!(selects_packages(&args(&["-p", "xtask"])));
        assert!(selects_packages(&args(&["-pxtask"])));
        assert!(selects_packages(&args(&["--package=xtask"])));
        assert!(selects_packages(&args(&[
            "--release",
            "--package",
            "xtask"
        ])));
    }

    #[test]
    fn the_redis_pass_selects_exactly_its_modules_of_the_suite() {
        let filters = redis_filters();
        let selected = |test: &str| filters.iter().any(|f| test.contains(f.as_str()));
        for module in REDIS_SUITES {
            assert!(selected(&format!("{module}::some_test")), "{module}");
        }
        for other in ["audit", "multi_instance", "nginx", "common"] {
            assert!(!selected(&format!("{other}::some_test")), "{other}");
        }
        let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/server/tests")
            .join(SERVER_SUITE);
        for module in REDIS_SUITES {
            assert!(
                suite.join(format!("{module}.rs")).is_file(),
                "{SERVER_SUITE} has no module {module}"
            );
        }
    }

    #[test]
    fn the_suite_and_the_server_are_found_among_cargos_artifacts() {
        let listing = [
            r#"{"reason":"compiler-artifact","target":{"name":"integration","kind":["bench"]},"profile":{"test":false},"executable":"/t/debug/deps/integration-bench"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"server","kind":["lib"]},"profile":{"test":false},"executable":null}"#,
            "not json",
            r#"{"reason":"compiler-artifact","target":{"name":"kairos-server","kind":["bin"]},"profile":{"test":true},"executable":"/t/debug/deps/kairos_server-77"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"integration","kind":["test"]},"profile":{"test":true},"executable":"/t/debug/deps/integration-0123"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"kairos-server","kind":["bin"]},"profile":{"test":false},"executable":"/t/debug/kairos-server"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            built_in_listing(&listing),
            Built {
                suite: Some(PathBuf::from("/t/debug/deps/integration-0123")),
                server: Some(PathBuf::from("/t/debug/kairos-server")),
            }
        );
        assert_eq!(
            built_in_listing(r#"{"reason":"build-finished"}"#),
            Built::default()
        );
    }

    #[test]
    fn other_flags_and_test_binary_args_keep_workspace() {
        assert!(!selects_packages(&args(&[])));
        assert!(!selects_packages(&args(&["--doc", "--release"])));
        assert!(!selects_packages(&args(&["--", "-p", "--package"])));
    }
}
