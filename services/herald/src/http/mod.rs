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

use actix_web::{HttpRequest, HttpResponse, Resource, Route, web};

use crate::auth::OriginPolicy;
use error::ApiError;
pub use extract::{
    Admin, Bearer, DEFAULT_POLL_LIMIT, MAX_POLL_LIMIT, MAX_WAIT_SECS, SubscribeParams,
    SubscribeQuery, check_protocol, subscriber_credential,
};

/// Registers every route. The endpoints that act for a subscriber check the
/// page's `Origin` first; those that pages reach with `fetch` or
/// `EventSource` answer CORS for the allowed origins. A method a path does
/// not serve is `405` with `Allow`.
pub fn routes(origins: Arc<OriginPolicy>) -> impl Fn(&mut web::ServiceConfig) {
    move |cfg| {
        let browser = |path: &str, allow: &'static str, route: Route| {
            only(path, allow, route)
                .wrap(origin::cors(origins.clone()))
                .wrap(actix_web::middleware::from_fn(origin::enforce))
        };
        cfg.service(only("/healthz", "GET", web::get().to(health::healthz)))
            .service(only("/readyz", "GET", web::get().to(health::readyz)))
            .service(only("/metrics", "GET", web::get().to(metrics::metrics)))
            .service(only(
                "/openapi.json",
                "GET",
                web::get().to(openapi::openapi),
            ))
            .service(only("/v1/admin/stats", "GET", web::get().to(admin::stats)))
            .service(only(
                "/v1/dev/token",
                "GET",
                web::get().to(console::dev_token),
            ))
            .service(only(
                "/v1/publish",
                "POST",
                web::post().to(publish::publish),
            ))
            .service(browser("/v1/tickets", "POST", web::post().to(auth::ticket)))
            .service(only(
                "/v1/admin/revoke",
                "POST",
                web::post().to(auth::revoke),
            ))
            .service(browser("/v1/ack", "POST", web::post().to(ack::ack)))
            .service(only("/v1/acks", "GET", web::get().to(ack::receipts)))
            .service(only(
                "/v1/admin/acks",
                "DELETE",
                web::delete().to(ack::delete),
            ))
            .service(
                only("/v1/ws", "GET", web::get().to(ws::ws))
                    .wrap(actix_web::middleware::from_fn(origin::enforce)),
            )
            .service(browser("/v1/sse", "GET", web::get().to(sse::sse)))
            .service(browser("/v1/poll", "GET", web::get().to(poll::poll)))
            .configure(devices::routes(origins.clone()))
            .configure(assets::routes);
    }
}

/// The resource at `path`, served by `route` (method `allow`); any other
/// method is answered `405` with `Allow: {allow}`.
pub(crate) fn only(path: &str, allow: &'static str, route: Route) -> Resource {
    web::resource(path)
        .route(route)
        .default_service(other_methods(allow))
}

/// The default service of a resource whose routes serve the methods
/// `allow` (`GET` or `GET, POST`): `405` with `Allow: {allow}`.
pub(crate) fn other_methods(allow: &'static str) -> Route {
    web::to(move |req: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
            allow,
            detail: format!("{} serves {allow}, not {}", req.path(), req.method()),
        })
    })
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
