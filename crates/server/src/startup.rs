//! Wiring: builds the adapters the configuration asks for, the service, the
//! HTTP servers and the workers; runs them until a shutdown future resolves,
//! then shuts down as contract section 7 says.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::web;
use adapter_memory::{
    MemoryAudit, MemoryBus, MemoryPresence, MemoryRateLimiter, MemoryStore, MemoryWebhookStore,
    SystemClock,
};
use bus_redis::RedisBus;
use http_actix::{AppState, AuthMode, HttpSettings, Metrics};
use kairos_domain::{
    AuditHealth, AuditSink, Clock, DynSessionService as Service, EventBus, Outbox, RateLimiter,
    SessionStore, WebhookStore,
};
use store_redis::{RedisClock, RedisPlaceRegistry, RedisPresence, RedisRateLimiter, RedisStore};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{RedisSettings, Settings, TestHooks};
use crate::timers::{self, LocalTimers};
use crate::webhooks;
use crate::workers::{self, AuditStatus, WorkerMetrics};

/// The adapters behind the ports, as the configuration chose them.
struct Adapters {
    store: Arc<dyn SessionStore>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    limiter: Arc<dyn RateLimiter>,
    /// The per-user WebSocket cap across instances; `None`: counted per instance.
    places: Option<Arc<dyn kairos_domain::PlaceRegistry>>,
    /// Who is connected to which session, over every instance.
    presence: Arc<dyn kairos_domain::PresenceRegistry>,
    /// The outbox and the audit trail it drains into, when audit is on.
    audit: Option<(Arc<dyn Outbox>, Arc<dyn AuditSink>)>,
    /// Webhook endpoints and queue, and the hooks outbox (fed when `WEBHOOKS=on`).
    webhooks: (Arc<dyn WebhookStore>, Arc<dyn Outbox>),
}

/// A built application: listeners bound, adapters connected, not yet serving.
pub struct Application {
    settings: Settings,
    state: web::Data<AppState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    audit: Option<(Arc<dyn Outbox>, Arc<dyn AuditSink>)>,
    audit_status: Arc<AuditStatus>,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    /// Stops the adapters' own tasks (Redis clock refresh, bus connections),
    /// flipped last, after the workers that use them have finished.
    adapters_stop: watch::Sender<bool>,
    adapter_tasks: JoinSet<()>,
    bus_stats: Option<bus_redis::RedisBus>,
    /// The workers' metrics, in the registry `/metrics` renders.
    worker_metrics: WorkerMetrics,
    /// The deadlines this instance committed, fired by its timer task.
    timers: Arc<LocalTimers>,
    /// Presence work this instance scheduled, for the presence worker.
    presence_schedule: Arc<workers::DueSchedule>,
    /// Nudged after each commit, for the audit worker.
    audit_nudge: Arc<Notify>,
    /// The webhook workers, when `WEBHOOKS=on`.
    webhooks: Option<webhooks::Workers>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// The embedded default: one instance, nothing installed. The audit trail
/// is PostgreSQL when configured, else kept in memory.
fn memory_adapters(settings: &Settings, pg: Option<Pg>) -> Adapters {
    let (pg, log) = pg.unzip();
    let memory = Arc::new(
        MemoryStore::new(settings.session_ttl).with_webhook_feed(settings.webhooks.enabled),
    );
    let outbox: Arc<dyn Outbox> = memory.clone();
    let hooks = memory.webhook_outbox();
    let audit: Arc<dyn AuditSink> = pg.unwrap_or_else(|| Arc::new(MemoryAudit::new()));
    Adapters {
        store: memory,
        bus: Arc::new(MemoryBus::new()),
        clock: Arc::new(SystemClock::new()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        places: None,
        presence: Arc::new(MemoryPresence::new()),
        audit: Some((outbox, audit)),
        webhooks: (
            webhook_store(MemoryWebhookStore::with_feed(hooks.clone()), log),
            Arc::new(hooks),
        ),
    }
}

/// Redis as the primary store, the bus, the clock and the rate limiter:
/// instances become interchangeable.
async fn redis_adapters(
    settings: &Settings,
    redis: &RedisSettings,
    hooks: TestHooks,
    pg: Option<Pg>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Adapters, bus_redis::RedisBus)> {
    let (pg, log) = pg.unzip();
    // Without an audit store nothing drains the outbox: do not fill it.
    let config = redis.store_config(settings.session_ttl, pg.is_some());
    let target = redis.target.redacted();
    let store = RedisStore::connect(&config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {target}: {e}"))?
        .with_webhook_feed(settings.webhooks.enabled)
        .with_outbox_full_sweep_every(workers::outbox_sweep(settings.audit_reclaim_ms));
    let (clock, refresh) = RedisClock::connect_with_skew(
        store.connection(),
        CLOCK_REFRESH,
        stop.clone(),
        hooks.host_clock_skew_ms,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read Redis TIME at {target}: {e}"))?;
    tasks.spawn(async move {
        let _ = refresh.await;
    });
    let (bus, bus_tasks) = RedisBus::connect(redis.bus_config(), stop.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the Redis event bus at {target}: {e}"))?;
    tasks.spawn(bus_tasks.join());
    let limiter = RedisRateLimiter::new(store.connection(), config.key_prefix.clone());
    let places = RedisPlaceRegistry::new(store.connection(), config.key_prefix.clone());
    let webhooks: (Arc<dyn WebhookStore>, Arc<dyn Outbox>) = (
        webhook_store(store.webhook_store(), log),
        Arc::new(store.webhook_outbox()),
    );
    let presence = RedisPresence::new(store.connection(), &config.key_prefix);
    let store = Arc::new(store);
    tracing::info!(redis = %target, mode = ?redis.target.mode, "using Redis for state, bus, clock, rate limits and the per-user WebSocket cap");
    Ok((
        Adapters {
            store: store.clone(),
            bus: Arc::new(bus.clone()),
            clock: clock as Arc<dyn Clock>,
            limiter: Arc::new(limiter),
            places: Some(Arc::new(places)),
            presence: Arc::new(presence),
            audit: pg.map(|sink| (store as Arc<dyn Outbox>, sink)),
            webhooks,
        },
        bus,
    ))
}

/// The PostgreSQL audit trail and, on the same pool, the webhook delivery log.
type Pg = (Arc<dyn AuditSink>, audit_diesel::PgDeliveryLog);

/// The webhook store, its delivery log in PostgreSQL when there is one
/// (else the store's own bounded log).
fn webhook_store<S: WebhookStore>(
    store: S,
    log: Option<audit_diesel::PgDeliveryLog>,
) -> Arc<dyn WebhookStore> {
    match log {
        Some(log) => Arc::new(kairos_domain::WithDeliveryLog::new(store, log)),
        None => Arc::new(store),
    }
}

/// The PostgreSQL audit trail. Migrations run now; if PostgreSQL is down
/// the server starts anyway (the hot path does not need it) and a task
/// keeps trying, while events wait in the outbox.
async fn audit_store(
    url: &audit_diesel::DatabaseUrl,
    pool_size: usize,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Pg> {
    let pg = audit_diesel::PgAudit::connect(url.clone(), pool_size)
        .map_err(|e| anyhow::anyhow!("cannot set up the audit pool for {url}: {e}"))?;
    let url = url.clone();
    let maintenance = pg.clone();
    let mut stop = stop.clone();
    tasks.spawn(async move {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            match audit_diesel::run_migrations(url.clone()).await {
                Ok(applied) => {
                    if !applied.is_empty() {
                        tracing::info!(?applied, "audit migrations applied");
                    }
                    break;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "audit migrations failed; events wait in the outbox"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(30));
        }
        maintenance
            .maintain_partitions(
                audit_diesel::DEFAULT_MONTHS_AHEAD,
                audit_diesel::PARTITION_MAINTENANCE_INTERVAL,
                stop,
            )
            .await;
    });
    let log = audit_diesel::PgDeliveryLog::new(pg.clone());
    Ok((Arc::new(pg), log))
}

/// How long shutdown waits for the WebSockets' close frames (each close
/// itself gives up after a second on a peer that stopped reading; a socket
/// in the middle of a command first finishes it).
const SOCKETS_CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often instances re-measure their offset to Redis `TIME`.
const CLOCK_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl Application {
    /// Binds the ports and connects the adapters the settings ask for.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_hooks(settings, TestHooks::default()).await
    }

    /// As [`Self::build`], with test hooks (the binary reads them from
    /// `KAIROS_TEST_*` variables; see [`TestHooks`]).
    pub async fn build_with_hooks(settings: Settings, hooks: TestHooks) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((settings.bind_addr, settings.port)).map_err(|e| {
            anyhow::anyhow!("cannot bind {}:{}: {e}", settings.bind_addr, settings.port)
        })?;
        let addr = listener.local_addr()?;
        // Equal ports share the main listener; 0 and 0 mean two free ports.
        let metrics_listener = if settings.metrics_port == settings.port && settings.port != 0 {
            None
        } else {
            let l =
                TcpListener::bind((settings.bind_addr, settings.metrics_port)).map_err(|e| {
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

        let (adapters_stop, stop_rx) = watch::channel(false);
        let mut adapter_tasks = JoinSet::new();
        let pg = match &settings.database_url {
            None => None,
            Some(url) => Some(
                audit_store(
                    url,
                    settings.database_pool_size,
                    &stop_rx,
                    &mut adapter_tasks,
                )
                .await?,
            ),
        };
        let (adapters, bus_stats) = match &settings.redis {
            None => (memory_adapters(&settings, pg), None),
            Some(redis) => {
                let (a, bus) =
                    redis_adapters(&settings, redis, hooks, pg, &stop_rx, &mut adapter_tasks)
                        .await?;
                (a, Some(bus))
            }
        };
        let audit_status = Arc::new(AuditStatus::default());
        if adapters.audit.is_none() {
            audit_status.set(AuditHealth::Disabled);
        }

        let metrics = Metrics::new();
        let worker_metrics =
            WorkerMetrics::register(metrics.registry(), metrics.store_errors.clone())
                .map_err(|e| anyhow::anyhow!("cannot register the workers' metrics: {e}"))?;
        if bus_stats.is_none() {
            // The in-process bus cannot disconnect.
            worker_metrics.bus_subscriber_up.set(1);
        }
        let bus = adapters.bus;
        // Every deadline this instance commits arms its local timer, and
        // every commit nudges the audit and webhook fan-out workers (their
        // outboxes have news): neither polls.
        let timers = Arc::new(LocalTimers::new(worker_metrics.timers_armed.clone()));
        // The presence worker sleeps until the leaves and absence checks
        // this instance schedules fall due.
        let presence_schedule = Arc::new(workers::DueSchedule::default());
        let audit_nudge = Arc::new(Notify::new());
        let hooks_nudge = Arc::new(Notify::new());
        let nudges = (audit_nudge.clone(), hooks_nudge.clone());
        let mut service = Service::new(adapters.store, bus.clone(), adapters.clock)
            .with_deadline_observer(timers.observer(move || {
                nudges.0.notify_one();
                nudges.1.notify_one();
            }))
            .with_presence(adapters.presence, settings.presence_leave_delay_ms)
            .with_presence_due_observer(presence_schedule.observer());
        if let Some((_, sink)) = &adapters.audit {
            service = service.with_audit(sink.clone());
        }
        if settings.webhooks.enabled {
            // Presence events are in no outbox: the service hands them to
            // the webhook feed itself.
            service = service.with_presence_observer(Arc::new(webhooks::PresenceFeed::new(
                adapters.webhooks.0.clone(),
                hooks_nudge.clone(),
            )));
        }
        let http = HttpSettings {
            ws_heartbeat_interval: settings.ws_heartbeat_interval,
            ws_connection_timeout: settings.ws_connection_timeout,
            ws_max_connections: settings.ws_max_connections,
            auth: match &settings.auth {
                crate::config::Auth::Off => AuthMode::Off,
                crate::config::Auth::Jwt { secret, leeway_s } => {
                    AuthMode::Jwt(Box::new(http_actix::auth::JwtAuth::new(secret, *leeway_s)))
                }
            },
            metrics_on_main_port: metrics_listener.is_none(),
            ws_messages_per_minute: settings.ws_messages_per_minute,
            ws_max_connections_per_user: settings.ws_max_connections_per_user,
            allowed_origins: settings.allowed_origins.clone(),
            ..HttpSettings::default()
        };
        let status = audit_status.clone();
        // Every task the transport spawns is tracked by the state's
        // lifecycle; shutdown waits for them.
        let mut state = AppState::new(service, bus, http)
            .with_audit_health(Arc::new(move || status.get()))
            .with_metrics(metrics)
            .with_limiter(http_actix::limits::Limiter {
                backend: adapters.limiter,
                limits: settings.rate_limits.clone(),
            });
        if let Some(registry) = adapters.places {
            state = state.with_place_registry(registry);
        }
        let policy = settings.webhooks.policy();
        let (webhook_store, hooks) = adapters.webhooks;
        state = state.with_webhooks(http_actix::WebhookAdmin {
            store: webhook_store.clone(),
            check_url: webhooks::url_check(policy),
        });
        let webhooks = if settings.webhooks.enabled {
            Some(webhooks::Workers {
                store: webhook_store,
                outbox: hooks,
                sender: webhook_http::Sender::new(policy)?,
                service: state.service.clone(),
                metrics: worker_metrics.clone(),
                settings: settings.webhooks.clone(),
                reclaim_after_ms: settings.audit_reclaim_ms,
                nudge: hooks_nudge,
            })
        } else {
            None
        };
        let state = web::Data::new(state);
        Ok(Self {
            settings,
            state,
            listener,
            metrics_listener,
            audit: adapters.audit,
            audit_status,
            addr,
            metrics_addr,
            adapters_stop,
            adapter_tasks,
            bus_stats,
            worker_metrics,
            timers,
            presence_schedule,
            audit_nudge,
            webhooks,
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
            audit,
            audit_status,
            addr,
            adapters_stop,
            mut adapter_tasks,
            bus_stats,
            worker_metrics,
            timers,
            presence_schedule,
            audit_nudge,
            webhooks,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = tokio::task::JoinSet::new();
        workers.spawn(timers::timer_worker(
            state.service.clone(),
            timers,
            worker_metrics.clone(),
            stop_rx.clone(),
        ));
        workers.spawn(workers::timeout_worker(
            state.service.clone(),
            worker_metrics.clone(),
            workers::Sweep {
                every: settings.timeout_sweep,
                grace: settings.timeout_sweep_grace,
            },
            stop_rx.clone(),
        ));
        // The outbox drains and webhook sends yield the cores to the hot
        // path; the audit drain's large batches do not hold the sends back.
        let background = crate::background::Background::start("kairos-webhooks")?;
        let mut audit_background = None;
        if let Some((outbox, sink)) = audit {
            let thread =
                audit_background.insert(crate::background::Background::start("kairos-audit")?);
            workers.spawn_on(
                workers::audit_worker(
                    workers::AuditWorker {
                        outbox,
                        audit: sink,
                        service: state.service.clone(),
                        metrics: worker_metrics.clone(),
                        status: audit_status,
                        consumer: format!("kairos-{}", uuid::Uuid::new_v4().simple()),
                        reclaim_after_ms: settings.audit_reclaim_ms,
                        nudge: audit_nudge,
                    },
                    stop_rx.clone(),
                ),
                thread.handle(),
            );
        }
        if let Some(w) = webhooks {
            webhooks::spawn_workers(&mut workers, w, &stop_rx, background.handle());
        }
        let places = state.clone();
        let stop = stop_rx.clone();
        workers.spawn(async move {
            let now_ms = || places.service.now_ms();
            http_actix::places::renew_places(&places.places, now_ms, stop).await;
        });
        let presence = state.clone();
        let stop = stop_rx.clone();
        workers.spawn(async move {
            http_actix::presence::renew_presence(&presence.presence, &presence.service, stop).await;
        });
        workers.spawn(workers::presence_worker(
            state.service.clone(),
            worker_metrics.clone(),
            presence_schedule,
            stop_rx.clone(),
        ));
        if let Some(bus) = bus_stats {
            workers.spawn(workers::bus_stats_worker(
                bus,
                worker_metrics.clone(),
                stop_rx.clone(),
            ));
        }

        let builder = http_actix::serve(
            listener,
            state.clone(),
            settings.http_workers,
            store_redis::conn::keep_connections_on_this_thread,
        )?;
        let server = builder.handle();
        let mut servers = tokio::task::JoinSet::new();
        servers.spawn(builder);
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

        tracing::info!(
            drain_s = settings.shutdown_drain.as_secs(),
            "shutting down: not ready; draining"
        );
        state.lifecycle.start_draining();
        tokio::select! {
            () = tokio::time::sleep(settings.shutdown_drain) => {}
            () = force => tracing::warn!("second signal: skipping the rest of the drain"),
        }
        // Every socket closes with 1001; wait until each close frame is
        // queued (and every other task of the transport has ended) before
        // the servers, which flush them, stop.
        if !state
            .lifecycle
            .close_sockets_and_wait(SOCKETS_CLOSE_DEADLINE)
            .await
        {
            tracing::warn!(
                tasks = state.lifecycle.tasks().len(),
                deadline_s = SOCKETS_CLOSE_DEADLINE.as_secs(),
                "some WebSocket tasks had not ended by the deadline; stopping anyway"
            );
        }
        server.stop(true).await;
        if let Some(h) = metrics_server {
            h.stop(true).await;
        }
        while servers.join_next().await.is_some() {}
        let _ = stop_tx.send(true);
        while workers.join_next().await.is_some() {}
        background.stop().await;
        if let Some(audit_background) = audit_background {
            audit_background.stop().await;
        }
        let _ = adapters_stop.send(true);
        while adapter_tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
        Ok(())
    }
}
