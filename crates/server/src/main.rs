//! `kairos-server`: parses the command line and the environment, then runs
//! the service until SIGTERM or SIGINT (or mints a token).
#![allow(clippy::print_stdout)] // `token` prints its token: that is its output.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use server::config::{ParseError, Vars};
use server::{Application, TestHooks, telemetry};

/// mimalloc rather than glibc's malloc: a request allocates and frees many
/// small buffers across the actix and Tokio threads, and glibc's `malloc`
/// and `free` were 11 to 13% of the server's CPU on the switch and fan-out
/// paths (docs/performance.md). Only the binary chooses; the library crates
/// and their tests keep the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SyncKairos: shared clocks for many clients, calculated from authoritative timestamps.
///
/// Every setting is an environment variable (or the flag of the same name);
/// a blank variable counts as unset. docs/operations.md explains each one.
#[derive(Debug, Parser)]
#[command(name = "kairos-server", version)]
struct Cli {
    #[command(flatten)]
    vars: Vars,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the service (the default).
    Serve,
    /// Apply the audit trail's database migrations (DATABASE_URL) and exit.
    Migrate,
    /// Print a token signed with JWT_SECRET, e.g. `kairos-server token --role host --sub alice`.
    Token {
        /// admin, host, player or viewer.
        #[arg(long)]
        role: String,
        /// Subject: who the token is for (owner of the sessions it creates).
        #[arg(long)]
        sub: String,
        /// Restrict the token to this session id.
        #[arg(long)]
        sid: Option<String>,
        /// The participant a player plays as.
        #[arg(long)]
        pid: Option<String>,
        /// Lifetime: 90s, 30m, 1h, 7d (default 1h).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match server::config::parse_process() {
        Ok(cli) => cli,
        Err(ParseError::Usage(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("kairos-server: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => serve(cli.vars),
        Cmd::Migrate => migrate(&cli.vars),
        Cmd::Token {
            role,
            sub,
            sid,
            pid,
            ttl,
        } => match server::token::mint_now(cli.vars.jwt_secret(), &role, &sub, sid, pid, &ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kairos-server token: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(vars: Vars) -> ExitCode {
    let (settings, hooks) = match vars
        .settings()
        .and_then(|s| Ok((s, TestHooks::from_env()?)))
    {
        Ok(both) => both,
        Err(e) => {
            eprintln!("kairos-server: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    if settings.auth == server::config::Auth::Off {
        tracing::warn!(
            "AUTH_MODE=off: every caller is an admin. Fine on your machine; never expose this to a network you do not trust. Set JWT_SECRET to require tokens."
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kairos-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build_with_hooks(settings, hooks).await?;
        app.run_until_stopped_or_forced(shutdown_signal(), async {
            // Only reached after the first signal was handled.
            shutdown_signal().await;
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kairos-server failed");
            eprintln!("kairos-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(vars: &Vars) -> ExitCode {
    let Some(url) = vars.database_url().cloned() else {
        eprintln!("kairos-server migrate: DATABASE_URL is not set");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kairos-server migrate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let applied = audit_diesel::run_migrations(url.clone()).await?;
        let pg = audit_diesel::PgAudit::connect(url, 1)?;
        let created = pg
            .ensure_partitions(audit_diesel::DEFAULT_MONTHS_AHEAD)
            .await?;
        Ok::<_, kairos_domain::AuditError>((applied, created))
    });
    match result {
        Ok((applied, created)) => {
            println!(
                "migrations applied: {}; partitions created: {created}",
                applied.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kairos-server migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
