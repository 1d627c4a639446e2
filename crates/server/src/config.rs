//! Configuration (contract section 7): every setting declared once in
//! [`Vars`] (its variable, flag, default, parser and help text, as clap
//! attributes), read from the environment and the command line at start,
//! then assembled into the typed [`Settings`]; a bad value stops the start
//! with an error that names the variable.
//!
//! The environment reaches clap through [`parse`] rather than through
//! clap's own `env` lookup, for two reasons: a variable set to a blank value
//! counts as unset (as it always has: `FOO=` in a compose file), and tests
//! pass a map instead of the process environment. The `env` attributes still
//! name each variable, for `--help` and for the errors.
//!
//! Test hooks are not settings: [`TestHooks`] holds them, outside
//! [`Settings`] and `--help`.

use std::error::Error as _;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use http_actix::auth::Secret;
use http_actix::limits::RateLimits;
use kairos_domain::Limit;
use kairos_domain::webhook::RetrySchedule;
use redis_conn::{RedisMode, RedisTarget};
use store_redis::RedisConfig;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Where Redis is, when instances share it, and what both Redis adapters
/// make of it: the one place the Redis settings become the store's and the
/// bus's configurations ([`Self::store_config`], [`Self::bus_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// URL, mode and TLS roots (`REDIS_URL`, `REDIS_MODE`,
    /// `REDIS_SENTINEL_MASTER`, `REDIS_SENTINELS`, `REDIS_CLUSTER_NODES`,
    /// `REDIS_TLS_CA_FILE`), the same for the store and the bus.
    pub target: RedisTarget,
    /// Every store call gives up after this (`REDIS_COMMAND_TIMEOUT_MS`, default 250).
    pub command_timeout: Duration,
    /// Prefix of every key and channel (`REDIS_KEY_PREFIX`, default `kairos:`),
    /// so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
}

impl RedisSettings {
    /// The store's configuration. `outbox_enabled`: whether an audit trail
    /// drains the outbox (without one, commits must not fill it).
    pub fn store_config(&self, session_ttl: Duration, outbox_enabled: bool) -> RedisConfig {
        RedisConfig {
            command_timeout: self.command_timeout,
            session_ttl,
            outbox_enabled,
            key_prefix: self.key_prefix.clone(),
            ..RedisConfig::with_target(self.target.clone())
        }
    }

    /// The bus's configuration: the same target, channels under the key
    /// prefix. The bus keeps its own time budget per call
    /// ([`bus_redis::DEFAULT_COMMAND_TIMEOUT`]): `REDIS_COMMAND_TIMEOUT_MS`
    /// bounds the calls a request waits for.
    pub fn bus_config(&self) -> bus_redis::RedisBusConfig {
        bus_redis::RedisBusConfig {
            channel_prefix: self.key_prefix.trim_end_matches(':').to_owned(),
            ..bus_redis::RedisBusConfig::new(self.target.clone())
        }
    }
}

/// Webhooks (contract section 9): whether they run, which URLs the SSRF
/// guard accepts, the retry schedule and the sends in flight per instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `WEBHOOKS` (on|off, default on): off, nothing feeds or sends
    /// webhooks and `/v1/webhooks` still manages endpoints.
    pub enabled: bool,
    /// `WEBHOOK_ALLOW_HTTP` (default false): `http://` URLs accepted.
    pub allow_http: bool,
    /// `WEBHOOK_ALLOW_PRIVATE` (default false): hosts on loopback, private,
    /// link-local... addresses accepted (local development and tests).
    pub allow_private: bool,
    /// `WEBHOOK_RETRY_SCHEDULE_MS` (default the contract's 5 s, 5 min, 30 min,
    /// 2 h, 5 h, 10 h, 24 h).
    pub retry_schedule: RetrySchedule,
    /// `WEBHOOK_CONCURRENCY` (default 64): sends in flight per instance.
    pub concurrency: usize,
}

impl WebhookSettings {
    /// What the SSRF guard allows.
    pub fn policy(&self) -> webhook_http::UrlPolicy {
        webhook_http::UrlPolicy {
            allow_http: self.allow_http,
            allow_private: self.allow_private,
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_http: false,
            allow_private: false,
            retry_schedule: RetrySchedule::default(),
            concurrency: 64,
        }
    }
}

/// How callers are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `AUTH_MODE=off`: every caller is an admin.
    Off,
    /// HS256 tokens signed with `JWT_SECRET`.
    Jwt {
        /// The signing secret (at least 32 bytes; never printed).
        secret: Secret,
        /// Clock leeway on `exp`, seconds (`JWT_LEEWAY_SECONDS`, default 5).
        leeway_s: u64,
    },
}

/// A configuration error, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(variable: &str, message: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            message: message.into(),
        }
    }
}

/// Everything the server reads from its environment, typed and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// Address to bind (`BIND_ADDR`, default 127.0.0.1).
    pub bind_addr: IpAddr,
    /// Main port (`PORT`, default 8080; 0 picks a free one).
    pub port: u16,
    /// Metrics port (`METRICS_PORT`, default 9090; equal to `PORT` serves both on one).
    pub metrics_port: u16,
    /// Session TTL after the last change (`SESSION_TTL_SECONDS`, default 3600).
    pub session_ttl: Duration,
    /// Server ping interval (`WS_HEARTBEAT_INTERVAL_MS`, default 5000).
    pub ws_heartbeat_interval: Duration,
    /// Idle WebSocket timeout (`WS_CONNECTION_TIMEOUT_MS`, default 30000).
    pub ws_connection_timeout: Duration,
    /// WebSocket cap per instance (`WS_MAX_CONNECTIONS`, default 50000).
    pub ws_max_connections: usize,
    /// Drain before closing sockets on shutdown (`SHUTDOWN_DRAIN_SECONDS`, default 15).
    pub shutdown_drain: Duration,
    /// Log format (`LOG_FORMAT`, default pretty).
    pub log_format: LogFormat,
    /// HTTP worker threads (`HTTP_WORKERS`, default: one per core).
    pub http_workers: Option<usize>,
    /// Authentication (`AUTH_MODE`, `JWT_SECRET`, `JWT_LEEWAY_SECONDS`).
    pub auth: Auth,
    /// Rate limits (`RATE_LIMITS`, `RATE_LIMIT_*`, `TRUSTED_PROXIES`).
    pub rate_limits: RateLimits,
    /// Messages one WebSocket client may send per minute (`WS_MESSAGES_PER_MINUTE`, default 100).
    pub ws_messages_per_minute: u32,
    /// WebSockets one token subject may hold, across all instances sharing
    /// Redis (`WS_MAX_CONNECTIONS_PER_USER`, default 5).
    pub ws_max_connections_per_user: usize,
    /// Redis; `None` runs the embedded in-process store (one instance only).
    pub redis: Option<RedisSettings>,
    /// The audit trail's database (`DATABASE_URL`); unset: audit off with
    /// Redis, an in-memory trail with the embedded default.
    pub database_url: Option<audit_diesel::DatabaseUrl>,
    /// Connections in the audit pool (`DATABASE_POOL_SIZE`, default 4).
    pub database_pool_size: usize,
    /// Audit events another instance read but did not acknowledge within this
    /// are written by this one (`AUDIT_RECLAIM_MS`, default 30000).
    pub audit_reclaim_ms: i64,
    /// How often the timeout safety net sweeps the deadline index for
    /// deadlines no local timer applied (`TIMEOUT_SWEEP_MS`, default 500).
    pub timeout_sweep: Duration,
    /// How far past its deadline a session must be before the sweep claims
    /// it, leaving it to the local timer of the instance that committed it
    /// (`TIMEOUT_SWEEP_GRACE_MS`, default 500).
    pub timeout_sweep_grace: Duration,
    /// How long a user whose last WebSocket to a session closed may come
    /// back before `presence_left` is sent (`PRESENCE_LEAVE_DELAY_MS`,
    /// default 5000, at most 600000).
    pub presence_leave_delay_ms: i64,
    /// Browser origins allowed (`ALLOWED_ORIGINS`, comma-separated, e.g.
    /// `https://app.example.com`); unset: WebSockets from any origin, no CORS.
    pub allowed_origins: Option<Vec<String>>,
    /// Webhooks (`WEBHOOKS`, `WEBHOOK_*`).
    pub webhooks: WebhookSettings,
}

impl fmt::Debug for Settings {
    // Hand-written so that secrets added later can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind_addr", &self.bind_addr)
            .field("port", &self.port)
            .field("metrics_port", &self.metrics_port)
            .field("session_ttl", &self.session_ttl)
            .field("ws_heartbeat_interval", &self.ws_heartbeat_interval)
            .field("ws_connection_timeout", &self.ws_connection_timeout)
            .field("ws_max_connections", &self.ws_max_connections)
            .field("shutdown_drain", &self.shutdown_drain)
            .field("log_format", &self.log_format)
            .field("http_workers", &self.http_workers)
            .field("auth", &self.auth)
            .field("rate_limits", &self.rate_limits)
            .field("ws_messages_per_minute", &self.ws_messages_per_minute)
            .field(
                "ws_max_connections_per_user",
                &self.ws_max_connections_per_user,
            )
            .field("redis", &self.redis)
            .field("database_url", &self.database_url)
            .field("database_pool_size", &self.database_pool_size)
            .field("audit_reclaim_ms", &self.audit_reclaim_ms)
            .field("timeout_sweep", &self.timeout_sweep)
            .field("timeout_sweep_grace", &self.timeout_sweep_grace)
            .field("allowed_origins", &self.allowed_origins)
            .field("webhooks", &self.webhooks)
            .field("presence_leave_delay_ms", &self.presence_leave_delay_ms)
            .finish()
    }
}

impl Default for Settings {
    /// What an empty environment gives: the defaults declared in [`Vars`].
    fn default() -> Self {
        // Cannot fail: every default is a valid value of its setting, which
        // `nothing_set_gives_the_embedded_default` checks.
        Self::from_lookup(|_| None).expect("the declared defaults are valid")
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup)
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        /// [`Vars`] alone, as a command.
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            vars: Vars,
        }
        match parse::<Only>([OsString::from("kairos-server")], lookup) {
            Ok(only) => only.vars.settings(),
            Err(ParseError::Config(e)) => Err(e),
            // Without arguments, only a setting can be wrong.
            Err(ParseError::Usage(e)) => Err(ConfigError::new("?", e.to_string())),
        }
    }
}

/// The process environment; a value that is not UTF-8 counts as unset.
fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

const SERVING: &str = "Serving";
const STATE: &str = "State (Redis)";
const AUDIT: &str = "Audit";
const SECURITY: &str = "Security";
const WEBSOCKETS: &str = "WebSockets";
const TIMEOUTS: &str = "Timeouts";
const WEBHOOKS: &str = "Webhooks";

/// Every setting, declared once: the variable (`env`), the flag, the
/// default, the parser and the help text (the doc comment). Each is read
/// from the flag, else from the variable, else the default. [`Vars::settings`]
/// assembles them into [`Settings`], checking what involves several.
#[derive(Debug, Clone, clap::Args)]
pub struct Vars {
    /// address to bind; 0.0.0.0 in a container
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1", value_parser = parsed::<IpAddr>, help_heading = SERVING)]
    bind_addr: IpAddr,
    /// REST, WebSocket, /docs and the demo page (0 picks a free port)
    #[arg(long, env = "PORT", default_value_t = 8080, value_parser = parsed::<u16>, help_heading = SERVING)]
    port: u16,
    /// Prometheus /metrics; equal to PORT serves it on the main port (0 and 0 pick two free ports)
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090, value_parser = parsed::<u16>, help_heading = SERVING)]
    metrics_port: u16,
    /// HTTP worker threads [default: one per core]
    #[arg(long, env = "HTTP_WORKERS", value_parser = positive::<usize>, help_heading = SERVING)]
    http_workers: Option<usize>,
    /// pretty for terminals, json for log shippers (one object per line); RUST_LOG filters (default info)
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, help_heading = SERVING)]
    log_format: LogFormat,
    /// on SIGTERM: not ready at once, sockets closed with 1001 after this
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 15, value_parser = parsed::<u64>, help_heading = SERVING)]
    shutdown_drain_seconds: u64,

    /// redis://[user:password@]host:port/[db], or rediss:// for TLS (#insecure at the end: no certificate check); unset: in-process state, one instance only
    #[arg(long, env = "REDIS_URL", hide_env_values = true, help_heading = STATE)]
    redis_url: Option<String>,
    /// how Redis is run [default: standalone]
    #[arg(long, env = "REDIS_MODE", value_enum, ignore_case = true, help_heading = STATE)]
    redis_mode: Option<ModeName>,
    /// sentinel: the monitored master's name (required)
    #[arg(long, env = "REDIS_SENTINEL_MASTER", help_heading = STATE)]
    redis_sentinel_master: Option<String>,
    /// sentinel: sentinel URLs, comma-separated (required); REDIS_URL then only supplies credentials and database
    #[arg(long, env = "REDIS_SENTINELS", hide_env_values = true, help_heading = STATE)]
    redis_sentinels: Option<String>,
    /// cluster: node URLs, comma-separated [default: REDIS_URL]
    #[arg(long, env = "REDIS_CLUSTER_NODES", hide_env_values = true, help_heading = STATE)]
    redis_cluster_nodes: Option<String>,
    /// PEM file of the CA(s) that sign the rediss:// servers' certificates, read at start [default: the public web roots]
    #[arg(long, env = "REDIS_TLS_CA_FILE", value_parser = ca_file, help_heading = STATE)]
    redis_tls_ca_file: Option<Pem>,
    /// every store call gives up after this; the client gets 503 UNAVAILABLE
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value_t = millis(store_redis::DEFAULT_COMMAND_TIMEOUT), value_parser = positive::<u64>, help_heading = STATE)]
    redis_command_timeout_ms: u64,
    /// prefix of every key and channel, so deployments can share a Redis
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = store_redis::DEFAULT_KEY_PREFIX, value_parser = key_prefix, help_heading = STATE)]
    redis_key_prefix: String,
    /// a session is removed this long after its last change
    #[arg(long, env = "SESSION_TTL_SECONDS", default_value_t = store_redis::DEFAULT_SESSION_TTL.as_secs(), value_parser = positive::<u64>, help_heading = STATE)]
    session_ttl_seconds: u64,

    /// postgres://... for the audit trail (migrations run at start); unset: audit off with Redis, in memory without
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = database_url, help_heading = AUDIT)]
    database_url: Option<audit_diesel::DatabaseUrl>,
    /// audit pool connections per instance
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 4, value_parser = positive::<usize>, help_heading = AUDIT)]
    database_pool_size: usize,
    /// events another instance read but never acknowledged are written by this one after this long
    #[arg(long, env = "AUDIT_RECLAIM_MS", default_value_t = 30_000, value_parser = positive::<u64>, help_heading = AUDIT)]
    audit_reclaim_ms: u64,

    /// the safety net for a dead instance's timers: sweep the deadline index this often (the instance that commits a deadline fires it with a local timer)
    #[arg(long, env = "TIMEOUT_SWEEP_MS", default_value_t = 500, value_parser = positive::<u64>, help_heading = TIMEOUTS)]
    timeout_sweep_ms: u64,
    /// the sweep claims only deadlines at least this far past, leaving them to the local timer first
    #[arg(long, env = "TIMEOUT_SWEEP_GRACE_MS", default_value_t = 500, value_parser = parsed::<u64>, help_heading = TIMEOUTS)]
    timeout_sweep_grace_ms: u64,

    /// HS256 secret, at least 32 bytes; setting it turns tokens on
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = secret, help_heading = SECURITY)]
    jwt_secret: Option<Secret>,
    /// off: every caller is an admin [default: jwt when JWT_SECRET is set, else off]
    #[arg(long, env = "AUTH_MODE", value_enum, help_heading = SECURITY)]
    auth_mode: Option<AuthName>,
    /// clock leeway on token expiry
    #[arg(long, env = "JWT_LEEWAY_SECONDS", default_value_t = 5, value_parser = parsed::<u64>, help_heading = SECURITY)]
    jwt_leeway_seconds: u64,
    /// browser origins allowed to open WebSockets and make CORS requests, comma-separated; unset: any origin may open a WebSocket, no CORS headers
    #[arg(long, env = "ALLOWED_ORIGINS", value_parser = origins, help_heading = SECURITY)]
    allowed_origins: Option<List<String>>,
    /// IPs or CIDRs whose X-Forwarded-For is believed for per-IP limits, comma-separated
    #[arg(long, env = "TRUSTED_PROXIES", value_parser = proxies, help_heading = SECURITY)]
    trusted_proxies: Option<List<ipnet::IpNet>>,
    /// off for load tests
    #[arg(long, env = "RATE_LIMITS", value_enum, default_value_t = OnOff::On, help_heading = SECURITY)]
    rate_limits: OnOff,
    /// switches per session (REST and WebSocket), shared by all instances through Redis
    #[arg(long, env = "RATE_LIMIT_SWITCH_PER_SECOND", default_value_t = RateLimits::default().switch.count, value_parser = positive::<u32>, help_heading = SECURITY)]
    rate_limit_switch_per_second: u32,
    /// creates per token subject, or client IP
    #[arg(long, env = "RATE_LIMIT_CREATE_PER_MINUTE", default_value_t = RateLimits::default().create.count, value_parser = positive::<u32>, help_heading = SECURITY)]
    rate_limit_create_per_minute: u32,
    /// session reads per token subject, or client IP
    #[arg(long, env = "RATE_LIMIT_GET_PER_MINUTE", default_value_t = RateLimits::default().get.count, value_parser = positive::<u32>, help_heading = SECURITY)]
    rate_limit_get_per_minute: u32,
    /// /v1/time per client IP
    #[arg(long, env = "RATE_LIMIT_TIME_PER_MINUTE", default_value_t = RateLimits::default().time.count, value_parser = positive::<u32>, help_heading = SECURITY)]
    rate_limit_time_per_minute: u32,
    /// WebSocket connects per client IP
    #[arg(long, env = "RATE_LIMIT_WS_CONNECT_PER_MINUTE", default_value_t = RateLimits::default().ws_connect.count, value_parser = positive::<u32>, help_heading = SECURITY)]
    rate_limit_ws_connect_per_minute: u32,

    /// the server pings every WebSocket this often
    #[arg(long, env = "WS_HEARTBEAT_INTERVAL_MS", default_value_t = 5000, value_parser = positive::<u64>, help_heading = WEBSOCKETS)]
    ws_heartbeat_interval_ms: u64,
    /// a WebSocket silent this long is dropped
    #[arg(long, env = "WS_CONNECTION_TIMEOUT_MS", default_value_t = 30_000, value_parser = positive::<u64>, help_heading = WEBSOCKETS)]
    ws_connection_timeout_ms: u64,
    /// WebSockets per instance; over it, upgrades get 503 UNAVAILABLE
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = 50_000, value_parser = positive::<usize>, help_heading = WEBSOCKETS)]
    ws_max_connections: usize,
    /// WebSockets one token subject may hold (close 1008 above), across all instances with Redis
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_USER", default_value_t = 5, value_parser = positive::<usize>, help_heading = WEBSOCKETS)]
    ws_max_connections_per_user: usize,
    /// a user whose last WebSocket to a session closed gets presence_left only if not back within this long (0..=600000)
    #[arg(long, env = "PRESENCE_LEAVE_DELAY_MS", default_value_t = 5_000, value_parser = leave_delay_ms, help_heading = WEBSOCKETS)]
    presence_leave_delay_ms: u64,
    /// messages one client may send (close 1008 above)
    #[arg(long, env = "WS_MESSAGES_PER_MINUTE", default_value_t = 100, value_parser = positive::<u32>, help_heading = WEBSOCKETS)]
    ws_messages_per_minute: u32,

    /// off: no webhook is fed or sent (endpoints can still be managed)
    #[arg(long, env = "WEBHOOKS", value_enum, default_value_t = OnOff::On, help_heading = WEBHOOKS)]
    webhooks: OnOff,
    /// accept http:// webhook URLs (else https:// only)
    #[arg(long, env = "WEBHOOK_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set, value_parser = parsed::<bool>, help_heading = WEBHOOKS)]
    webhook_allow_http: bool,
    /// accept webhook hosts on loopback, private, link-local, multicast addresses (local development and tests only)
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, value_parser = parsed::<bool>, help_heading = WEBHOOKS)]
    webhook_allow_private: bool,
    /// waits between delivery attempts in ms, comma-separated (±20% jitter); after the last the endpoint is disabled
    #[arg(long, env = "WEBHOOK_RETRY_SCHEDULE_MS", default_value_t = RetrySchedule::default(), value_parser = parsed::<RetrySchedule>, help_heading = WEBHOOKS)]
    webhook_retry_schedule_ms: RetrySchedule,
    /// webhook sends in flight per instance (each gives up after 10 s)
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 64, value_parser = positive::<usize>, help_heading = WEBHOOKS)]
    webhook_concurrency: usize,
}

/// `REDIS_MODE`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeName {
    Standalone,
    Sentinel,
    Cluster,
}

/// `AUTH_MODE`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthName {
    Jwt,
    Off,
}

/// `RATE_LIMITS`' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// The contents of a PEM file (a newtype: clap reads a bare `Vec` as
/// several values).
#[derive(Debug, Clone)]
struct Pem(Vec<u8>);

/// A comma-separated list (a newtype for the same reason).
#[derive(Debug, Clone)]
struct List<T>(Vec<T>);

impl Vars {
    /// The signing secret, if `JWT_SECRET` is set (for `kairos-server token`).
    pub fn jwt_secret(&self) -> Option<&Secret> {
        self.jwt_secret.as_ref()
    }

    /// The audit database, if `DATABASE_URL` is set (for `kairos-server migrate`).
    pub fn database_url(&self) -> Option<&audit_diesel::DatabaseUrl> {
        self.database_url.as_ref()
    }

    /// Assembles the settings, checking what involves several variables.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        let auth = self.auth()?;
        let redis = self.redis()?;
        let d = RateLimits::default();
        let limit = |count: u32, default: Limit| Limit {
            count,
            period_ms: default.period_ms,
        };
        Ok(Settings {
            bind_addr: self.bind_addr,
            port: self.port,
            metrics_port: self.metrics_port,
            session_ttl: Duration::from_secs(self.session_ttl_seconds),
            ws_heartbeat_interval: Duration::from_millis(self.ws_heartbeat_interval_ms),
            ws_connection_timeout: Duration::from_millis(self.ws_connection_timeout_ms),
            ws_max_connections: self.ws_max_connections,
            shutdown_drain: Duration::from_secs(self.shutdown_drain_seconds),
            log_format: self.log_format,
            http_workers: self.http_workers,
            auth,
            rate_limits: RateLimits {
                enabled: self.rate_limits == OnOff::On,
                switch: limit(self.rate_limit_switch_per_second, d.switch),
                create: limit(self.rate_limit_create_per_minute, d.create),
                get: limit(self.rate_limit_get_per_minute, d.get),
                time: limit(self.rate_limit_time_per_minute, d.time),
                ws_connect: limit(self.rate_limit_ws_connect_per_minute, d.ws_connect),
                trusted_proxies: self.trusted_proxies.map(|l| l.0).unwrap_or_default(),
            },
            ws_messages_per_minute: self.ws_messages_per_minute,
            ws_max_connections_per_user: self.ws_max_connections_per_user,
            redis,
            database_url: self.database_url,
            database_pool_size: self.database_pool_size,
            audit_reclaim_ms: i64::try_from(self.audit_reclaim_ms).unwrap_or(i64::MAX),
            timeout_sweep: Duration::from_millis(self.timeout_sweep_ms),
            timeout_sweep_grace: Duration::from_millis(self.timeout_sweep_grace_ms),
            allowed_origins: self.allowed_origins.map(|l| l.0),
            webhooks: WebhookSettings {
                enabled: self.webhooks == OnOff::On,
                allow_http: self.webhook_allow_http,
                allow_private: self.webhook_allow_private,
                retry_schedule: self.webhook_retry_schedule_ms,
                concurrency: self.webhook_concurrency,
            },
            presence_leave_delay_ms: i64::try_from(self.presence_leave_delay_ms)
                .unwrap_or(i64::MAX),
        })
    }

    /// `AUTH_MODE` defaults to `jwt` when `JWT_SECRET` is set, else `off`.
    fn auth(&self) -> Result<Auth, ConfigError> {
        let mode = self.auth_mode.unwrap_or(if self.jwt_secret.is_some() {
            AuthName::Jwt
        } else {
            AuthName::Off
        });
        match mode {
            AuthName::Off => Ok(Auth::Off),
            AuthName::Jwt => Ok(Auth::Jwt {
                secret: self.jwt_secret.clone().ok_or_else(|| {
                    ConfigError::new("JWT_SECRET", "is required when AUTH_MODE=jwt")
                })?,
                leeway_s: self.jwt_leeway_seconds,
            }),
        }
    }

    /// Redis when `REDIS_URL` or `REDIS_MODE` is set.
    fn redis(&self) -> Result<Option<RedisSettings>, ConfigError> {
        if self.redis_url.is_none() && self.redis_mode.is_none() {
            return Ok(None);
        }
        let mode = RedisMode::parse(
            match self.redis_mode.unwrap_or(ModeName::Standalone) {
                ModeName::Standalone => "standalone",
                ModeName::Sentinel => "sentinel",
                ModeName::Cluster => "cluster",
            },
            self.redis_sentinel_master.as_deref(),
            self.redis_sentinels.as_deref(),
            self.redis_cluster_nodes.as_deref(),
        )
        .map_err(|e| {
            let variable = match &e {
                redis_conn::ConfigError::MissingMasterName => "REDIS_SENTINEL_MASTER",
                redis_conn::ConfigError::MissingSentinels => "REDIS_SENTINELS",
                _ => "REDIS_MODE",
            };
            ConfigError::new(variable, e.to_string())
        })?;
        let url = match (&mode, &self.redis_url) {
            (_, Some(url)) => url.clone(),
            (RedisMode::Cluster { nodes }, None) if !nodes.is_empty() => nodes[0].clone(),
            (RedisMode::Sentinel { .. }, None) => redis_conn::SENTINEL_PRIMARY_URL.to_owned(),
            _ => {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "is required (e.g. redis://127.0.0.1:6379/)",
                ));
            }
        };
        let target = RedisTarget {
            url,
            mode,
            tls_root_cert: self.redis_tls_ca_file.clone().map(|pem| pem.0),
        };
        target
            .validate()
            .map_err(|e| ConfigError::new("REDIS_URL", e.to_string()))?;
        Ok(Some(RedisSettings {
            target,
            command_timeout: Duration::from_millis(self.redis_command_timeout_ms),
            key_prefix: self.redis_key_prefix.clone(),
        }))
    }
}

/// Settings that exist only for tests. Not part of [`Settings`], not in
/// `--help`; the binary reads them from `KAIROS_TEST_*` variables so that
/// tests which start it as a process can set them. Never set one in
/// production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// `KAIROS_TEST_HOST_CLOCK_SKEW_MS`: pretends the host clock is this far
    /// off, to show that instances still agree on "now" through Redis `TIME`.
    pub host_clock_skew_ms: i64,
}

impl TestHooks {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup)
    }

    /// Reads the hooks through `lookup`; unset or blank: no hook.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        const SKEW: &str = "KAIROS_TEST_HOST_CLOCK_SKEW_MS";
        let host_clock_skew_ms = match lookup(SKEW).filter(|v| !v.trim().is_empty()) {
            None => 0,
            Some(raw) => parsed::<i64>(&raw).map_err(|message| ConfigError::new(SKEW, message))?,
        };
        Ok(Self { host_clock_skew_ms })
    }
}

/// Why the command line and environment were refused.
#[derive(Debug)]
pub enum ParseError {
    /// A setting's value is wrong: print it and exit 2.
    Config(ConfigError),
    /// Help, version or a usage mistake: clap prints it (`e.exit()`).
    Usage(clap::Error),
}

/// Parses the command `C` from the process's arguments and environment.
pub fn parse_process<C: CommandFactory + FromArgMatches>() -> Result<C, ParseError> {
    parse(std::env::args_os(), env_lookup)
}

/// Parses the command `C` from `args` (the first is the program name) and
/// from the variables its arguments declare with `env`, looked up through
/// `lookup`. A flag wins over its variable; a blank variable counts as unset.
pub fn parse<C: CommandFactory + FromArgMatches>(
    args: impl IntoIterator<Item = OsString>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<C, ParseError> {
    let mut args = args.into_iter();
    let program = args
        .next()
        .unwrap_or_else(|| OsString::from("kairos-server"));
    let given: Vec<OsString> = args.collect();
    let mut cmd = C::command();
    // Built, so that its arguments can print themselves as clap's errors do.
    cmd.build();
    // Each set variable becomes its flag, placed before the given flags so
    // that those override it.
    let from_env = cmd.get_arguments().filter_map(|arg| {
        let variable = arg.get_env()?.to_str()?;
        let value = lookup(variable).filter(|v| !v.trim().is_empty())?;
        Some(OsString::from(format!("--{}={value}", arg.get_long()?)))
    });
    let all: Vec<OsString> = std::iter::once(program.clone())
        .chain(from_env)
        .chain(given.iter().cloned())
        .collect();
    let matches = cmd
        .clone()
        .args_override_self(true)
        // Only `lookup` may supply a variable.
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(all);
    let matches = match matches {
        Ok(m) => m,
        Err(e) => {
            return Err(match config_error(&cmd, &e) {
                Some(config) => ParseError::Config(config),
                None if is_help(&e) => {
                    // Rendered again by the command with its `env` names.
                    let again = cmd.try_get_matches_from(std::iter::once(program).chain(given));
                    ParseError::Usage(again.err().unwrap_or(e))
                }
                None => ParseError::Usage(e),
            });
        }
    };
    C::from_arg_matches(&matches).map_err(ParseError::Usage)
}

fn is_help(e: &clap::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// A bad value of an argument with a variable, as an error naming the variable.
fn config_error(cmd: &clap::Command, e: &clap::Error) -> Option<ConfigError> {
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let variable = cmd
        .get_arguments()
        .find(|arg| arg.to_string() == *shown)?
        .get_env()?
        .to_str()?;
    let raw = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(raw)) => raw.as_str(),
        _ => "",
    };
    let message = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::ValueValidation, _) => e.source()?.to_string(),
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            let quoted: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
            let (last, rest) = quoted.split_last()?;
            format!("expected {} or {last}, got {raw:?}", rest.join(", "))
        }
        _ => return None,
    };
    Some(ConfigError::new(variable, message))
}

/// Any `FromStr` value, surrounding spaces ignored.
fn parsed<T: std::str::FromStr>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    raw.trim()
        .parse()
        .map_err(|e| format!("cannot parse {raw:?}: {e}"))
}

/// A number above zero.
fn positive<T: std::str::FromStr + Default + PartialEq>(raw: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    let value: T = parsed(raw)?;
    if value == T::default() {
        return Err("must be greater than zero".into());
    }
    Ok(value)
}

/// `PRESENCE_LEAVE_DELAY_MS`: 0 (announce at once) to 10 minutes.
fn leave_delay_ms(raw: &str) -> Result<u64, String> {
    let value: u64 = parsed(raw)?;
    if value > 600_000 {
        return Err("must be at most 600000 (10 minutes)".into());
    }
    Ok(value)
}

/// A duration's whole milliseconds, for a default.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn secret(raw: &str) -> Result<Secret, String> {
    Secret::new(raw.to_owned())
}

/// The key prefix rule both Redis adapters rely on.
fn key_prefix(raw: &str) -> Result<String, String> {
    redis_conn::check_key_prefix(raw)
        .map(|()| raw.to_owned())
        .map_err(|e| e.to_string())
}

/// Read now: a wrong path should stop the start, not every connect.
fn ca_file(raw: &str) -> Result<Pem, String> {
    redis_conn::read_ca_file(raw).map(Pem)
}

fn database_url(raw: &str) -> Result<audit_diesel::DatabaseUrl, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(audit_diesel::DatabaseUrl::new(raw))
    } else {
        Err("expected a postgres:// URL".into())
    }
}

/// The items of a comma-separated list, blank ones dropped, each parsed by `item`.
fn list<T>(raw: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<List<T>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(item)
        .collect::<Result<_, _>>()
        .map(List)
}

fn origins(raw: &str) -> Result<List<String>, String> {
    list(raw, |s| {
        let s = s.trim_end_matches('/');
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(s.to_owned())
        } else {
            Err(format!(
                "{s:?} is not an origin like https://app.example.com"
            ))
        }
    })
}

fn proxies(raw: &str) -> Result<List<ipnet::IpNet>, String> {
    list(raw, |s| {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_gives_the_embedded_default() {
        let s = from(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.port, 8080);
        assert_eq!(s.bind_addr.to_string(), "127.0.0.1");
        assert_eq!(s.metrics_port, 9090);
        assert_eq!(s.session_ttl, Duration::from_secs(3600));
        assert_eq!(s.ws_heartbeat_interval, Duration::from_millis(5000));
        assert_eq!(s.ws_connection_timeout, Duration::from_millis(30_000));
        assert_eq!(s.ws_max_connections, 50_000);
        assert_eq!(s.shutdown_drain, Duration::from_secs(15));
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(s.http_workers, None);
        assert_eq!(s.auth, Auth::Off);
        assert_eq!(s.rate_limits, RateLimits::default());
        assert_eq!(s.ws_messages_per_minute, 100);
        assert_eq!(s.ws_max_connections_per_user, 5);
        assert_eq!(s.redis, None);
        assert_eq!(s.database_url, None);
        assert_eq!(s.database_pool_size, 4);
        assert_eq!(s.audit_reclaim_ms, 30_000);
        assert_eq!(s.timeout_sweep, Duration::from_millis(500));
        assert_eq!(s.timeout_sweep_grace, Duration::from_millis(500));
        assert_eq!(s.allowed_origins, None);
        assert_eq!(s.webhooks, WebhookSettings::default());
        assert!(s.webhooks.enabled && !s.webhooks.allow_http && !s.webhooks.allow_private);
        assert_eq!(
            s.webhooks.retry_schedule.steps(),
            [
                5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 86_400_000
            ]
        );
        assert_eq!(s.webhooks.concurrency, 64);
        assert_eq!(s.presence_leave_delay_ms, 5_000);
    }

    #[test]
    fn webhook_settings_are_read_and_checked() {
        let s = from(&[
            ("WEBHOOKS", "off"),
            ("WEBHOOK_ALLOW_HTTP", "true"),
            ("WEBHOOK_ALLOW_PRIVATE", "true"),
            ("WEBHOOK_RETRY_SCHEDULE_MS", "100, 200,300"),
            ("WEBHOOK_CONCURRENCY", "3"),
        ])
        .unwrap();
        assert_eq!(
            s.webhooks,
            WebhookSettings {
                enabled: false,
                allow_http: true,
                allow_private: true,
                retry_schedule: RetrySchedule::parse("100,200,300").unwrap(),
                concurrency: 3,
            }
        );
        for (variable, value) in [
            ("WEBHOOKS", "maybe"),
            ("WEBHOOK_ALLOW_HTTP", "yes"),
            ("WEBHOOK_ALLOW_PRIVATE", "1"),
            ("WEBHOOK_RETRY_SCHEDULE_MS", "100,,200"),
            ("WEBHOOK_RETRY_SCHEDULE_MS", "0"),
            ("WEBHOOK_CONCURRENCY", "0"),
        ] {
            let e = from(&[(variable, value)]).unwrap_err();
            assert_eq!(e.variable, variable, "{value}: {e}");
        }
    }

    #[test]
    fn the_presence_leave_delay_is_bounded() {
        let s = from(&[("PRESENCE_LEAVE_DELAY_MS", "0")]).unwrap();
        assert_eq!(s.presence_leave_delay_ms, 0);
        let s = from(&[("PRESENCE_LEAVE_DELAY_MS", "600000")]).unwrap();
        assert_eq!(s.presence_leave_delay_ms, 600_000);
        for bad in ["600001", "-1", "soon"] {
            let e = from(&[("PRESENCE_LEAVE_DELAY_MS", bad)]).unwrap_err();
            assert!(e.to_string().contains("PRESENCE_LEAVE_DELAY_MS"), "{e}");
        }
    }

    #[test]
    fn a_blank_variable_counts_as_unset_and_a_flag_wins() {
        assert_eq!(
            from(&[("PORT", " "), ("JWT_SECRET", "")]).unwrap(),
            Settings::default()
        );
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            vars: Vars,
        }
        let args = ["kairos-server", "--port", "9001"].map(OsString::from);
        let Ok(only) = parse::<Only>(args, |k| (k == "PORT").then(|| "9000".to_owned())) else {
            panic!("parses")
        };
        assert_eq!(only.vars.settings().unwrap().port, 9001);
    }

    #[test]
    fn every_variable_is_read() {
        let s = from(&[
            ("BIND_ADDR", "0.0.0.0"),
            ("PORT", "9000"),
            ("METRICS_PORT", "9000"),
            ("SESSION_TTL_SECONDS", "60"),
            ("WS_HEARTBEAT_INTERVAL_MS", "1000"),
            ("WS_CONNECTION_TIMEOUT_MS", "3000"),
            ("WS_MAX_CONNECTIONS", "7"),
            ("SHUTDOWN_DRAIN_SECONDS", "0"),
            ("LOG_FORMAT", "json"),
            ("AUTH_MODE", "off"),
            ("RATE_LIMITS", "off"),
            ("RATE_LIMIT_SWITCH_PER_SECOND", "20"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
            ("WS_MESSAGES_PER_MINUTE", "50"),
            ("WS_MAX_CONNECTIONS_PER_USER", "2"),
            ("TIMEOUT_SWEEP_MS", "1000"),
            ("TIMEOUT_SWEEP_GRACE_MS", "0"),
        ])
        .unwrap();
        assert_eq!(s.timeout_sweep, Duration::from_secs(1));
        assert_eq!(s.timeout_sweep_grace, Duration::ZERO);
        assert!(!s.rate_limits.enabled);
        assert_eq!(s.rate_limits.switch, Limit::per_second(20));
        assert_eq!(s.rate_limits.create, Limit::per_minute(5));
        assert_eq!(s.rate_limits.trusted_proxies.len(), 2);
        assert_eq!(s.ws_messages_per_minute, 50);
        assert_eq!(s.ws_max_connections_per_user, 2);
        assert_eq!(s.port, 9000);
        assert_eq!(s.metrics_port, 9000);
        assert_eq!(s.session_ttl, Duration::from_secs(60));
        assert_eq!(s.ws_heartbeat_interval, Duration::from_millis(1000));
        assert_eq!(s.ws_connection_timeout, Duration::from_millis(3000));
        assert_eq!(s.ws_max_connections, 7);
        assert_eq!(s.shutdown_drain, Duration::ZERO);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = from(&[("PORT", "eighty")]).unwrap_err();
        assert_eq!(e.variable, "PORT");
        assert!(e.to_string().contains("PORT"), "{e}");
        assert_eq!(
            e.to_string(),
            "invalid configuration: PORT: cannot parse \"eighty\": invalid digit found in string"
        );
        assert_eq!(
            from(&[("WS_MAX_CONNECTIONS", "0")]).unwrap_err().variable,
            "WS_MAX_CONNECTIONS"
        );
        assert_eq!(
            from(&[("LOG_FORMAT", "xml")]).unwrap_err().variable,
            "LOG_FORMAT"
        );
        assert_eq!(
            from(&[("TIMEOUT_SWEEP_MS", "0")]).unwrap_err().variable,
            "TIMEOUT_SWEEP_MS"
        );
        assert_eq!(
            from(&[("RATE_LIMITS", "maybe")]).unwrap_err().variable,
            "RATE_LIMITS"
        );
        assert_eq!(
            from(&[("TRUSTED_PROXIES", "nope")]).unwrap_err().variable,
            "TRUSTED_PROXIES"
        );
        assert_eq!(
            from(&[("BIND_ADDR", "localhost:1")]).unwrap_err().variable,
            "BIND_ADDR"
        );
        assert_eq!(
            from(&[("AUTH_MODE", "jwt")]).unwrap_err().variable,
            "JWT_SECRET"
        );
        assert_eq!(
            from(&[("AUTH_MODE", "basic")]).unwrap_err().variable,
            "AUTH_MODE"
        );
        assert_eq!(
            from(&[("JWT_SECRET", "too-short")]).unwrap_err().variable,
            "JWT_SECRET"
        );
        assert_eq!(
            from(&[("LOG_FORMAT", "xml")]).unwrap_err().message,
            "expected \"json\" or \"pretty\", got \"xml\""
        );
        assert_eq!(
            from(&[("WS_MAX_CONNECTIONS", "0")]).unwrap_err().message,
            "must be greater than zero"
        );
    }

    #[test]
    fn a_redis_ca_file_is_read_at_start_and_a_bad_one_stops_it() {
        let dir = std::env::temp_dir().join(format!("kairos-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&good, pem).unwrap();
        let bad = dir.join("notes.txt");
        std::fs::write(&bad, "not a certificate").unwrap();
        let with = |path: &std::path::Path| {
            let path = path.display().to_string();
            from(&[
                ("REDIS_URL", "rediss://127.0.0.1:6380/"),
                ("REDIS_TLS_CA_FILE", path.as_str()),
            ])
        };
        let s = with(&good).unwrap();
        assert_eq!(
            s.redis.unwrap().target.tls_root_cert.as_deref(),
            Some(pem.as_bytes())
        );
        let e = with(&bad).unwrap_err();
        assert_eq!(e.variable, "REDIS_TLS_CA_FILE");
        assert!(e.message.contains("no PEM certificate"), "{}", e.message);
        let e = with(&dir.join("missing.pem")).unwrap_err();
        assert_eq!(e.variable, "REDIS_TLS_CA_FILE");
        assert!(e.message.contains("cannot read"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_settings_per_mode() {
        let s = from(&[("REDIS_URL", "redis://u:pw@127.0.0.1:6379/")]).unwrap();
        let r = s.redis.clone().unwrap();
        assert_eq!(r.target.mode, store_redis::RedisMode::Standalone);
        assert_eq!(r.command_timeout, Duration::from_millis(250));
        assert!(
            !format!("{s:?}").contains("pw"),
            "the password leaked into Debug"
        );
        let s = from(&[
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINELS", "redis://a:26379,redis://b:26379"),
        ])
        .unwrap();
        // Without REDIS_URL: no credentials, and a URL the client accepts.
        let sentinels = ["redis://a:26379".to_owned()];
        let target = &s.redis.as_ref().unwrap().target;
        assert!(target.sentinel_client("mymaster", &sentinels).is_ok());
        assert!(matches!(
            s.redis.unwrap().target.mode,
            store_redis::RedisMode::Sentinel { .. }
        ));
        let s = from(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_CLUSTER_NODES", "redis://a:7000 redis://b:7001"),
        ])
        .unwrap();
        assert_eq!(s.redis.unwrap().target.url, "redis://a:7000");
        assert_eq!(
            from(&[("REDIS_MODE", "sentinel")]).unwrap_err().variable,
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            from(&[("REDIS_MODE", "ring")]).unwrap_err().variable,
            "REDIS_MODE"
        );
        assert_eq!(
            from(&[("REDIS_MODE", "standalone")]).unwrap_err().variable,
            "REDIS_URL"
        );
        assert_eq!(
            from(&[("REDIS_URL", "http://x")]).unwrap_err().variable,
            "REDIS_URL"
        );
        assert_eq!(
            from(&[("REDIS_URL", "redis://h/"), ("REDIS_KEY_PREFIX", "a{b}")])
                .unwrap_err()
                .variable,
            "REDIS_KEY_PREFIX"
        );
    }

    #[test]
    fn the_store_and_the_bus_get_the_same_target() {
        let s = from(&[
            ("REDIS_URL", "rediss://:pw@h:6380/2"),
            ("REDIS_COMMAND_TIMEOUT_MS", "300"),
            ("REDIS_KEY_PREFIX", "app:"),
            ("SESSION_TTL_SECONDS", "60"),
        ])
        .unwrap();
        let redis = s.redis.unwrap();
        let store = redis.store_config(s.session_ttl, false);
        let bus = redis.bus_config();
        assert_eq!(store.redis, bus.redis);
        assert_eq!(store.redis.url, "rediss://:pw@h:6380/2");
        assert_eq!(store.command_timeout, Duration::from_millis(300));
        assert_eq!(store.session_ttl, Duration::from_secs(60));
        assert!(!store.outbox_enabled);
        assert_eq!(store.key_prefix, "app:");
        assert_eq!(bus.channel_prefix, "app");
        assert_eq!(bus.command_timeout, bus_redis::DEFAULT_COMMAND_TIMEOUT);
    }

    #[test]
    fn a_secret_turns_tokens_on_and_never_prints() {
        let secret = "0123456789abcdef0123456789abcdef-secret";
        let s = from(&[("JWT_SECRET", secret)]).unwrap();
        assert!(matches!(s.auth, Auth::Jwt { leeway_s: 5, .. }));
        assert!(!format!("{s:?}").contains(secret));
        let off = from(&[("JWT_SECRET", secret), ("AUTH_MODE", "off")]).unwrap();
        assert_eq!(off.auth, Auth::Off);
    }

    #[test]
    fn database_and_origins_are_validated() {
        assert_eq!(
            from(&[(
                "ALLOWED_ORIGINS",
                "https://a.example, http://b.example:8080/"
            )])
            .unwrap()
            .allowed_origins,
            Some(vec![
                "https://a.example".to_owned(),
                "http://b.example:8080".to_owned()
            ])
        );
        assert_eq!(
            from(&[("ALLOWED_ORIGINS", "a.example")])
                .unwrap_err()
                .variable,
            "ALLOWED_ORIGINS"
        );
        let s = from(&[("DATABASE_URL", "postgres://k:secret-pw@db/kairos")]).unwrap();
        assert!(s.database_url.is_some());
        assert!(
            !format!("{s:?}").contains("secret-pw"),
            "the password leaked into Debug"
        );
        assert_eq!(
            from(&[("DATABASE_URL", "mysql://x")]).unwrap_err().variable,
            "DATABASE_URL"
        );
    }

    #[test]
    fn test_hooks_are_not_settings() {
        let skew = |v: &str| {
            let v = v.to_owned();
            TestHooks::from_lookup(move |k| {
                (k == "KAIROS_TEST_HOST_CLOCK_SKEW_MS").then(|| v.clone())
            })
        };
        assert_eq!(skew("5000").unwrap().host_clock_skew_ms, 5000);
        assert_eq!(skew("").unwrap(), TestHooks::default());
        assert_eq!(
            skew("soon").unwrap_err().variable,
            "KAIROS_TEST_HOST_CLOCK_SKEW_MS"
        );
        // Not a setting: unknown to the declaration, hence to `--help`.
        let cmd = <Vars as clap::Args>::augment_args(clap::Command::new("kairos-server"));
        assert!(cmd.get_arguments().all(|a| {
            a.get_env()
                .is_some_and(|v| !v.to_string_lossy().starts_with("KAIROS_TEST"))
        }));
    }

    #[test]
    fn the_operations_guide_lists_every_variable() {
        let guide = include_str!("../../../docs/operations.md");
        let cmd = <Vars as clap::Args>::augment_args(clap::Command::new("kairos-server"));
        for arg in cmd.get_arguments() {
            let variable = arg.get_env().unwrap().to_string_lossy();
            assert!(
                guide.contains(&format!("| `{variable}` |")),
                "docs/operations.md has no row for {variable}"
            );
        }
    }
}
