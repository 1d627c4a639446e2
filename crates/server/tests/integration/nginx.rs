//! The repository's nginx configuration (deploy/nginx) live on loopback, in
//! front of three real instances on one Redis: plain round-robin for REST,
//! WebSockets through it, and a client that reconnects through nginx after
//! its instance is stopped and still receives updates.
#![allow(clippy::unwrap_used)] // Helpers outside #[test] fns unwrap too: a panic is a failed test.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::create_session;
use crate::common::procs::{Instance, free_port, prefix, redis_url};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// nginx run from a scratch prefix with the repository's config, rendered
/// the way deploy/nginx/templates describe.
struct Nginx {
    port: u16,
    dir: PathBuf,
    child: Child,
    /// nginx's access log (stdout), which names the upstream of every request.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Self {
        let bin = std::env::var("KAIROS_TEST_NGINX").unwrap_or_else(|_| {
            panic!("KAIROS_TEST_NGINX is not set: run the tests with `cargo xtask test`")
        });
        let dir =
            std::env::temp_dir().join(format!("kairos-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::copy(
            repo().join("deploy/nginx/nginx.conf"),
            dir.join("nginx.conf"),
        )
        .unwrap();
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=2s; "))
            .collect();
        for (template, out) in [
            ("kairos-upstream.conf.template", "kairos-upstream.conf"),
            ("kairos-listen.conf.template", "kairos-listen.conf"),
        ] {
            let text =
                std::fs::read_to_string(repo().join("deploy/nginx/templates").join(template))
                    .unwrap();
            let rendered = text
                .replace("${KAIROS_LISTEN}", &format!("127.0.0.1:{port}"))
                .replace("${KAIROS_RESOLVER}", "")
                .replace("${KAIROS_UPSTREAM_SERVERS}", &servers);
            assert!(
                !rendered.contains("${"),
                "unrendered placeholder in {template}"
            );
            std::fs::write(dir.join("conf.d").join(out), rendered).unwrap();
        }
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr", "-g"])
            .arg(format!("daemon off; pid {}/nginx.pid;", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            dir,
            child,
            log,
        }
    }

    /// The upstream ports of logged requests whose line contains `needle`.
    fn upstreams_of(&self, needle: &str) -> Vec<u16> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split("upstream=127.0.0.1:").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its workers; SIGKILL would
        // orphan them, still listening.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                return json!({"type": "CLOSED", "frame": format!("{frame:?}")});
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return json!({"type": "CLOSED"}),
        }
    }
}

async fn connect(nginx: &Nginx, id: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/ws?sessionId={id}", nginx.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake through nginx");
    assert_eq!(next_json(&mut ws).await["type"], "CONNECTED");
    assert_eq!(next_json(&mut ws).await["type"], "STATE_SYNC");
    ws
}

#[tokio::test]
async fn round_robin_rest_and_websockets_through_nginx_survive_an_instance_stopping() {
    let env = [("REDIS_URL", redis_url()), ("REDIS_KEY_PREFIX", prefix())];
    let mut nodes = vec![
        Instance::start(&env).await,
        Instance::start(&env).await,
        Instance::start(&env).await,
    ];
    let nginx = Nginx::start(&nodes.iter().map(|n| n.port).collect::<Vec<_>>());
    let http = reqwest::Client::new();

    // REST through nginx.
    let id = create_session(
        &http,
        nginx.url("/v1/sessions"),
        None,
        json!({
            "sync_mode": "per_participant",
            "participants": [{"participant_id": "white", "total_time_ms": 600000},
                             {"participant_id": "black", "total_time_ms": 600000}]
        }),
    )
    .await;
    assert_eq!(
        http.post(nginx.url(&format!("/v1/sessions/{id}/start")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Nine reads, whichever instance answers, agree; plain round-robin
    // spreads them three to each instance.
    for _ in 0..9 {
        let res = http
            .get(nginx.url(&format!("/v1/sessions/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["data"]["version"], 2);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = nginx.upstreams_of(&format!("GET /v1/sessions/{id} "));
    assert_eq!(hits.len(), 9, "access log: {:?}", nginx.log.lock().unwrap());
    for n in &nodes {
        let count = hits.iter().filter(|p| **p == n.port).count();
        assert_eq!(
            count, 3,
            "instance {} served {count} of 9: {hits:?}",
            n.port
        );
    }

    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(connect(&nginx, &id).await);
    }
    let res = http
        .post(nginx.url(&format!("/v1/sessions/{id}/switch")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for ws in &mut watchers {
        let m = next_json(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["state"]["version"].as_u64()),
            (Some("STATE_UPDATE"), Some(3))
        );
    }

    // Stop one instance: the clients it served lose their socket, reconnect
    // through nginx (which skips the dead instance) and get updates again.
    nodes[0].kill();
    let mut reconnected = 0;
    for ws in &mut watchers {
        let probe = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        let dead = matches!(
            probe,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_))))
        );
        if dead {
            *ws = connect(&nginx, &id).await;
            reconnected += 1;
        }
    }
    assert!(reconnected >= 1, "no client was on the stopped instance");
    let res = http
        .post(nginx.url(&format!("/v1/sessions/{id}/switch")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut versions = HashSet::new();
    for ws in &mut watchers {
        loop {
            let m = next_json(ws).await;
            if m["type"] == "STATE_UPDATE" || m["type"] == "STATE_SYNC" {
                if m["state"]["version"] == 4 {
                    versions.insert(4);
                    break;
                }
            } else if m["type"] == "CLOSED" {
                panic!("a client lost its socket again");
            }
        }
    }
    assert_eq!(versions, HashSet::from([4]));
}
