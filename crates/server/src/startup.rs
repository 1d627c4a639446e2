//! Wiring: builds the adapters the configuration asks for, the service, the
//! HTTP servers and the workers; runs them until a shutdown future resolves,
//! then shuts down as contract section 7 says.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use actix_web::web;
use adapter_memory::{MemoryAudit, MemoryBus, MemoryStore, SystemClock};
use http_actix::{AppState, AuthMode, HttpSettings, Lifecycle, Metrics, Service};
use kairos_domain::{AuditSink, Clock, EventBus, Outbox, SessionStore};
use tokio::sync::watch;

use crate::config::Settings;
use crate::workers::{self, AuditStatus};

/// A built application: listeners bound, not yet serving.
pub struct Application {
    settings: Settings,
    state: web::Data<AppState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    outbox: Arc<dyn Outbox>,
    audit: Arc<dyn AuditSink>,
    audit_status: Arc<AuditStatus>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the ports and wires the adapters.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((settings.bind_addr, settings.port))
            .map_err(|e| anyhow::anyhow!("cannot bind {}:{}: {e}", settings.bind_addr, settings.port))?;
        let addr = listener.local_addr()?;
        // Equal ports share the main listener; 0 and 0 mean two free ports.
        let metrics_listener = if settings.metrics_port == settings.port && settings.port != 0 {
            None
        } else {
            let l = TcpListener::bind((settings.bind_addr, settings.metrics_port)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind METRICS_PORT {}:{}: {e}",
                    settings.bind_addr,
                    settings.metrics_port
                )
            })?;
            Some(l)
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map_or(Ok(addr), TcpListener::local_addr)?;

        // The embedded default: one instance, nothing installed.
        let memory = Arc::new(MemoryStore::new(settings.session_ttl));
        let store: Arc<dyn SessionStore> = memory.clone();
        let outbox: Arc<dyn Outbox> = memory;
        let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let audit: Arc<dyn AuditSink> = Arc::new(MemoryAudit::new());
        let audit_status = Arc::new(AuditStatus::default());

        let metrics = Metrics::new();
        let service = Service::new(store, bus.clone(), clock.clone());
        let http = HttpSettings {
            ws_heartbeat_interval: settings.ws_heartbeat_interval,
            ws_connection_timeout: settings.ws_connection_timeout,
            ws_max_connections: settings.ws_max_connections,
            auth: match &settings.auth {
                crate::config::Auth::Off => AuthMode::Off,
                crate::config::Auth::Jwt { secret, leeway_s } => {
                    AuthMode::Jwt(http_actix::auth::JwtAuth::new(secret, *leeway_s))
                }
            },
            metrics_on_main_port: metrics_listener.is_none(),
            ws_messages_per_minute: settings.ws_messages_per_minute,
            ..HttpSettings::default()
        };
        let status = audit_status.clone();
        let state = web::Data::new(AppState {
            hub: http_actix::hub::Hub::new(service.clone()),
            service,
            audit: Some(audit.clone()),
            audit_health: Arc::new(move || status.get()),
            metrics,
            settings: http,
            lifecycle: Arc::new(Lifecycle::new()),
            ws_connections: AtomicUsize::new(0),
            limiter: Some(http_actix::limits::Limiter {
                backend: Arc::new(adapter_memory::MemoryRateLimiter::new()),
                limits: settings.rate_limits.clone(),
            }),
        });
        Ok(Self {
            settings,
            state,
            listener,
            metrics_listener,
            outbox,
            audit,
            audit_status,
            addr,
            metrics_addr,
        })
    }

    /// The bound main address (useful with `PORT=0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The shared state (tests use it to reach the ports).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then: `/ready` turns 503 at once,
    /// requests in flight finish, after `SHUTDOWN_DRAIN_SECONDS` WebSockets
    /// close with 1001, the servers stop and the workers are awaited.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_until_stopped_or_forced(shutdown, std::future::pending())
            .await
    }

    /// As [`Self::run_until_stopped`]; `force` resolving during the drain
    /// (a second Ctrl-C) skips the rest of it.
    pub async fn run_until_stopped_or_forced(
        self,
        shutdown: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            state,
            listener,
            metrics_listener,
            outbox,
            audit,
            audit_status,
            addr,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = tokio::task::JoinSet::new();
        workers.spawn(workers::timeout_worker(
            state.service.clone(),
            state.metrics.clone(),
            stop_rx.clone(),
        ));
        workers.spawn(workers::audit_worker(
            outbox,
            audit,
            state.service.clone(),
            state.metrics.clone(),
            audit_status,
            format!("kairos-{}", uuid::Uuid::new_v4().simple()),
            stop_rx.clone(),
        ));

        let builder = http_actix::serve(listener, state.clone(), settings.http_workers)?;
        let server = builder.handle();
        let mut servers = tokio::task::JoinSet::new();
        servers.spawn(async move { builder.await });
        let metrics_server = match metrics_listener {
            Some(l) => {
                let s = http_actix::serve_metrics(l, state.clone())?;
                let h = s.handle();
                servers.spawn(s);
                Some(h)
            }
            None => None,
        };

        state.lifecycle.set_ready();
        tracing::info!(url = %format!("http://{addr}/docs/"), "SyncKairos is serving; open the URL for the API documentation");

        tokio::select! {
            () = shutdown => {}
            Some(res) = servers.join_next() => {
                // A server ended on its own: report it rather than hang.
                tracing::error!(?res, "an HTTP server stopped unexpectedly");
            }
        }

        tracing::info!(drain_s = settings.shutdown_drain.as_secs(), "shutting down: not ready; draining");
        state.lifecycle.start_draining();
        tokio::select! {
            () = tokio::time::sleep(settings.shutdown_drain) => {}
            () = force => tracing::warn!("second signal: skipping the rest of the drain"),
        }
        state.lifecycle.close_sockets();
        // Let close frames flush before connections are torn down.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server.stop(true).await;
        if let Some(h) = metrics_server {
            h.stop(true).await;
        }
        while servers.join_next().await.is_some() {}
        let _ = stop_tx.send(true);
        while workers.join_next().await.is_some() {}
        tracing::info!("stopped");
        Ok(())
    }
}
