//! Push over HTTP: `POST /v1/devices` (register a device for the caller's
//! subject), `GET /v1/devices` (list them), `DELETE /v1/devices/{id}`
//! (delete one; an admin deletes anyone's), `DELETE /v1/admin/devices`
//! (every device of a subject), `GET /v1/push/vapid` (the VAPID public
//! key pages subscribe with) and `GET /push-sw.js` (the service worker
//! that shows Web Push notifications).
//!
//! The device endpoints take a subscriber's credentials (bearer, session
//! cookie, `ticket`, `access_token`), with the `Origin` check and CORS of
//! `/v1/poll` (and `DELETE` among the allowed methods).

use std::sync::Arc;

use actix_web::http::{Method, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::Admin;
use super::origin;
use super::publish::{check_content_type, read_body};
use crate::auth::{AuthError, OriginPolicy, Principal};
use crate::node::Node;
use crate::push::devices::DeviceError;
use crate::store::DeviceRecord;

/// Largest registration body, in bytes (a subscription and 64 topics).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The service worker, built into the binary.
const PUSH_SW_JS: &str = include_str!("../../static/push-sw.js");

impl From<DeviceError> for ApiError {
    fn from(error: DeviceError) -> ApiError {
        match error {
            DeviceError::Invalid(m) => ApiError::InvalidDevice(m),
            DeviceError::InvalidTopic(m) => ApiError::InvalidTopic(m),
            e @ DeviceError::TooManyTopics(_) => ApiError::TooManyTopics(e.to_string()),
            DeviceError::Forbidden(m) => AuthError::Forbidden(m).into(),
            e @ DeviceError::TooMany { .. } => ApiError::TooManyDevices(e.to_string()),
            e @ DeviceError::NotFound(_) => ApiError::NotFound(e.to_string()),
            DeviceError::Store(e) => ApiError::Store(Arc::new(e)),
        }
    }
}

/// Registers the push routes. Each path literal is followed by its methods
/// (the OpenAPI test reads them from here).
pub fn routes(origins: Arc<OriginPolicy>) -> impl Fn(&mut web::ServiceConfig) {
    move |cfg| {
        // Other methods are `405` with `Allow` (after the `Origin` check).
        let browser = |path: &str, allow: &'static str| {
            web::resource(path)
                .default_service(super::other_methods(allow))
                .wrap(origin::cors(origins.clone()).allowed_methods([Method::DELETE]))
                .wrap(actix_web::middleware::from_fn(origin::enforce))
        };
        cfg.service(
            browser("/v1/devices", "GET, POST")
                .route(web::post().to(register))
                .route(web::get().to(list)),
        )
        .service(browser("/v1/devices/{id}", "DELETE").route(web::delete().to(delete)))
        .service(super::only(
            "/v1/admin/devices",
            "DELETE",
            web::delete().to(delete_all),
        ))
        .service(browser("/v1/push/vapid", "GET").route(web::get().to(vapid)))
        .service(super::only(
            "/push-sw.js",
            "GET",
            web::get().to(service_worker),
        ));
    }
}

/// The caller, by the credentials of SSE and polling.
async fn caller(req: &HttpRequest, node: &Node) -> Result<Principal, ApiError> {
    Ok(super::subscriber_credential(req, node)
        .await?
        .ok_or(AuthError::Missing)?)
}

fn device_json(device: &DeviceRecord) -> serde_json::Value {
    json!({
        "id": device.id,
        "platform": device.platform,
        "topics": device.filters,
        "created_at": crate::event::format_time_ms(device.created_at_ms),
    })
}

/// `POST /v1/devices`: `201` with the new device, `200` when the caller had
/// registered this address already (its topics are replaced).
async fn register(
    req: HttpRequest,
    payload: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let principal = caller(&req, &node).await?;
    let body = read_body(&req, payload, MAX_BODY_BYTES).await?;
    check_content_type(&req)?;
    let checked = crate::push::devices::check(&body, &principal, &node.push)?;
    let (device, created) = node.push.register(&principal, checked).await?;
    let mut answer = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(answer
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(device_json(&device)))
}

/// `GET /v1/devices`: the caller's devices, oldest first (never their
/// addresses).
async fn list(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let principal = caller(&req, &node).await?;
    let devices = node.push.devices(&principal.sub).await?;
    let devices: Vec<_> = devices.iter().map(device_json).collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "devices": devices })))
}

/// `DELETE /v1/devices/{id}`: the caller's device (any subject's with an
/// admin token); `404` when there is none.
async fn delete(
    req: HttpRequest,
    id: web::Path<String>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let principal = caller(&req, &node).await?;
    let sub = node.push.delete(&principal, &id).await?;
    Ok(HttpResponse::Ok().json(json!({"deleted": id.as_str(), "sub": sub})))
}

/// The query of `DELETE /v1/admin/devices`.
#[derive(Deserialize)]
struct DeleteAllQuery {
    sub: String,
}

/// `DELETE /v1/admin/devices?sub=U` (admin token): every device of `U`.
async fn delete_all(
    _: Admin,
    query: web::Query<DeleteAllQuery>,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    if query.sub.is_empty() {
        return Err(ApiError::InvalidParameter(
            "sub must be a non-empty string".into(),
        ));
    }
    let deleted = node.push.delete_all(&query.sub).await?;
    Ok(HttpResponse::Ok().json(json!({"sub": query.sub, "deleted": deleted})))
}

/// `GET /v1/push/vapid`: `{"public_key": "..."}`, or `404` without Web Push.
async fn vapid(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let key = node.push.vapid_public_key().ok_or_else(|| {
        ApiError::NotFound("this server sends no Web Push (no VAPID key is configured)".into())
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(json!({ "public_key": key })))
}

/// `GET /push-sw.js`: the service worker.
async fn service_worker() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .content_type("text/javascript; charset=utf-8")
        .body(PUSH_SW_JS)
}
