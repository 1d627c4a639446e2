//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! wire types (never written by hand), served at `/openapi.json` and
//! rendered at `/docs` by a vendored Swagger UI (works offline).

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::dto::{WireEvent, WireGroup, WireParticipant, WireView};
use crate::schemas::{
    CommandBodyDoc, ErrorBody, ErrorDoc, EventsEnvelope, GroupConfigDoc, HealthBody,
    ParticipantConfigDoc, ReadyBody, SessionConfigDoc, SwitchBodyDoc, SyncModeDoc, TimeBody,
    ViewEnvelope,
};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "SyncKairos",
        description = "Shared clocks for many clients: REST commands, WebSocket updates at `/ws?sessionId=` and `/v1/sessions/{id}/ws` (see docs/api.md)."
    ),
    paths(
        crate::rest::create_session,
        crate::rest::get_session,
        crate::rest::start_session,
        crate::rest::switch_session,
        crate::rest::pause_session,
        crate::rest::resume_session,
        crate::rest::complete_session,
        crate::rest::cancel_session,
        crate::rest::delete_session,
        crate::rest::session_events,
        crate::rest::time,
        crate::rest::health,
        crate::rest::ready,
    ),
    components(schemas(
        ViewEnvelope, EventsEnvelope, ErrorBody, ErrorDoc, SessionConfigDoc, ParticipantConfigDoc,
        GroupConfigDoc, SyncModeDoc, CommandBodyDoc, SwitchBodyDoc, TimeBody, HealthBody, ReadyBody, WireView,
        WireParticipant, WireGroup, WireEvent
    )),
    tags(
        (name = "sessions", description = "Create, read and drive sessions"),
        (name = "time", description = "Server time"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

async fn to_docs() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((actix_web::http::header::LOCATION, "/docs/"))
        .finish()
}

/// Registers `/openapi.json` and the `/docs` page (`/docs` redirects to
/// `/docs/`; `/` is the demo page, see [`crate::web`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(to_docs))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document()));
}
