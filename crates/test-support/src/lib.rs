//! # test-support
//!
//! What the workspace's tests share, written once: free loopback ports for
//! the servers a test starts, the shared Redis and the `redis-server` that
//! `cargo xtask test` provides, the two-player chess config most tests
//! create, and a test's own TCP sockets found by address. Only ever a
//! dev-dependency: nothing a release binary runs uses it.
//!
//! Panics are its error reporting: a helper that cannot do its job fails
//! the test that called it, with a message saying why (a test never skips
//! for want of a server).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

/// A free loopback port (bound, read back, released), never the same one
/// twice in a test process.
///
/// A server stopped by one test frees its port, and a test starting a
/// server right then could otherwise get the same port, and a client still
/// aiming at the old server would reach the new one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binds port 0")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The shared Redis `cargo xtask test` starts, from `KAIROS_TEST_REDIS_URL`.
///
/// # Panics
///
/// When the variable is unset or empty: the tests that need Redis run
/// through `cargo xtask test`, which starts one and sets it.
pub fn redis_url() -> String {
    match std::env::var("KAIROS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "KAIROS_TEST_REDIS_URL is not set: run these tests with `cargo xtask test` \
             (`-p <crate>` for one crate), which starts a throwaway Redis and sets it"
        ),
    }
}

/// The `redis-server` binary for tests that run servers of their own, from
/// `KAIROS_TEST_REDIS_SERVER` (`cargo xtask test` installs Redis when
/// missing and sets it).
///
/// # Panics
///
/// When the variable is unset or empty.
pub fn redis_server_binary() -> String {
    match std::env::var("KAIROS_TEST_REDIS_SERVER") {
        Ok(path) if !path.is_empty() => path,
        _ => panic!(
            "KAIROS_TEST_REDIS_SERVER is not set: run these tests with `cargo xtask test` \
             (`-p <crate>` for one crate)"
        ),
    }
}

/// The config of a two-player chess clock (`per_participant`, `white` and
/// `black` with `bank_ms` each, `increment_ms` per move), as a client sends
/// it: the session most tests need, for `SessionConfig::parse` or a
/// `POST /v1/sessions` body.
pub fn chess(bank_ms: i64, increment_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "sync_mode": "per_participant",
        "participants": [
            {"participant_id": "white", "total_time_ms": bank_ms},
            {"participant_id": "black", "total_time_ms": bank_ms}
        ],
        "increment_ms": increment_ms
    })
}

/// This process's own descriptor of the TCP socket whose peer is `peer`: in
/// a test that runs a server in-process, the server's side of the test's
/// client connection from `peer`.
///
/// # Panics
///
/// Unless exactly one socket of this process has that peer.
pub fn socket_with_peer(peer: SocketAddr) -> OwnedFd {
    own_socket(&format!("with the peer {peer}"), |fd| {
        rustix::net::getpeername(fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok())
            == Some(peer)
    })
}

/// This process's own descriptor of the connected TCP socket bound to
/// `local`: in a test that runs a client in-process, the client's socket,
/// found by the peer address its server saw. (Listening sockets are left
/// out: one bound to `0` may get the port a connection was given.)
///
/// # Panics
///
/// Unless exactly one connected socket of this process is bound to that
/// address.
pub fn socket_bound_to(local: SocketAddr) -> OwnedFd {
    own_socket(&format!("bound to {local}"), |fd| {
        rustix::net::getpeername(fd).ok().flatten().is_some()
            && rustix::net::getsockname(fd)
                .ok()
                .and_then(|a| SocketAddr::try_from(a).ok())
                == Some(local)
    })
}

/// The one socket of this process that `matches`, duplicated through a
/// pidfd (`pidfd_getfd` on itself: a socket another part of the test owns,
/// without `unsafe`), so its options can be read.
///
/// The descriptors are listed before any is duplicated (a duplicate made
/// while the directory is read could be listed and matched again), and
/// descriptors of one socket (the same inode: the code under test may hold
/// a `dup` of its own) count once.
fn own_socket(what: &str, matches: impl Fn(&OwnedFd) -> bool) -> OwnedFd {
    let me = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd_open on this process");
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("reads /proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_string_lossy().parse().ok())
        .collect();
    let mut found: Vec<(u64, OwnedFd)> = Vec::new();
    for fd in fds {
        let Ok(dup) =
            rustix::process::pidfd_getfd(&me, fd, rustix::process::PidfdGetfdFlags::empty())
        else {
            continue;
        };
        if !matches(&dup) {
            continue;
        }
        let inode = rustix::fs::fstat(&dup).expect("fstat of a socket").st_ino;
        if found.iter().all(|(seen, _)| *seen != inode) {
            found.push((inode, dup));
        }
    }
    assert_eq!(found.len(), 1, "one socket {what}, found {}", found.len());
    found.pop().expect("one socket").1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A panic is a failed test.
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_given_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[test]
    fn both_ends_of_a_connection_are_found_and_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, client_addr) = listener.accept().unwrap();
        assert_eq!(client.local_addr().unwrap(), client_addr);
        // Tell the two apart by an option only one of them has.
        client.set_nodelay(true).unwrap();
        let found_client = socket_bound_to(client_addr);
        let found_server = socket_with_peer(client_addr);
        assert!(rustix::net::sockopt::tcp_nodelay(&found_client).unwrap());
        assert!(!rustix::net::sockopt::tcp_nodelay(&found_server).unwrap());
        drop(server);
    }
}
