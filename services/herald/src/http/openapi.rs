//! `GET /openapi.json`: the OpenAPI 3.1 description of every HTTP endpoint,
//! the repository's `docs/openapi.json` compiled in.

use actix_web::HttpResponse;
use actix_web::http::header;

/// The document, as kept in the repository.
pub const DOCUMENT: &str = include_str!("../../../../docs/openapi.json");

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(DOCUMENT)
}
