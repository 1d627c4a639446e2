//! The OpenAPI 3 document, generated from the handlers' annotations and the
//! wire types (never written by hand), served at `/openapi.json` and
//! rendered at `/docs` by a vendored Swagger UI (works offline).

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::get_only;
use crate::webhooks::{
    DeliveriesEnvelope, WebhookCreateDoc, WebhookEnvelope, WebhooksEnvelope, WireDelivery,
    WireWebhook,
};

use crate::dto::{WireEvent, WireGroup, WireLagCompensation, WireParticipant, WireStage, WireView};
use crate::schemas::{
    AddTimeBodyDoc, AdminSessionsEnvelope, AdminSessionsPage, CommandBodyDoc, DelayModeDoc,
    ErrorBody, ErrorDoc, EventsEnvelope, GroupConfigDoc, HealthBody, JoinBodyDoc,
    LagCompensationDoc, ParticipantConfigDoc, ReadyBody, SessionConfigDoc, StageDoc, SwitchBodyDoc,
    SyncModeDoc, TimeBody, ViewEnvelope,
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
        crate::rest::add_time,
        crate::rest::join_participant,
        crate::rest::leave_participant,
        crate::rest::delete_session,
        crate::rest::session_events,
        crate::rest::admin_sessions,
        crate::rest::session_presence,
        crate::rest::time,
        crate::rest::health,
        crate::rest::ready,
        crate::webhooks::create_webhook,
        crate::webhooks::list_webhooks,
        crate::webhooks::get_webhook,
        crate::webhooks::delete_webhook,
        crate::webhooks::webhook_deliveries,
    ),
    components(schemas(
        ViewEnvelope, EventsEnvelope, ErrorBody, ErrorDoc, SessionConfigDoc, ParticipantConfigDoc,
        GroupConfigDoc, SyncModeDoc, CommandBodyDoc, SwitchBodyDoc, TimeBody, HealthBody, ReadyBody, WireView,
        WireParticipant, WireGroup, WireEvent, StageDoc, DelayModeDoc, LagCompensationDoc, AddTimeBodyDoc,
        WireStage, WireLagCompensation, JoinBodyDoc, AdminSessionsEnvelope, AdminSessionsPage,
        WebhookCreateDoc, WireWebhook, WireDelivery, WebhookEnvelope, WebhooksEnvelope, DeliveriesEnvelope,
        crate::schemas::PresenceEnvelope, crate::dto::WirePresence, crate::dto::WirePresenceUser
    )),
    tags(
        (name = "sessions", description = "Create, read and drive sessions"),
        (name = "time", description = "Server time"),
        (name = "operations", description = "Health and readiness"),
        (name = "admin", description = "The operators' view of every session"),
        (name = "webhooks", description = "Signed webhooks to the app's backend (admin; docs/webhooks.md)"),
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
    cfg.service(get_only("/openapi.json", openapi_json))
        .service(get_only("/docs", to_docs))
        .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use super::*;
    use crate::command::CommandName;

    /// Generated clients get a method per command (contract section 3):
    /// one path per command, each with its own operation id and body
    /// schema, and no templated `{command}` path.
    #[test]
    fn every_command_has_its_own_path_operation_and_body() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(
            !paths.keys().any(|p| p.contains("{command}")),
            "{:?}",
            paths.keys().collect::<Vec<_>>()
        );
        let mut ids = HashSet::new();
        for name in CommandName::ALL {
            let path = format!("/v1/sessions/{{id}}/{}", name.as_str());
            let op = &paths.get(&path).unwrap_or_else(|| panic!("{path} missing"))["post"];
            let id = op["operationId"].as_str().unwrap();
            assert_eq!(id, name.operation_id());
            if name != CommandName::AddTime {
                assert_eq!(id, format!("{}Session", name.as_str()));
            }
            assert!(ids.insert(id.to_owned()), "{id} twice");

            let schema = op["requestBody"]["content"]["application/json"]["schema"].to_string();
            let body = if name.is_switch() {
                "SwitchBodyDoc"
            } else if name == CommandName::AddTime {
                "AddTimeBodyDoc"
            } else {
                "CommandBodyDoc"
            };
            assert!(
                schema.contains(&format!("#/components/schemas/{body}")),
                "{path}: {schema}"
            );

            let responses = op["responses"].as_object().unwrap();
            let statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
            assert_eq!(
                statuses,
                ["200", "400", "401", "403", "404", "409", "429", "503"],
                "{path}"
            );
            assert_eq!(
                responses["200"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ViewEnvelope"
            );
            assert_eq!(
                responses["409"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody"
            );
        }
        let schemas = &doc["components"]["schemas"];
        let switch = schemas["SwitchBodyDoc"]["properties"].as_object().unwrap();
        assert!(
            switch.contains_key("next_participant_id") && switch.contains_key("expected_version")
        );
        assert!(switch.contains_key("lag_ms"));
        let other = schemas["CommandBodyDoc"]["properties"].as_object().unwrap();
        assert_eq!(other.keys().collect::<Vec<_>>(), ["expected_version"]);
        let add = &schemas["AddTimeBodyDoc"];
        assert_eq!(add["required"], serde_json::json!(["ms"]));
        assert_eq!(add["properties"]["ms"]["maximum"], 3_600_000);
        assert_eq!(add["properties"]["reason"]["maxLength"], 200);
        let config = schemas["SessionConfigDoc"]["properties"]
            .as_object()
            .unwrap();
        for field in [
            "stages",
            "delay_ms",
            "delay_mode",
            "lag_compensation",
            "warnings_ms",
            "start_at_ms",
            "auto_pause_on_disconnect_ms",
        ] {
            assert!(config.contains_key(field), "config {field}");
        }
        let view = schemas["WireView"]["properties"].as_object().unwrap();
        for field in [
            "stages",
            "delay_ms",
            "delay_mode",
            "lag_compensation",
            "warnings_ms",
            "start_at_ms",
            "auto_pause_on_disconnect_ms",
        ] {
            assert!(view.contains_key(field), "view {field}");
        }
        let p = schemas["WireParticipant"]["properties"]
            .as_object()
            .unwrap();
        for field in [
            "stage_index",
            "moves_to_next_stage",
            "delay_remaining_ms",
            "lag_quota_ms",
        ] {
            assert!(p.contains_key(field), "participant {field}");
        }
        let g = schemas["WireGroup"]["properties"].as_object().unwrap();
        for field in ["stage_index", "moves_to_next_stage", "delay_remaining_ms"] {
            assert!(g.contains_key(field), "group {field}");
        }
    }

    /// Joining and leaving (contract section 9) are operations of their
    /// own, with the participant object as the join's body.
    #[test]
    fn participants_join_and_leave_have_their_own_operations() {
        let doc = serde_json::to_value(document()).unwrap();
        let join = &doc["paths"]["/v1/sessions/{id}/participants"]["post"];
        assert_eq!(join["operationId"], "addParticipant");
        assert_eq!(
            join["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/JoinBodyDoc"
        );
        assert_eq!(join["requestBody"]["required"], true);
        let leave = &doc["paths"]["/v1/sessions/{id}/participants/{participant_id}"]["delete"];
        assert_eq!(leave["operationId"], "removeParticipant");
        for op in [join, leave] {
            let statuses: Vec<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                statuses,
                ["200", "400", "401", "403", "404", "409", "429", "503"]
            );
            assert_eq!(
                op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ViewEnvelope"
            );
        }
        assert!(
            join["responses"]["409"]["description"]
                .as_str()
                .unwrap()
                .contains("PARTICIPANT_EXISTS")
        );
        let body = &doc["components"]["schemas"]["JoinBodyDoc"];
        assert_eq!(body["required"], serde_json::json!(["participant_id"]));
        let fields: Vec<&String> = body["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            [
                "expected_version",
                "group_id",
                "participant_id",
                "participant_index",
                "total_time_ms"
            ]
        );
    }

    /// The shared error rows reach every authenticated endpoint.
    #[test]
    fn access_errors_are_listed_on_every_session_endpoint() {
        let doc = serde_json::to_value(document()).unwrap();
        for (path, method) in [
            ("/v1/sessions", "post"),
            ("/v1/sessions/{id}", "get"),
            ("/v1/sessions/{id}", "delete"),
            ("/v1/sessions/{id}/events", "get"),
            ("/v1/sessions/{id}/participants", "post"),
            ("/v1/sessions/{id}/participants/{participant_id}", "delete"),
            ("/v1/admin/sessions", "get"),
        ] {
            let responses = doc["paths"][path][method]["responses"].as_object().unwrap();
            for status in ["401", "403", "429", "503"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
    }
}
