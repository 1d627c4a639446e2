//! What every handler shares: the service over trait-object ports, the
//! transport's settings, metrics, and the instance's lifecycle flags; and
//! the steps every command takes, whichever transport it came by
//! ([`AppState::execute`]).
//!
//! This module sits above the parts it holds (auth, limits, places,
//! presence, hub, metrics): it imports them, none of them imports it. Only the handlers
//! (REST, WebSocket, middleware) see the whole state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kairos_domain::{
    Actor, AddTarget, AuditHealth, Command, Executed, RateDecision, ServiceError, SessionId,
    TransitionError,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use crate::auth::AuthMode;
use crate::error::{ApiError, from_service};
use crate::hub::Hub;
use crate::limits::{Kind, Limiter};
use crate::metrics::Metrics;
use crate::places::UserPlaces;
use crate::presence::LocalPresence;
use crate::pulse::{Beat, Pulse};

/// The service as the transport holds it: adapters chosen at start-up.
pub type Service = kairos_domain::DynSessionService;

/// Transport settings, from the server's configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Server pings every this often.
    pub ws_heartbeat_interval: Duration,
    /// Connections silent this long are dropped.
    pub ws_connection_timeout: Duration,
    /// Most WebSocket connections this instance holds.
    pub ws_max_connections: usize,
    /// Most messages one WebSocket client may send per minute (close 1008 above it).
    pub ws_messages_per_minute: u32,
    /// Most WebSockets one token subject may hold (close 1008 above it): on
    /// this instance, or across all of them with a shared place registry.
    pub ws_max_connections_per_user: usize,
    /// Browser origins allowed to open WebSockets and make CORS requests;
    /// `None`: any origin may open a WebSocket and REST answers carry no CORS headers.
    pub allowed_origins: Option<Vec<String>>,
    /// Auth mode.
    pub auth: AuthMode,
    /// Serve `/metrics` on the main port too (METRICS_PORT == PORT).
    pub metrics_on_main_port: bool,
    /// The product version reported by `/health` and `/v1/time`.
    pub version: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            ws_heartbeat_interval: Duration::from_millis(5_000),
            ws_connection_timeout: Duration::from_millis(30_000),
            ws_max_connections: 50_000,
            ws_messages_per_minute: 100,
            ws_max_connections_per_user: 5,
            allowed_origins: None,
            auth: AuthMode::Off,
            metrics_on_main_port: false,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Lifecycle of this instance: ready flag, the shutdown broadcast that
/// every WebSocket task listens to (the mini-redis pattern), and the
/// tracker of every task the transport spawns (socket tasks, refusal
/// closes, hub pumps, place releases), so that shutdown can wait for them.
#[derive(Debug)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    /// The sockets' heartbeat, which also carries the call to close.
    pulse: Arc<Pulse>,
    started: Instant,
    tasks: TaskTracker,
}

impl Lifecycle {
    /// A lifecycle that is not ready yet.
    pub fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shutdown_tx: watch::channel(false).0,
            pulse: Arc::default(),
            started: Instant::now(),
            tasks: TaskTracker::new(),
        }
    }

    /// Marks the instance ready to serve.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Starts draining: `/ready` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Tells every WebSocket to close with 1001 (going away).
    pub fn close_sockets(&self) {
        self.shutdown_tx.send_replace(true);
        self.pulse.close();
    }

    /// Tells every WebSocket to close with 1001, then waits until every
    /// task the transport spawned has ended (each socket's close frame
    /// queued, its place given back), at most `deadline`. False when the
    /// deadline passed first.
    pub async fn close_sockets_and_wait(&self, deadline: Duration) -> bool {
        self.close_sockets();
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }

    /// The tracker every task the transport spawns is registered with.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Whether the instance serves (ready and not draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A receiver that turns `true` when sockets must close.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// The sockets' heartbeat every `period`, which also says when they
    /// must close (see [`crate::pulse`]).
    pub fn heartbeat(&self, period: Duration) -> watch::Receiver<Beat> {
        self.pulse.subscribe(period)
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// Reports the audit trail's health (the audit worker updates it).
pub type AuditHealthFn = Arc<dyn Fn() -> AuditHealth + Send + Sync>;

/// Checks a webhook URL before it is stored (the SSRF guard: scheme, host
/// resolved, every address allowed), given by the server so that the
/// transport never links the sender. `Err` is the message for the `url`
/// field.
pub type UrlCheckFn = Arc<
    dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync,
>;

/// What `/v1/webhooks` manages endpoints with.
#[derive(Clone)]
pub struct WebhookAdmin {
    /// Endpoints and their delivery logs, shared by every instance.
    pub store: Arc<dyn kairos_domain::WebhookStore>,
    /// The URL check of a new endpoint.
    pub check_url: UrlCheckFn,
}

impl std::fmt::Debug for WebhookAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookAdmin").finish_non_exhaustive()
    }
}

/// Shared by every handler (wrapped in `web::Data`).
pub struct AppState {
    /// The application service.
    pub service: Service,
    /// The audit trail's health.
    pub audit_health: AuditHealthFn,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: HttpSettings,
    /// Ready flag and shutdown broadcast.
    pub lifecycle: Arc<Lifecycle>,
    /// Open WebSocket connections on this instance.
    pub ws_connections: AtomicUsize,
    /// The per-user WebSocket cap: this instance's places, shared with
    /// the other instances when Redis is configured.
    pub places: UserPlaces,
    /// Rate limits; `None` disables them (as does `RATE_LIMITS=off`).
    pub limiter: Option<Limiter>,
    /// Shares one bus subscription per watched session among this instance's WebSockets.
    pub hub: Hub,
    /// Webhook endpoints; `None`: `/v1/webhooks` answers 404.
    pub webhooks: Option<WebhookAdmin>,
    /// This instance's sockets in the presence registry (when the service has one).
    pub presence: LocalPresence,
}

impl AppState {
    /// The state of one instance: the service, the bus its hub subscribes
    /// to, and the transport's settings. Everything else starts at its
    /// embedded default (no rate limits, the per-user cap counted on this
    /// instance only, audit disabled, fresh metrics and lifecycle); the
    /// `with_*` methods set it.
    pub fn new(
        service: Service,
        bus: Arc<dyn kairos_domain::EventBus>,
        settings: HttpSettings,
    ) -> Self {
        let lifecycle = Arc::new(Lifecycle::new());
        let metrics = Metrics::new();
        let presence = LocalPresence::new(lifecycle.tasks().clone());
        presence.report_to(
            metrics.presence_connections.clone(),
            metrics.presence_users.clone(),
        );
        Self {
            hub: Hub::new(service.clone(), bus, lifecycle.tasks().clone()),
            presence,
            service,
            audit_health: Arc::new(|| AuditHealth::Disabled),
            metrics,
            settings,
            lifecycle,
            ws_connections: AtomicUsize::new(0),
            places: UserPlaces::local(),
            limiter: None,
            webhooks: None,
        }
    }

    /// Reports the audit trail's health through `audit_health`.
    #[must_use]
    pub fn with_audit_health(mut self, audit_health: AuditHealthFn) -> Self {
        self.audit_health = audit_health;
        self
    }

    /// Records into `metrics` (e.g. a registry the workers share).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.presence.report_to(
            metrics.presence_connections.clone(),
            metrics.presence_users.clone(),
        );
        self.metrics = metrics;
        self
    }

    /// Enforces rate limits with `limiter`.
    #[must_use]
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Counts the per-user WebSocket cap across instances in `registry`
    /// (its lease renewals are tracked by this state's lifecycle).
    #[must_use]
    pub fn with_place_registry(mut self, registry: Arc<dyn kairos_domain::PlaceRegistry>) -> Self {
        self.places = UserPlaces::shared(registry, self.lifecycle.tasks().clone());
        self
    }

    /// Manages webhook endpoints in `admin.store`, checking new URLs with
    /// `admin.check_url`.
    #[must_use]
    pub fn with_webhooks(mut self, admin: WebhookAdmin) -> Self {
        self.webhooks = Some(admin);
        self
    }

    /// Counts one request of `kind` for `key` against its rate limit
    /// (`Ok(None)` when limits are off).
    pub async fn rate(&self, kind: Kind, key: &str) -> Result<Option<RateDecision>, ApiError> {
        match &self.limiter {
            None => Ok(None),
            Some(limiter) => limiter.check(kind, key, self.service.now_ms()).await,
        }
    }

    /// The peers whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        self.limiter
            .as_ref()
            .map_or(&[][..], |l| l.limits.trusted_proxies.as_slice())
    }

    /// Runs a client's command, from REST or a WebSocket alike: a switch
    /// is rate-limited per session (the limit travels with the command and
    /// the store counts it in the commit's atomic step, so a switch on a
    /// session this instance knows costs one store round trip) and its
    /// latency recorded, a store outage is counted, and a refusal becomes
    /// the one [`ApiError`] of [`from_service`] (`request_id` goes into a
    /// 500's body and the log). Returns the rate decision for the
    /// `RateLimit-*` headers.
    pub async fn execute(
        &self,
        actor: &Actor,
        id: SessionId,
        command: Command,
        expected_version: Option<u64>,
        request_id: &str,
    ) -> Result<(Executed, Option<RateDecision>), ApiError> {
        let is_switch = matches!(command, Command::Switch { .. });
        // An unknown id in `add_time` names its own field, not a switch's.
        let add_field = match &command {
            Command::AddTime {
                target: AddTarget::Participant(_),
                ..
            } => Some("participant_id"),
            Command::AddTime {
                target: AddTarget::Group(_),
                ..
            } => Some("group_id"),
            // And a leave names its participant in the path.
            Command::Leave { .. } => Some("participant_id"),
            _ => None,
        };
        let limit = if is_switch {
            self.limiter.as_ref().and_then(Limiter::switch_limit)
        } else {
            None
        };
        let started = Instant::now();
        let result = self
            .service
            .execute_limited(actor, id, command, expected_version, limit)
            .await;
        if is_switch {
            self.metrics
                .switch_latency
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(executed) => {
                let rate = executed.rate;
                Ok((executed, rate))
            }
            Err(e) => {
                if matches!(e, ServiceError::Unavailable(_)) {
                    self.metrics.store_errors.inc();
                }
                if let (
                    Some(field),
                    ServiceError::Transition(t @ TransitionError::UnknownParticipant(_)),
                ) = (add_field, &e)
                {
                    return Err(ApiError::field(field, t.to_string()));
                }
                Err(from_service(e, request_id))
            }
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .field("ws_connections", &self.ws_connections)
            .finish_non_exhaustive()
    }
}
