//! HTTP routes: publish, health, and the shared state and extractors the
//! handlers use. Handlers are short: extract, call the core, map the result.

pub mod error;
mod health;
mod publish;

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};

use crate::auth::{AuthError, Principal, Verifier};
use crate::bus::Bus;
use crate::store::{Committer, Store};
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    pub limits: crate::publish::Limits,
    pub max_body_bytes: usize,
}

/// The caller, authenticated by its bearer token.
pub struct Bearer(pub Principal);

impl FromRequest for Bearer {
    type Error = ApiError;
    type Future = Ready<Result<Bearer, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Bearer, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("the application always registers its state");
    let token = crate::auth::bearer(req).ok_or(AuthError::Missing)?;
    let principal = state.verifier.verify(token).map_err(AuthError::from)?;
    Ok(Bearer(principal))
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/v1/publish", web::post().to(publish::publish));
}

/// Answers unknown routes with a problem document.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Turns query-string errors into problem documents.
pub fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(err.to_string()).into()
}
