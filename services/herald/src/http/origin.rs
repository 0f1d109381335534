//! CORS and the `Origin` check for the subscriber-facing endpoints (the
//! rule itself is `auth::OriginPolicy`). CORS does not cover WebSocket
//! upgrades, so the same check runs before an upgrade: a page on another
//! site cannot open a socket that rides on the user's session cookie.
//!
//! Herald serves plain HTTP; behind a proxy that terminates TLS, the scheme
//! the page's browser used is the proxy's `X-Forwarded-Proto`. A page cannot
//! forge that header: browsers send no custom header with a WebSocket or
//! `EventSource`, and a `fetch` carrying one needs a preflight, which this
//! check refuses first (and CORS never allows that header).

use std::sync::Arc;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{RequestHead, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web;

use super::error::ApiError;
use crate::auth::OriginPolicy;
use crate::node::Node;

/// How long a browser may cache a preflight answer, in seconds.
pub const PREFLIGHT_MAX_AGE_SECS: usize = 600;

/// Whether the page behind `origin` may use this request's endpoint.
fn allows(policy: &OriginPolicy, origin: &header::HeaderValue, head: &RequestHead) -> bool {
    let host = head
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .is_ok_and(|origin| policy.allows(origin, host, served_scheme(head)))
}

/// The scheme the client reached this server by: the first entry of
/// `X-Forwarded-Proto` when it is `http` or `https` (a TLS-terminating
/// proxy in front, the client's hop first), else `http`, which is all
/// Herald itself serves.
fn served_scheme(head: &RequestHead) -> &'static str {
    let forwarded = head
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    match forwarded {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// Refuses a request whose `Origin` is not allowed with `403
/// origin_not_allowed`, before anything else (CORS, credentials, an
/// upgrade) runs; answers an allowed preflight `204` rather than `200`.
pub async fn enforce(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let state = req
            .app_data::<web::Data<Node>>()
            .expect("the application always registers its state");
        if !allows(&state.settings.origins, origin, req.head()) {
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return Err(ApiError::OriginNotAllowed(format!(
                "pages on {shown:?} may not use this endpoint; list the origin in HERALD_ALLOWED_ORIGINS"
            ))
            .into());
        }
    }
    let preflight = req.method() == Method::OPTIONS;
    let mut response = next.call(req).await?;
    if preflight && response.status() == StatusCode::OK {
        *response.response_mut().status_mut() = StatusCode::NO_CONTENT;
    }
    Ok(response)
}

/// CORS for the endpoints pages call with `fetch` or `EventSource`: the
/// allowed origins get their origin echoed, credentials, the methods and
/// headers the API uses, and a cached preflight. Runs inside [`enforce`],
/// so a page on another origin never reaches it and gets no CORS header.
pub fn cors(policy: Arc<OriginPolicy>) -> Cors {
    Cors::default()
        .allowed_origin_fn(move |origin, head| allows(&policy, origin, head))
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .supports_credentials()
        .max_age(PREFLIGHT_MAX_AGE_SECS)
        .block_on_origin_mismatch(false)
}
