//! Configuration from the environment (contract section 7): typed and
//! validated once at start, with an error that names the bad variable.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use http_actix::auth::Secret;
use http_actix::limits::RateLimits;
use kairos_domain::Limit;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Where Redis is, when instances share it (`REDIS_URL`, `REDIS_MODE`, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The standalone server; with Sentinel its credentials and database are
    /// used; with Cluster a seed node when `REDIS_CLUSTER_NODES` is empty.
    pub url: String,
    /// Standalone, Sentinel or Cluster.
    pub mode: store_redis::RedisMode,
    /// Every Redis call gives up after this (`REDIS_COMMAND_TIMEOUT_MS`, default 250).
    pub command_timeout: Duration,
    /// Prefix of every key and channel (`REDIS_KEY_PREFIX`, default `kairos:`),
    /// so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// The PEM file of `REDIS_TLS_CA_FILE`, read at start: the CAs a
    /// `rediss://` server is verified against instead of the web roots.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl fmt::Debug for RedisSettings {
    // The URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &store_redis::redact_url(&self.url))
            .field("mode", &self.mode)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|_| "<PEM>"),
            )
            .finish()
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
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Everything the server reads from its environment.
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
    /// Browser origins allowed (`ALLOWED_ORIGINS`, comma-separated, e.g.
    /// `https://app.example.com`); unset: WebSockets from any origin, no CORS.
    pub allowed_origins: Option<Vec<String>>,
    /// TEST HOOK (`KAIROS_TEST_HOST_CLOCK_SKEW_MS`): pretends the host clock
    /// is this far off, to show that instances still agree on "now" through
    /// Redis `TIME`. Never set it in production.
    pub test_host_clock_skew_ms: i64,
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
            .field("allowed_origins", &self.allowed_origins)
            .field("test_host_clock_skew_ms", &self.test_host_clock_skew_ms)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind_addr: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            metrics_port: 9090,
            session_ttl: Duration::from_secs(3600),
            ws_heartbeat_interval: Duration::from_millis(5000),
            ws_connection_timeout: Duration::from_millis(30_000),
            ws_max_connections: 50_000,
            shutdown_drain: Duration::from_secs(15),
            log_format: LogFormat::Pretty,
            http_workers: None,
            auth: Auth::Off,
            rate_limits: RateLimits::default(),
            ws_messages_per_minute: 100,
            ws_max_connections_per_user: 5,
            redis: None,
            database_url: None,
            database_pool_size: 4,
            audit_reclaim_ms: 30_000,
            allowed_origins: None,
            test_host_clock_skew_ms: 0,
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_lookup(|k| vars.get(k).cloned())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let d = Self::default();
        let auth = parse_auth(&get)?;
        let rate_limits = parse_rate_limits(&get)?;
        let redis = parse_redis(&get)?;
        let port = parse(&get, "PORT", d.port)?;
        Ok(Self {
            bind_addr: parse(&get, "BIND_ADDR", d.bind_addr)?,
            port,
            metrics_port: parse(&get, "METRICS_PORT", d.metrics_port)?,
            session_ttl: Duration::from_secs(positive(&get, "SESSION_TTL_SECONDS", 3600)?),
            ws_heartbeat_interval: Duration::from_millis(positive(
                &get,
                "WS_HEARTBEAT_INTERVAL_MS",
                5000,
            )?),
            ws_connection_timeout: Duration::from_millis(positive(
                &get,
                "WS_CONNECTION_TIMEOUT_MS",
                30_000,
            )?),
            ws_max_connections: usize::try_from(positive(&get, "WS_MAX_CONNECTIONS", 50_000)?)
                .unwrap_or(usize::MAX),
            shutdown_drain: Duration::from_secs(parse(&get, "SHUTDOWN_DRAIN_SECONDS", 15u64)?),
            log_format: match get("LOG_FORMAT").as_deref() {
                None | Some("pretty") => LogFormat::Pretty,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError {
                        variable: "LOG_FORMAT",
                        message: format!("expected \"json\" or \"pretty\", got {other:?}"),
                    });
                }
            },
            http_workers: match get("HTTP_WORKERS") {
                None => None,
                Some(_) => Some(usize::try_from(positive(&get, "HTTP_WORKERS", 1)?).unwrap_or(1)),
            },
            auth,
            rate_limits,
            ws_messages_per_minute: u32::try_from(positive(&get, "WS_MESSAGES_PER_MINUTE", 100)?)
                .unwrap_or(u32::MAX),
            ws_max_connections_per_user: usize::try_from(positive(
                &get,
                "WS_MAX_CONNECTIONS_PER_USER",
                5,
            )?)
            .unwrap_or(usize::MAX),
            redis,
            test_host_clock_skew_ms: parse(&get, "KAIROS_TEST_HOST_CLOCK_SKEW_MS", 0i64)?,
            database_url: match get("DATABASE_URL") {
                None => None,
                Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    Some(audit_diesel::DatabaseUrl::new(url))
                }
                Some(_) => {
                    return Err(ConfigError {
                        variable: "DATABASE_URL",
                        message: "expected a postgres:// URL".into(),
                    });
                }
            },
            database_pool_size: usize::try_from(positive(&get, "DATABASE_POOL_SIZE", 4)?)
                .unwrap_or(4),
            audit_reclaim_ms: i64::try_from(positive(&get, "AUDIT_RECLAIM_MS", 30_000)?)
                .unwrap_or(i64::MAX),
            allowed_origins: match get("ALLOWED_ORIGINS") {
                None => None,
                Some(raw) => Some(
                    raw.split(',')
                        .map(|s| s.trim().trim_end_matches('/').to_owned())
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            if s.starts_with("http://") || s.starts_with("https://") {
                                Ok(s)
                            } else {
                                Err(ConfigError {
                                    variable: "ALLOWED_ORIGINS",
                                    message: format!(
                                        "{s:?} is not an origin like https://app.example.com"
                                    ),
                                })
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            },
        })
    }
}

fn parse_redis(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<RedisSettings>, ConfigError> {
    let url = get("REDIS_URL");
    let mode_raw = get("REDIS_MODE");
    if url.is_none() && mode_raw.is_none() {
        return Ok(None);
    }
    let mode = store_redis::RedisMode::parse(
        mode_raw.as_deref().unwrap_or("standalone"),
        get("REDIS_SENTINEL_MASTER").as_deref(),
        get("REDIS_SENTINELS").as_deref(),
        get("REDIS_CLUSTER_NODES").as_deref(),
    )
    .map_err(|e| ConfigError {
        variable: match &e {
            store_redis::ConfigError::MissingMasterName => "REDIS_SENTINEL_MASTER",
            store_redis::ConfigError::MissingSentinels => "REDIS_SENTINELS",
            _ => "REDIS_MODE",
        },
        message: e.to_string(),
    })?;
    let url = match (&mode, url) {
        (_, Some(url)) => url,
        (store_redis::RedisMode::Cluster { nodes }, None) if !nodes.is_empty() => nodes[0].clone(),
        (store_redis::RedisMode::Sentinel { .. }, None) => "redis://".to_owned(),
        _ => {
            return Err(ConfigError {
                variable: "REDIS_URL",
                message: "is required (e.g. redis://127.0.0.1:6379/)".into(),
            });
        }
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(ConfigError {
            variable: "REDIS_URL",
            message: format!(
                "expected a redis:// URL, got {:?}",
                store_redis::redact_url(&url)
            ),
        });
    }
    Ok(Some(RedisSettings {
        url,
        mode,
        command_timeout: Duration::from_millis(positive(get, "REDIS_COMMAND_TIMEOUT_MS", 250)?),
        key_prefix: match get("REDIS_KEY_PREFIX") {
            None => "kairos:".to_owned(),
            Some(p) if p.contains(['{', '}']) || p.chars().any(char::is_whitespace) => {
                return Err(ConfigError {
                    variable: "REDIS_KEY_PREFIX",
                    message: "must not contain braces or spaces".into(),
                });
            }
            Some(p) => p,
        },
        tls_root_cert: match get("REDIS_TLS_CA_FILE") {
            None => None,
            Some(path) => Some(read_pem(&path).map_err(|message| ConfigError {
                variable: "REDIS_TLS_CA_FILE",
                message,
            })?),
        },
    }))
}

/// The contents of a PEM file, refused when unreadable or without a
/// certificate (a wrong path should stop the start, not every connect).
fn read_pem(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(pem)
}

fn parse_rate_limits(get: &impl Fn(&str) -> Option<String>) -> Result<RateLimits, ConfigError> {
    let d = RateLimits::default();
    let enabled = match get("RATE_LIMITS").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(ConfigError {
                variable: "RATE_LIMITS",
                message: format!("expected \"on\" or \"off\", got {other:?}"),
            });
        }
    };
    let count = |var: &'static str, default: Limit| -> Result<Limit, ConfigError> {
        let n = positive(get, var, u64::from(default.count))?;
        Ok(Limit {
            count: u32::try_from(n).unwrap_or(u32::MAX),
            period_ms: default.period_ms,
        })
    };
    let trusted_proxies = match get("TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ConfigError {
                        variable: "TRUSTED_PROXIES",
                        message: format!("{s:?} is not an IP address or CIDR block"),
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(RateLimits {
        enabled,
        switch: count("RATE_LIMIT_SWITCH_PER_SECOND", d.switch)?,
        create: count("RATE_LIMIT_CREATE_PER_MINUTE", d.create)?,
        get: count("RATE_LIMIT_GET_PER_MINUTE", d.get)?,
        time: count("RATE_LIMIT_TIME_PER_MINUTE", d.time)?,
        ws_connect: count("RATE_LIMIT_WS_CONNECT_PER_MINUTE", d.ws_connect)?,
        trusted_proxies,
    })
}

/// `AUTH_MODE` defaults to `jwt` when `JWT_SECRET` is set, else `off`.
fn parse_auth(get: &impl Fn(&str) -> Option<String>) -> Result<Auth, ConfigError> {
    let secret = get("JWT_SECRET");
    let mode =
        get("AUTH_MODE").unwrap_or_else(|| if secret.is_some() { "jwt" } else { "off" }.to_owned());
    match mode.as_str() {
        "off" => Ok(Auth::Off),
        "jwt" => {
            let raw = secret.ok_or(ConfigError {
                variable: "JWT_SECRET",
                message: "is required when AUTH_MODE=jwt".into(),
            })?;
            let secret = Secret::new(raw).map_err(|message| ConfigError {
                variable: "JWT_SECRET",
                message,
            })?;
            Ok(Auth::Jwt {
                secret,
                leeway_s: parse(get, "JWT_LEEWAY_SECONDS", 5u64)?,
            })
        }
        other => Err(ConfigError {
            variable: "AUTH_MODE",
            message: format!("expected \"jwt\" or \"off\", got {other:?}"),
        }),
    }
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match get(variable) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e: T::Err| ConfigError {
            variable,
            message: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

fn positive(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    let v: u64 = parse(get, variable, default)?;
    if v == 0 {
        return Err(ConfigError {
            variable,
            message: "must be greater than zero".into(),
        });
    }
    Ok(v)
}

/// Help text listing every variable, for `--help`.
pub const ENV_HELP: &str = "\
Configuration (environment variables; see docs/operations.md):
  BIND_ADDR                 address to bind (default 127.0.0.1)
  PORT                      main port (default 8080; 0 = any free port)
  METRICS_PORT              Prometheus /metrics port (default 9090; = PORT to share the main port)
  SESSION_TTL_SECONDS       sessions expire this long after their last change (default 3600)
  WS_HEARTBEAT_INTERVAL_MS  server ping interval (default 5000)
  WS_CONNECTION_TIMEOUT_MS  drop WebSockets silent this long (default 30000)
  WS_MAX_CONNECTIONS        WebSocket cap per instance (default 50000)
  SHUTDOWN_DRAIN_SECONDS    on SIGTERM: not ready at once, sockets closed with 1001 after this (default 15)
  AUTH_MODE                 jwt | off (default: jwt when JWT_SECRET is set, else off = everyone is admin)
  JWT_SECRET                HS256 secret, at least 32 bytes
  JWT_LEEWAY_SECONDS        clock leeway on token expiry (default 5)
  RATE_LIMITS               on | off (default on; off for load tests)
  RATE_LIMIT_SWITCH_PER_SECOND, RATE_LIMIT_CREATE_PER_MINUTE, RATE_LIMIT_GET_PER_MINUTE,
  RATE_LIMIT_TIME_PER_MINUTE, RATE_LIMIT_WS_CONNECT_PER_MINUTE
                            the limits (defaults 10, 5, 100, 60, 5)
  TRUSTED_PROXIES           proxies whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated)
  WS_MESSAGES_PER_MINUTE    messages one WebSocket client may send (default 100; above: close 1008)
  WS_MAX_CONNECTIONS_PER_USER  WebSockets per token subject, all instances together (default 5)
  LOG_FORMAT                pretty | json (default pretty)
  RUST_LOG                  log filter (default info)
  HTTP_WORKERS              HTTP worker threads (default: one per core)
  REDIS_URL                 redis://[user:password@]host:port/[db]; unset = in-process store (one instance)
  REDIS_MODE                standalone | sentinel | cluster (default standalone)
  REDIS_SENTINEL_MASTER     sentinel: the monitored master's name
  REDIS_SENTINELS           sentinel: sentinel URLs, comma-separated
  REDIS_CLUSTER_NODES       cluster: node URLs, comma-separated (default: REDIS_URL as the seed)
  REDIS_COMMAND_TIMEOUT_MS  every Redis call gives up after this (default 250; answers 503)
  REDIS_KEY_PREFIX          prefix of every key and channel (default kairos:)
  REDIS_TLS_CA_FILE         PEM file of the CA(s) that sign the rediss:// servers'
                            certificates (default: the public web roots)
  ALLOWED_ORIGINS           browser origins allowed for WebSockets and CORS, comma-separated
  DATABASE_URL              postgres://... for the audit trail (migrations run at start);
                            unset: audit off with Redis, in memory with the embedded default
  DATABASE_POOL_SIZE        audit pool connections (default 4)
  AUDIT_RECLAIM_MS          take over audit events another instance read but never acknowledged
                            after this long (default 30000)";

#[cfg(test)]
mod tests {
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
        ])
        .unwrap();
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
            from(&[("WS_MAX_CONNECTIONS", "0")]).unwrap_err().variable,
            "WS_MAX_CONNECTIONS"
        );
        assert_eq!(
            from(&[("LOG_FORMAT", "xml")]).unwrap_err().variable,
            "LOG_FORMAT"
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
            s.redis.unwrap().tls_root_cert.as_deref(),
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
        assert_eq!(r.mode, store_redis::RedisMode::Standalone);
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
        assert!(matches!(
            s.redis.unwrap().mode,
            store_redis::RedisMode::Sentinel { .. }
        ));
        let s = from(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_CLUSTER_NODES", "redis://a:7000 redis://b:7001"),
        ])
        .unwrap();
        assert_eq!(s.redis.unwrap().url, "redis://a:7000");
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
}
