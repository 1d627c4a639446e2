//! `redis-commands`: how many Redis commands one switch costs the server on
//! its request path, counted on the wire.
//!
//! Creates and starts the sessions, switches each once so the instance
//! serves them (the steady state), then opens `MONITOR` on the Redis and
//! sends `--switches` more switches, closed loop. A monitored line counts
//! when the server sent it (not a command a script ran: those show as
//! `[.. lua]`) and it names one of the sessions (its key, its rate-limit
//! key, its channel); `PUBLISH`/`SPUBLISH` are counted apart, as is every
//! command by name. Background work that names no session (deadline
//! sweeps, renewals) is left out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::common::{
    CpuMeter, LONG_CLOCK_MS, bounded_count, http_client, http_targets, loopback_url,
    prepare_sessions, session_config,
};
use crate::http_load;

/// Arguments of `redis-commands`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Base URL of the instance (http://127.0.0.1:PORT); loopback only.
    #[arg(long)]
    target: String,
    /// The Redis the instance uses (redis://127.0.0.1:PORT/); loopback only.
    #[arg(long)]
    redis_url: String,
    /// Sessions switched in turn.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Switches counted.
    #[arg(long, default_value_t = 1000)]
    switches: usize,
    /// Clients switching at once (each on its own sessions).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// What the monitor saw.
#[derive(Debug, Default)]
struct Seen {
    /// Commands the server sent naming a session, by name (publishes apart).
    commands: BTreeMap<String, u64>,
    /// `PUBLISH`/`SPUBLISH` on our sessions' channels the server sent as
    /// commands of their own.
    publishes: u64,
    /// `PUBLISH`/`SPUBLISH` on our sessions' channels that a script ran
    /// (the commit script publishes its update with one Redis server).
    scripted_publishes: u64,
    /// Commands scripts ran.
    in_scripts: u64,
}

/// Runs the scenario and returns its JSON report.
pub(crate) async fn run(args: Args) -> Result<String> {
    let targets = http_targets(std::slice::from_ref(&args.target))?;
    let target = targets[0].clone();
    let redis = loopback_url(&args.redis_url)?;
    ensure!(
        redis.scheme() == "redis",
        "--redis-url must be a redis:// URL"
    );
    let sessions = bounded_count("--sessions", args.sessions)?;
    let switches = bounded_count("--switches", args.switches)?;
    let clients = bounded_count("--concurrency", args.concurrency)?.min(sessions);
    let http = http_client()?;

    let prepared = prepare_sessions(&http, &targets, sessions, true, 16, |_| {
        session_config(&[LONG_CLOCK_MS, LONG_CLOCK_MS])
    })
    .await?;
    let urls = prepared
        .iter()
        .map(|s| target.join(&format!("/v1/sessions/{}/switch", s.id)))
        .collect::<Result<Vec<_>, _>>()?;
    // Warm: each session switched once through this instance.
    for url in &urls {
        if let Err(kind) = http_load::send(http.post(url.clone())).await {
            bail!("a warm-up switch failed: {kind}");
        }
    }
    let ids: Arc<HashSet<String>> = Arc::new(prepared.iter().map(|s| s.id.clone()).collect());

    // MONITOR on its own connection.
    let host = redis.host_str().context("no Redis host")?.to_owned();
    let port = redis.port().unwrap_or(6379);
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .context("cannot connect to Redis")?;
    stream.write_all(b"MONITOR\r\n").await?;
    let mut lines = BufReader::new(stream).lines();
    let ok = lines.next_line().await?.unwrap_or_default();
    ensure!(ok == "+OK", "MONITOR answered {ok:?}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let (seen, ids) = (seen.clone(), ids.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                classify(&line, &ids, &mut *seen.lock().await);
            }
        })
    };
    // Let MONITOR settle before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let cpu = CpuMeter::start();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let http = http.clone();
        let mine: Vec<_> = urls.iter().skip(w).step_by(clients).cloned().collect();
        let count = switches / clients + usize::from(w < switches % clients);
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for i in 0..count {
                if http_load::send(http.post(mine[i % mine.len()].clone()))
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.context("a switch client panicked")?;
    }
    let took = started.elapsed();
    // The publishes follow the answers; give the monitor time to see them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    let seen = seen.lock().await;
    let total: u64 = seen.commands.values().sum();
    let ok = switches as u64 - failed;
    let per = |n: u64| if ok > 0 { n as f64 / ok as f64 } else { 0.0 };
    let per_switch = per(total);
    eprintln!(
        "redis-commands: {ok} switches, {total} commands on the request path ({per_switch:.3} per switch) {:?}, {} publishes sent apart, {} by scripts, {} commands run inside scripts",
        seen.commands, seen.publishes, seen.scripted_publishes, seen.in_scripts
    );
    Ok(json!({
        "scenario": "redis-commands",
        "switches": ok,
        "failed": failed,
        "commands": total,
        "per_switch": per_switch,
        "by_command": seen.commands,
        "publishes": seen.publishes,
        "scripted_publishes": seen.scripted_publishes,
        "publishes_per_switch": per(seen.publishes + seen.scripted_publishes),
        "scripted_publishes_per_switch": per(seen.scripted_publishes),
        "in_scripts": seen.in_scripts,
        "duration_s": took.as_secs_f64(),
        "loadgen_cpu_percent": cpu.percent(),
    })
    .to_string())
}

/// Sorts one `MONITOR` line (`1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" ...`).
fn classify(line: &str, ids: &HashSet<String>, seen: &mut Seen) {
    let Some((origin, rest)) = line.split_once("] ") else {
        return;
    };
    let name = rest
        .split('"')
        .nth(1)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let publish = name == "PUBLISH" || name == "SPUBLISH";
    // A UUID is 36 characters; look for any of ours in the line.
    let names_ours = || {
        rest.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
            .any(|w| w.len() == 36 && ids.contains(w))
    };
    if origin.ends_with(" lua") {
        seen.in_scripts += 1;
        if publish && names_ours() {
            seen.scripted_publishes += 1;
        }
        return;
    }
    if publish {
        if names_ours() {
            seen.publishes += 1;
        }
        return;
    }
    if names_ours() {
        *seen.commands.entry(name).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_are_sorted_by_who_sent_them() {
        let id = "123e4567-e89b-12d3-a456-426614174000";
        let ids = HashSet::from([id.to_owned()]);
        let mut seen = Seen::default();
        for line in [
            format!(r#"1.5 [0 127.0.0.1:5000] "EVALSHA" "ab12" "2" "k:{{p01}}:s:{id}" "7""#),
            format!(r#"1.6 [0 lua] "HSET" "k:{{p01}}:s:{id}" "v" "8""#),
            format!(r#"1.7 [0 127.0.0.1:5000] "hget" "k:{{p01}}:s:{id}" "s""#),
            format!(r#"1.8 [0 127.0.0.1:5001] "SPUBLISH" "k:{{{id}}}:bus" "x""#),
            r#"1.85 [0 127.0.0.1:5001] "PUBLISH" "other:ch" "x""#.to_owned(),
            r#"1.9 [0 127.0.0.1:5000] "EVALSHA" "cd34" "1" "k:{p02}:deadlines""#.to_owned(),
            format!(r#"2.0 [0 lua] "PUBLISH" "k:{{{id}}}:bus" """#),
            r#"2.1 [0 lua] "PUBLISH" "k:{00000000-0000-0000-0000-000000000000}:bus" "x""#
                .to_owned(),
        ] {
            classify(&line, &ids, &mut seen);
        }
        assert_eq!(
            seen.commands,
            BTreeMap::from([("EVALSHA".to_owned(), 1), ("HGET".to_owned(), 1)])
        );
        assert_eq!(
            (seen.publishes, seen.scripted_publishes, seen.in_scripts),
            (1, 1, 3)
        );
    }
}
