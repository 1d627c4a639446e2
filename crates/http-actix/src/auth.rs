//! Who is calling: turns a request into a domain [`Actor`].
//!
//! With `AUTH_MODE=off` every caller is the anonymous admin (contract
//! section 6); token verification arrives with the security work.

use actix_web::HttpRequest;
use kairos_domain::Actor;

use crate::error::ApiError;
use crate::state::{AppState, AuthMode};

/// The caller of `req`.
pub fn authenticate(_req: &HttpRequest, state: &AppState) -> Result<Actor, ApiError> {
    match state.settings.auth {
        AuthMode::Off => Ok(Actor::anonymous_admin()),
    }
}
