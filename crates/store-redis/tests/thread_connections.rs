//! `keep_connections_on_this_thread`: a marked thread sends over one
//! connection of its own, opened by its first command and closed with the
//! thread; other threads share the store's connection; a thread's own
//! connection comes back after a Redis restart like the shared one.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::OwnRedis;
use kairos_domain::SessionStore;
use store_redis::conn::keep_connections_on_this_thread;
use store_redis::{RedisConfig, RedisStore};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// How many clients the server has, the caller's own included.
fn clients(rt: &tokio::runtime::Runtime, conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = rt
        .block_on(redis::cmd("CLIENT").arg("LIST").query_async(conn))
        .expect("CLIENT LIST");
    list.lines().count()
}

#[test]
fn marked_threads_send_over_one_connection_each_and_others_share() {
    let mut server = OwnRedis::start();
    // The shared connection's task runs on this runtime's own worker, as
    // on the server's main runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = "threads:".into();
    let store = Arc::new(rt.block_on(RedisStore::connect(&config)).expect("connects"));
    let mut probe = rt.block_on(common::raw(&server.url()));
    let base = clients(&rt, &mut probe);

    // An unmarked thread shares the store's connection.
    let shared = Arc::clone(&store);
    std::thread::spawn(move || {
        let rt = runtime();
        for _ in 0..5 {
            rt.block_on(shared.ping()).expect("ping");
        }
    })
    .join()
    .expect("thread");
    assert_eq!(
        clients(&rt, &mut probe),
        base,
        "an unmarked thread opened a connection"
    );

    // Two marked threads: one connection each, however many commands.
    let sent = Arc::new(Barrier::new(3));
    let counted = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, sent, counted) = (Arc::clone(&store), sent.clone(), counted.clone());
            std::thread::spawn(move || {
                keep_connections_on_this_thread();
                let rt = runtime();
                for _ in 0..5 {
                    rt.block_on(store.ping()).expect("ping");
                }
                sent.wait();
                counted.wait();
            })
        })
        .collect();
    sent.wait();
    assert_eq!(clients(&rt, &mut probe), base + 2);
    counted.wait();
    for t in threads {
        t.join().expect("thread");
    }
    // Their connections close with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while clients(&rt, &mut probe) != base {
        assert!(
            Instant::now() < deadline,
            "a thread's connection outlived it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A marked thread's connection fails fast while Redis is down and
    // serves again after it restarts: the first command after the restart
    // already succeeds, as on the shared connection.
    let marked = Arc::clone(&store);
    let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), kairos_domain::StoreError>>();
    let worker = std::thread::spawn(move || {
        keep_connections_on_this_thread();
        let rt = runtime();
        for _ in 0..3 {
            done_tx
                .send(rt.block_on(marked.ping()))
                .expect("main waits");
            if step_rx.recv().is_err() {
                return;
            }
        }
    });
    assert_eq!(done_rx.recv().expect("before"), Ok(()));
    server.stop();
    step_tx.send(()).expect("worker waits");
    let down = done_rx.recv().expect("while down");
    assert!(
        matches!(down, Err(kairos_domain::StoreError::Unavailable(_))),
        "{down:?}"
    );
    server.restart();
    step_tx.send(()).expect("worker waits");
    assert_eq!(done_rx.recv().expect("after"), Ok(()));
    drop(step_tx);
    worker.join().expect("thread");
    server.stop();
}
