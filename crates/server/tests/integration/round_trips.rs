//! What a switch costs Redis on the request path, counted where Redis sees
//! it: a real `kairos-server` process on a Redis of the test's own, rate
//! limits on (the switch limit raised so that nothing is refused), and a
//! `MONITOR` connection that lists every command the server sends.
//!
//! Steady state is a session the instance already serves: the switch is
//! decided on the instance's copy and the commit script confirms it, with
//! the per-session switch limit counted and the update published inside the
//! same script, so each switch is one command (`EVALSHA`), and its
//! `PUBLISH` is one the script runs.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::procs::{Instance, OwnRedis, post};
use crate::common::{chess, create_session};

const SESSIONS: usize = 10;
const SWITCHES_PER_SESSION: usize = 100;

/// One `MONITOR` line: the client's address (`lua` for a command a script
/// ran), the command's name (upper case) and the whole line.
struct Seen {
    client: String,
    command: String,
    line: String,
}

/// Parses `+1765000000.123456 [0 127.0.0.1:40000] "EVALSHA" "..." ...`.
fn parse(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let client = line[open + 1..close].split_once(' ')?.1.to_owned();
    let rest = line[close + 1..].trim_start().strip_prefix('"')?;
    let command = rest.split('"').next()?.to_ascii_uppercase();
    Some(Seen {
        client,
        command,
        line: line.to_owned(),
    })
}

/// Sends one command in RESP over a fresh connection and reads its reply
/// (a simple or a bulk string).
async fn command(port: u16, args: &[&str]) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(out.as_bytes()).await.unwrap();
    let mut conn = BufReader::new(conn);
    let mut reply = String::new();
    conn.read_line(&mut reply).await.unwrap();
    if reply.starts_with('$') {
        // A bulk string: its length, then its bytes.
        reply.clear();
        conn.read_line(&mut reply).await.unwrap();
    }
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_on_a_session_the_instance_serves_is_one_redis_command_which_publishes_it() {
    let redis = OwnRedis::start();
    let server = Instance::start(&[
        ("REDIS_URL", redis.url()),
        ("RATE_LIMITS", "on".into()),
        ("RATE_LIMIT_SWITCH_PER_SECOND", "100000".into()),
        ("RATE_LIMIT_CREATE_PER_MINUTE", "1000".into()),
    ])
    .await;
    let http = reqwest::Client::new();

    // Warm: each session created, started and switched on this instance.
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let id = create_session(
            &http,
            server.url("/v1/sessions"),
            None,
            chess(86_400_000, 0),
        )
        .await;
        let (status, _) = post(&http, server.url(&format!("/v1/sessions/{id}/start")), None).await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            let (status, _) = post(
                &http,
                server.url(&format!("/v1/sessions/{id}/switch")),
                None,
            )
            .await;
            assert_eq!(status, 200);
        }
        ids.push(id);
    }

    // Listen to everything Redis executes from now on.
    let mut monitor = TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap();
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut monitor = BufReader::new(monitor);
    let mut ok = String::new();
    monitor.read_line(&mut ok).await.unwrap();
    assert_eq!(ok.trim_end(), "+OK");
    let marker = format!("round-trips-done-{}", uuid::Uuid::new_v4().simple());
    let reader = {
        let marker = marker.clone();
        tokio::spawn(async move {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if monitor.read_line(&mut line).await.unwrap() == 0 {
                    panic!("MONITOR ended before the marker");
                }
                if line.contains(&marker) {
                    return lines;
                }
                lines.push(line.trim_end().to_owned());
            }
        })
    };

    // 1,000 switches: one task per session, each waiting for its answer
    // (a client presses its clock after the previous press is known).
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let http = http.clone();
            let url = server.url(&format!("/v1/sessions/{id}/switch"));
            tokio::spawn(async move {
                for _ in 0..SWITCHES_PER_SESSION {
                    let res = http.post(&url).send().await.unwrap();
                    assert_eq!(res.status(), 200);
                    assert!(res.headers().contains_key("ratelimit-remaining"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Everything Redis executed before this marker is in the lines.
    assert!(
        command(redis.port, &["ECHO", &marker])
            .await
            .contains(&marker)
    );
    let lines = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the marker reached MONITOR")
        .unwrap();

    // The request path's connections: those that sent anything about our
    // sessions (the HTTP workers' own connections). The server's other
    // connections (deadline polls, the clock, the bus) are not on it.
    let seen: Vec<Seen> = lines.iter().filter_map(|l| parse(l)).collect();
    assert!(seen.len() >= lines.len() / 2, "MONITOR lines parse");
    let request_path: BTreeSet<&str> = seen
        .iter()
        .filter(|s| s.client != "lua" && ids.iter().any(|id| s.line.contains(id.as_str())))
        .map(|s| s.client.as_str())
        .collect();
    let mut by_command: BTreeMap<&str, usize> = BTreeMap::new();
    // Publishes the server sent as commands of their own, and those its
    // commit scripts ran (`lua`), on our sessions' channels.
    let (mut sent, mut scripted) = (0, 0);
    for s in &seen {
        let publish = matches!(s.command.as_str(), "PUBLISH" | "SPUBLISH")
            && ids.iter().any(|id| s.line.contains(id.as_str()));
        if s.client == "lua" {
            scripted += usize::from(publish);
        } else if publish {
            sent += 1;
        } else if request_path.contains(s.client.as_str()) {
            *by_command.entry(s.command.as_str()).or_default() += 1;
        }
    }
    let switches = SESSIONS * SWITCHES_PER_SESSION;
    let commands: usize = by_command.values().sum();
    eprintln!(
        "{switches} switches: {commands} commands on the request path {by_command:?} over {} connection(s); publishes: {scripted} by the commit script, {sent} sent apart",
        request_path.len()
    );
    assert!(
        (switches..=switches + switches / 20).contains(&commands),
        "{commands} commands for {switches} switches: {by_command:?}"
    );
    // Every switch's update went out from its commit, none apart.
    assert_eq!((scripted, sent), (switches, 0));
}
