//! Real `kairos-server` processes and a Redis of their own, for tests that
//! need several instances or need to stop Redis under them.
#![allow(unreachable_pub)] // `pub` here means "shared by the suite's modules".

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use test_support::{free_port, redis_url};

/// One `kairos-server` process, killed when dropped.
pub struct Instance {
    pub port: u16,
    pub child: Child,
}

impl Instance {
    /// Starts the binary with `env` on top of test defaults and waits until ready.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kairos-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("METRICS_PORT", free_port().to_string())
            .env("RATE_LIMITS", "off")
            // Correctness tests on a loaded 2-core machine: a 250 ms bound
            // could turn slowness into 503s. Tests of outages still see a
            // dead Redis refuse connections at once.
            .env("REDIS_COMMAND_TIMEOUT_MS", "2000")
            .env("SHUTDOWN_DRAIN_SECONDS", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("kairos-server starts");
        let instance = Self { port, child };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(instance.url("/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "instance on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        instance
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// SIGKILL: the instance dies without any goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server of the test's own, so the test may stop and restart it.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    /// TLS only, with a self-signed certificate for 127.0.0.1 in `dir`.
    tls: bool,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("kairos-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut me = Self {
            port: free_port(),
            dir,
            tls: false,
            child: None,
        };
        me.spawn();
        me
    }

    /// A Redis that speaks only TLS on `port`, with a certificate for
    /// 127.0.0.1 signed by a fresh CA whose certificate is
    /// [`OwnRedis::ca_file`].
    pub fn start_tls() -> Self {
        let dir =
            std::env::temp_dir().join(format!("kairos-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (ca, cert, key) = ca_and_leaf("127.0.0.1");
        std::fs::write(dir.join("ca.crt"), ca).expect("writes the CA");
        std::fs::write(dir.join("redis.crt"), cert).expect("writes the certificate");
        std::fs::write(dir.join("redis.key"), key).expect("writes the key");
        let mut me = Self {
            port: free_port(),
            dir,
            tls: true,
            child: None,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let bin = test_support::redis_server_binary();
        let port = self.port.to_string();
        let mut listen = vec!["--port".to_owned(), port.clone()];
        if self.tls {
            let file = |name: &str| self.dir.join(name).display().to_string();
            listen = vec![
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port,
                "--tls-cert-file".to_owned(),
                file("redis.crt"),
                "--tls-key-file".to_owned(),
                file("redis.key"),
                "--tls-ca-cert-file".to_owned(),
                file("ca.crt"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ];
        }
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(&listen)
            // AOF on: committed state must survive the restart.
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (KAIROS_TEST_REDIS_SERVER)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "own redis never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl OwnRedis {
    /// The CA certificate (PEM) of a [`OwnRedis::start_tls`] server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}

/// A fresh CA, and a certificate for `host` it signed: (CA PEM, certificate
/// PEM, key PEM).
pub fn ca_and_leaf(host: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kairos test CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("signed");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A PostgreSQL server of the test's own (from `KAIROS_TEST_PG_BIN`), so the
/// test may stop and restart it. As root it runs as `postgres`, as
/// PostgreSQL refuses root.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// `ssl=on` with a self-signed certificate for 127.0.0.1 (`server.crt`).
    tls: bool,
}

fn as_postgres(program: &std::path::Path) -> Command {
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl OwnPostgres {
    pub fn start() -> Self {
        Self::start_with_tls(false)
    }

    /// A server with `ssl=on` and a fresh self-signed certificate for
    /// 127.0.0.1, at [`OwnPostgres::certificate`].
    pub fn start_tls() -> Self {
        Self::start_with_tls(true)
    }

    /// The certificate a TLS server presents (PEM).
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn start_with_tls(tls: bool) -> Self {
        let bin = PathBuf::from(std::env::var("KAIROS_TEST_PG_BIN").unwrap_or_else(|_| {
            panic!("KAIROS_TEST_PG_BIN is not set: run the tests with `cargo xtask test`")
        }));
        let dir = std::env::temp_dir().join(format!("kairos-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status();
        let status = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--locale=C",
                "--encoding=UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        if tls {
            let cert =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
            std::fs::write(dir.join("server.crt"), cert.cert.pem())
                .expect("writes the certificate");
            let key = dir.join("server.key");
            std::fs::write(&key, cert.signing_key.serialize_pem()).expect("writes the key");
            // PostgreSQL refuses a key others may read, or one it does not own.
            let _ = Command::new("chmod").arg("600").arg(&key).status();
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        let me = Self {
            port: free_port(),
            dir,
            bin,
            tls,
        };
        me.pg_ctl_start();
        let status = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &me.port.to_string(),
                "-U",
                "postgres",
                "-qAt",
                "-c",
                "CREATE DATABASE kairos",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("psql runs");
        assert!(status.success(), "createdb failed");
        me
    }

    fn pg_ctl_start(&self) {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        if self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                self.dir.join("server.crt").display(),
                self.dir.join("server.key").display()
            ));
        }
        let status = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl start failed");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kairos", self.port)
    }

    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn restart(&self) {
        self.stop();
        self.pg_ctl_start();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one SQL query with psql against `url` and returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-qAt", "-F", "|", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The shared test PostgreSQL of `cargo xtask test`.
pub fn database_url() -> String {
    std::env::var("KAIROS_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("KAIROS_TEST_DATABASE_URL is not set: run the tests with `cargo xtask test`")
    })
}

/// A key prefix of the test's own, so tests sharing one Redis never drain
/// each other's outbox.
pub fn prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

/// POSTs `body` (if any) and returns the status and the JSON body (`Null` when none).
pub async fn post(
    http: &reqwest::Client,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}
