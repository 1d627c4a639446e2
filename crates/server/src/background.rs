//! The background runtimes: the workers that drain outboxes and send
//! webhooks run on threads of their own at a lower CPU priority (`nice`
//! +10), so that on a busy machine the hot path (HTTP, WebSockets, the
//! local timers) gets the cores first. The audit drain has a thread to
//! itself and the webhook workers (fan-out and delivery) share another:
//! the audit worker decodes and writes a whole batch in one go, which on a
//! shared thread held the webhook sends back (measured with batches of up
//! to 5,000 events: webhook delivery p99 34–65 ms against 30 ms,
//! docs/performance.md).
//!
//! Their work is off the hot path by design (the audit trail and webhooks
//! are fed from durable outboxes, at least once): under overload it waits,
//! and their backlogs grow visibly in the metrics (`kairos_audit_backlog`,
//! `kairos_webhook_queue_depth`), instead of delaying switches and timeouts.
//! Measured: with the audit trail on, the audit drain competing for the
//! cores made 10,000 timeouts over three instances fire hundreds of
//! milliseconds late on two cores (see docs/performance.md).

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How much lower the background thread's priority is (`nice` increment).
pub const NICENESS: i32 = 10;

/// A current-thread runtime on a thread of its own, lowered by
/// [`NICENESS`]. Tasks spawned on [`Self::handle`] run there until
/// [`Self::stop`].
#[derive(Debug)]
pub struct Background {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread, named `name`, and its runtime.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                lower_priority();
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Runs the spawned tasks until told to stop.
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the background thread ended before its runtime started"))?
            .map_err(|e| anyhow::anyhow!("cannot start the background runtime: {e}"))?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where to spawn the background workers.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime (tasks still running are dropped: await them
    /// first) and waits for the thread, off the async workers.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Lowers the calling thread's priority by [`NICENESS`] (on Linux a
/// thread's nice value is its own). Lowering is always permitted; if it
/// fails anyway the workers run at normal priority (logged).
fn lower_priority() {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), current + NICENESS) {
        tracing::warn!(error = %e, "cannot lower the background workers' priority; they run at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_a_lowered_thread_of_their_own() {
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            .expect("own priority");
        let background = Background::start("kairos-test-bg").expect("starts");
        let (name, priority) = background
            .handle()
            .spawn(async {
                let tid = rustix::thread::gettid();
                (
                    std::thread::current().name().map(str::to_owned),
                    rustix::process::getpriority_process(Some(tid)).expect("priority"),
                )
            })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("kairos-test-bg"));
        assert_eq!(priority, (own + NICENESS).min(19));
        background.stop().await;
    }
}
