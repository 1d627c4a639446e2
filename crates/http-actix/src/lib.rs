//! # http-actix
//!
//! The transport of SyncKairos: REST and WebSocket on actix-web, the error
//! format, Prometheus metrics, the OpenAPI document and its page. It is the
//! only crate that knows HTTP and the wire JSON; it talks to the core only
//! through [`kairos_domain::SessionService`] over trait-object ports.
//!
//! # Layout
//!
//! From the bottom up; a module imports only modules listed before it
//! (no cycles), so `state` sits above the parts it holds and only the
//! handlers see it.
//!
//! - [`error`]: [`ApiError`] and the one mapping from service errors to wire
//!   codes, HTTP statuses and WebSocket close codes.
//! - [`dto`]: wire shapes of views, events and command bodies.
//! - [`schemas`]: shapes that exist only for the OpenAPI document, and the
//!   error rows the handlers share.
//! - [`command`]: the commands by name, for REST and WebSocket alike.
//! - [`wire`]: the WebSocket messages: types, the client-message parser, the encoders.
//! - [`auth`]: the auth mode, which turns a request into an `Actor`.
//! - [`limits`]: rate limits, the client's address, the `RateLimit-*` headers.
//! - [`places`]: the per-user WebSocket cap across instances.
//! - [`presence`]: this instance's sockets in the presence registry
//!   (seats, leaves, renewals).
//! - [`metrics`]: the transport's Prometheus metrics and the registry `/metrics` renders.
//! - [`hub`]: one bus subscription per watched session, shared by its local sockets.
//! - [`pulse`]: the instance's WebSocket heartbeat (one timer for every
//!   socket) and the sockets' shutdown call.
//! - [`state`]: [`AppState`], settings, lifecycle (ready flag, shutdown
//!   broadcast, tracked tasks), and the command path both transports share.
//! - [`middleware`]: request ids, request logging and HTTP metrics.
//! - [`rest`]: the REST endpoints.
//! - [`webhooks`]: `/v1/webhooks`, the admin's webhook endpoints and their
//!   delivery logs.
//! - [`ws`]: the WebSocket endpoint, in five parts: [`ws::admission`] (the
//!   handshake and its refusals), [`ws::connection`] (one socket's task: its
//!   loop and commands), [`ws::guards`] (slot, version gate, rate window),
//!   [`ws::upgrade`] (the HTTP/1 server's upgrade service, which hands the
//!   TCP stream to the socket's task), [`ws::socket`] (the WebSocket over
//!   that stream).
//! - [`openapi`]: the OpenAPI document generated from the handlers.
//! - [`web`]: the demo page (`/`), the admin view (`/admin`) and the browser
//!   SDK (`/sdk/kairos.js`).

pub mod auth;
pub mod command;
pub mod dto;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod places;
pub mod presence;
pub mod pulse;
pub mod rest;
pub mod schemas;
pub mod state;
pub mod web;
pub mod webhooks;
pub mod wire;
pub mod ws;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer};

pub use error::{ApiError, Code};
pub use metrics::Metrics;
pub use state::{
    AppState, AuditHealthFn, AuthMode, HttpSettings, Lifecycle, Service, UrlCheckFn, WebhookAdmin,
};

/// Registers every route of the public API on `cfg`.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    // The hot path first: every pattern tried before it costs a regex run.
    rest::configure_switch(cfg);
    // Before the REST routes: `/v1/sessions/{id}/{command}` would match it too.
    cfg.service(error::get_only("/ws", ws::ws_query))
        .service(error::get_only("/v1/sessions/{id}/ws", ws::ws_path));
    rest::configure(cfg);
    webhooks::configure(cfg);
    openapi::configure(cfg);
    web::configure(cfg);
}

/// Builds the main HTTP server on `listener` (not yet running). The caller
/// awaits the returned server and stops it through its handle.
///
/// `on_worker_start` runs on each worker thread before it serves anything
/// (the server uses it to give each worker its own Redis connection).
///
/// The actix-web application runs on actix-http's HTTP/1 service, built here
/// rather than by `HttpServer` for one reason: the upgrade service
/// ([`ws::upgrade`]), which takes a WebSocket's TCP stream away from the
/// HTTP/1 dispatcher once its 101 is written. The settings are
/// `HttpServer`'s defaults (keep-alive and request timeout 5 s, disconnect
/// timeout 1 s, the graceful-shutdown signal that ends idle keep-alive
/// connections on stop), plus `TCP_NODELAY` on every accepted connection.
pub fn serve(
    listener: TcpListener,
    state: actix_web::web::Data<AppState>,
    workers: Option<usize>,
    on_worker_start: fn(),
) -> std::io::Result<actix_web::dev::Server> {
    use actix_service::{
        IntoServiceFactory as _, ServiceFactory as _, fn_factory, fn_service, map_config,
    };
    use actix_web::dev::AppConfig;

    let addr = listener.local_addr()?;
    // The drain happens before the server is stopped (SHUTDOWN_DRAIN_SECONDS),
    // so the server's own grace period only has to cover in-flight requests.
    let mut builder = actix_server::Server::build()
        .shutdown_timeout(5)
        .disable_signals();
    if let Some(n) = workers {
        builder = builder.workers(n);
    }
    let stopping = builder.graceful_shutdown_signal();
    Ok(builder
        .listen("kairos-http", listener, move || {
            on_worker_start();
            let stopping = stopping.clone();
            let upgrade_state = state.clone();
            let upgrade = fn_factory(move || {
                let factory = app(upgrade_state.clone()).into_factory();
                async move {
                    let app = std::rc::Rc::new(factory.new_service(AppConfig::default()).await?);
                    Ok::<_, ()>(fn_service(move |(req, framed)| {
                        ws::upgrade::serve_upgrade(app.clone(), req, framed)
                    }))
                }
            });
            actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::Timeout(Duration::from_secs(5)))
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                // Frames and responses are small and written as they are
                // ready: with Nagle's algorithm a frame written while the
                // previous one is unacknowledged waits for the client's
                // delayed ACK (40 ms on Linux), such as a timeout's `EVENT`
                // right after its `STATE_UPDATE`.
                .tcp_nodelay(true)
                .local_addr(addr)
                .upgrade(upgrade)
                .finish(map_config(app(state.clone()), |()| AppConfig::default()))
                .tcp()
        })?
        .run())
}

/// The application: every route, the CORS policy and the request
/// middleware, over `state`.
fn app(
    state: actix_web::web::Data<AppState>,
) -> App<
    impl actix_service::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state.clone())
        .wrap(cors(state.settings.allowed_origins.as_deref()))
        .wrap(actix_web::middleware::from_fn(middleware::observe))
        .configure(configure)
        .default_service(actix_web::web::to(rest::not_found))
}

/// CORS for REST: only the configured origins, with the headers clients
/// need to read (rate limits, `Location`, request ids). Without
/// `ALLOWED_ORIGINS` no cross-origin request is allowed (the demo page and
/// SDK are served from the same origin).
fn cors(allowed: Option<&[String]>) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
        ])
        .expose_headers([
            "location",
            "x-request-id",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
        ])
        .max_age(600);
    for origin in allowed.unwrap_or_default() {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// Builds the metrics-only server for `METRICS_PORT`.
pub fn serve_metrics(
    listener: TcpListener,
    state: actix_web::web::Data<AppState>,
) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", actix_web::web::get().to(rest::metrics))
    })
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
