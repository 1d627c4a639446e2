//! A fleet of WebSocket clients: opened with bounded parallelism, each
//! reading its session's messages and handing them to the scenario until
//! told to stop. Reading also answers the server's pings (tungstenite
//! queues the pong and flushes it on the next read), so idle sockets stay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{ServerMessage, SourceAddrs, now_ms, ws_connect_retry};

/// One socket to open: where, for which session (id and the scenario's index).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) target: Url,
    pub(crate) session_id: String,
    pub(crate) session: usize,
}

/// Times a socket is opened before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 4;

/// What one socket saw by the end.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// The scenario's index of its session.
    pub(crate) session: usize,
    /// Versions of the `STATE_UPDATE`s received, in arrival order.
    pub(crate) updates: Vec<u64>,
    /// The server closed it, or it failed, before the end.
    pub(crate) dropped: bool,
    /// It received its `STATE_SYNC` (sockets that never did are retried,
    /// then counted as failed, not as missing updates).
    pub(crate) synced: bool,
    /// `STATE_SYNC`s after the first: the server resynchronised the socket
    /// after it fell behind or the bus lost messages.
    pub(crate) resyncs: u64,
}

/// Called for each server message: (session index, message, wall ms, instant).
pub(crate) type Handler = dyn Fn(usize, &ServerMessage, f64, Instant) + Send + Sync;

/// The running fleet.
#[derive(Debug)]
pub(crate) struct Fleet {
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Option<Log>>>,
}

impl Fleet {
    /// Opens every socket of `plans` (`parallel` handshakes at a time) in
    /// background tasks; see [`Fleet::wait_ready`].
    pub(crate) fn open(
        plans: Vec<Plan>,
        read_buffer: usize,
        parallel: usize,
        handler: Arc<Handler>,
    ) -> Self {
        let ready = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (stop, _) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let sources = SourceAddrs::for_sockets(plans.len());
        let tasks = plans
            .into_iter()
            .map(|plan| {
                let (ready, failed, gate, sources, handler) = (
                    ready.clone(),
                    failed.clone(),
                    gate.clone(),
                    sources.clone(),
                    handler.clone(),
                );
                let stop = stop.subscribe();
                tokio::spawn(async move {
                    // A socket the server closes before its STATE_SYNC (it
                    // could not load the session in time) is opened again,
                    // as the SDK's clients do, a few times at most.
                    let mut why = String::new();
                    for attempt in 0..CONNECT_ATTEMPTS {
                        if *stop.borrow() {
                            break;
                        }
                        let ws = {
                            let _permit = gate.clone().acquire_owned().await.ok()?;
                            ws_connect_retry(&plan.target, &plan.session_id, &sources, read_buffer)
                                .await
                        };
                        match ws {
                            Ok(ws) => {
                                let log =
                                    read(ws, plan.session, &ready, stop.clone(), &*handler).await;
                                if log.synced {
                                    return Some(log);
                                }
                                why = "closed by the server before its STATE_SYNC".to_owned();
                            }
                            Err(e) => why = format!("{e:#}"),
                        }
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("  first socket given up: {why}");
                    }
                    None
                })
            })
            .collect();
        Self {
            ready,
            failed,
            stop,
            tasks,
        }
    }

    /// Sockets that received their `STATE_SYNC`.
    pub(crate) fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sockets that could not be opened and synchronised.
    pub(crate) fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until every socket is synchronised or failed, or `timeout`
    /// passed; returns the number synchronised.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> usize {
        let total = self.tasks.len();
        let started = Instant::now();
        let mut shown = Instant::now();
        while self.ready() + self.failed() < total && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if shown.elapsed() > Duration::from_secs(5) {
                eprintln!("  {} of {total} sockets ready", self.ready());
                shown = Instant::now();
            }
        }
        eprintln!(
            "  {} of {total} sockets ready ({} failed) in {:.1} s",
            self.ready(),
            self.failed(),
            started.elapsed().as_secs_f64()
        );
        self.ready()
    }

    /// Tells every socket to stop and collects what each saw.
    pub(crate) async fn stop(self) -> Vec<Log> {
        let _ = self.stop.send(true);
        let mut logs = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(Ok(Some(log))) = tokio::time::timeout(Duration::from_secs(10), task).await {
                logs.push(log);
            }
        }
        logs
    }
}

async fn read(
    mut ws: crate::common::Ws,
    session: usize,
    ready: &AtomicUsize,
    mut stop: watch::Receiver<bool>,
    handler: &Handler,
) -> Log {
    let mut log = Log {
        session,
        ..Log::default()
    };
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                log.dropped = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let (wall, at) = (now_ms(), Instant::now());
        let Ok(parsed) = serde_json::from_str::<ServerMessage>(text.as_str()) else {
            continue;
        };
        match parsed.kind.as_str() {
            "STATE_SYNC" if !log.synced => {
                log.synced = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            "STATE_SYNC" => log.resyncs += 1,
            "STATE_UPDATE" => {
                if let Some(state) = &parsed.state {
                    log.updates.push(state.version);
                }
            }
            _ => {}
        }
        handler(session, &parsed, wall, at);
    }
    // Close politely but without waiting long for the answer.
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    log
}
