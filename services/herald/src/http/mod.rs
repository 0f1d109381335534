//! HTTP routes: publish, subscribe (WebSocket, SSE, polling), tickets,
//! revocation, push devices, health, metrics, node statistics, the embedded client and
//! console. Handlers are short: extract, call the core, map the result;
//! they take the [`Node`](crate::node::Node), and nothing below this module
//! knows about HTTP.

mod ack;
mod admin;
mod assets;
mod auth;
pub mod console;
mod devices;
pub mod error;
pub mod extract;
pub mod front;
mod health;
mod metrics;
mod openapi;
pub mod origin;
mod poll;
mod publish;
mod sse;
mod ws;

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::OriginPolicy;
use error::ApiError;
pub use extract::{
    Admin, Bearer, DEFAULT_POLL_LIMIT, MAX_POLL_LIMIT, MAX_WAIT_SECS, SubscribeParams,
    SubscribeQuery, subscriber_credential,
};

/// Registers every route. The endpoints that act for a subscriber check the
/// page's `Origin` first; those that pages reach with `fetch` or
/// `EventSource` answer CORS for the allowed origins.
pub fn routes(origins: Arc<OriginPolicy>) -> impl Fn(&mut web::ServiceConfig) {
    move |cfg| {
        let browser = |path: &str, route: actix_web::Route| {
            web::resource(path)
                .route(route)
                .wrap(origin::cors(origins.clone()))
                .wrap(actix_web::middleware::from_fn(origin::enforce))
        };
        cfg.route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(metrics::metrics))
            .route("/openapi.json", web::get().to(openapi::openapi))
            .route("/v1/admin/stats", web::get().to(admin::stats))
            .route("/v1/dev/token", web::get().to(console::dev_token))
            .route("/v1/publish", web::post().to(publish::publish))
            .service(browser("/v1/tickets", web::post().to(auth::ticket)))
            .route("/v1/admin/revoke", web::post().to(auth::revoke))
            .service(browser("/v1/ack", web::post().to(ack::ack)))
            .route("/v1/acks", web::get().to(ack::receipts))
            .route("/v1/admin/acks", web::delete().to(ack::delete))
            .service(
                web::resource("/v1/ws")
                    .route(web::get().to(ws::ws))
                    .wrap(actix_web::middleware::from_fn(origin::enforce)),
            )
            .service(browser("/v1/sse", web::get().to(sse::sse)))
            .service(browser("/v1/poll", web::get().to(poll::poll)))
            .configure(devices::routes(origins.clone()))
            .configure(assets::routes);
    }
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
