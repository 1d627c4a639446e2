//! What the transport's tests share: the application state over the memory
//! adapters, and a two-player chess session in it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use adapter_memory::{MemoryBus, MemoryStore, SystemClock};
use http_actix::{AppState, HttpSettings};
use kairos_domain::{Actor, DynSessionService, SessionConfig, SessionId};

/// The application state on the memory store and bus, default settings
/// (no authentication: every caller is an admin).
pub(crate) fn state() -> web::Data<AppState> {
    let bus = Arc::new(MemoryBus::new());
    let service = DynSessionService::new(
        Arc::new(MemoryStore::new(Duration::from_secs(60))),
        bus.clone(),
        Arc::new(SystemClock::new()),
    );
    web::Data::new(AppState::new(service, bus, HttpSettings::default()))
}

/// Creates a pending chess session (`per_participant`, white and black,
/// 60 s each) in `state`.
pub(crate) async fn chess_session(state: &web::Data<AppState>) -> SessionId {
    let config = SessionConfig::parse(&test_support::chess(60_000, 0)).unwrap();
    let id = SessionId::from_uuid(uuid::Uuid::new_v4());
    state
        .service
        .create(&Actor::anonymous_admin(), config, id)
        .await
        .unwrap();
    id
}
