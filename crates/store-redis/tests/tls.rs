//! `rediss://`: the store reaches a Redis that only speaks TLS, verifies
//! the server's certificate unless told `#insecure`, and a plain
//! connection to the TLS port fails instead of hanging.

mod common;

use std::time::Duration;

use common::{OwnRedis, chess};
use kairos_domain::{SessionStore, StoreError};
use store_redis::{RedisConfig, RedisStore};

/// A Redis listening only on a TLS port, with a self-signed certificate
/// for 127.0.0.1.
fn tls_redis() -> (OwnRedis, TempDir) {
    let dir = TempDir::new();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let cert_file = dir.path.join("redis.crt");
    let key_file = dir.path.join("redis.key");
    std::fs::write(&cert_file, cert.cert.pem()).expect("writes the certificate");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("writes the key");
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let server = OwnRedis::start_tls(&[
        "--tls-cert-file",
        &cert_file,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &cert_file,
        "--tls-auth-clients",
        "no",
        "--appendonly",
        "no",
    ]);
    (server, dir)
}

/// A directory removed when dropped.
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("kairos-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn config(url: String) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.command_timeout = Duration::from_secs(2);
    config.key_prefix = format!("tls{}:", uuid::Uuid::new_v4().simple());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_insecure_encrypts_and_runs_every_operation() {
    let (server, _dir) = tls_redis();
    let store = RedisStore::connect(&config(format!(
        "rediss://127.0.0.1:{}/#insecure",
        server.port
    )))
    .await
    .expect("connects over TLS");
    let (session, created) = chess(60_000, 1_000);
    store.create(&session, &[created]).await.expect("created");
    assert_eq!(store.load(session.id).await, Ok(Some(session)));
    assert_eq!(store.ping().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_is_refused_and_plain_text_does_not_get_through() {
    let (server, _dir) = tls_redis();
    // Verified against the public roots: a self-signed certificate fails.
    let verified =
        RedisStore::connect(&config(format!("rediss://127.0.0.1:{}/", server.port))).await;
    match verified {
        Err(StoreError::Unavailable(m) | StoreError::Other(m)) => {
            assert!(m.to_lowercase().contains("certificate"), "{m}");
        }
        Ok(_) => panic!("a self-signed certificate was accepted"),
        Err(other) => panic!("{other:?}"),
    }
    // Plain text to the TLS port: refused, within the timeout.
    let plain = RedisStore::connect(&config(format!("redis://127.0.0.1:{}/", server.port))).await;
    assert!(plain.is_err(), "plain text reached a TLS-only server");
}
