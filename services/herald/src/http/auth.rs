//! `POST /v1/tickets` (a single-use credential for URLs) and
//! `POST /v1/admin/revoke` (revoke a subject's tokens, or one token).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::error::ApiError;
use super::publish::{check_content_type, read_body};
use super::{Admin, Bearer};
use crate::auth::{RevocationKind, TooManyTickets};
use crate::node::Node;

/// Longest revoke request body, in bytes: `{"jti":"..."}` is small.
const MAX_REVOKE_BODY_BYTES: usize = 16 * 1024;

/// `POST /v1/tickets`: a ticket for the caller's token.
pub async fn ticket(
    Bearer(principal): Bearer,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let minted = state.tickets.mint(&principal.sub).map_err(|e| {
        crate::telemetry::tickets::refused(&e);
        match e {
            TooManyTickets::Node(_) => ApiError::Unavailable(e.to_string()),
            TooManyTickets::Subject {
                retry_after_secs, ..
            } => ApiError::RateLimited {
                detail: e.to_string(),
                retry_after_secs,
            },
        }
    })?;
    let ttl = state.tickets.ttl();
    let expires_at_ms =
        crate::event::now_ms() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    state
        .store
        .put_ticket(
            &minted.key,
            &crate::auth::tickets::encode_grant(&principal),
            expires_at_ms,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "storing a ticket failed");
            ApiError::Unavailable("the store is unavailable; retry shortly".into())
        })?;
    let ticket = minted.ticket;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"ticket": ticket, "expires_in": ttl.as_secs()})))
}

/// `POST /v1/admin/revoke` with `{"sub":"..."}` or `{"jti":"..."}`.
pub async fn revoke(
    _: Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, MAX_REVOKE_BODY_BYTES).await?;
    check_content_type(&req)?;
    let (kind, value) = parse_revoke(&body)?;
    let at = state.revoke(kind, value.clone()).await?;
    Ok(HttpResponse::Ok().json(json!({"revoked": {kind.as_str(): value}, "at": at})))
}

/// The one of `sub` or `jti` a revoke body names.
fn parse_revoke(body: &[u8]) -> Result<(RevocationKind, String), ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not JSON: {e}")))?;
    let exactly_one = || {
        ApiError::InvalidParameter(
            "send exactly one of {\"sub\":\"...\"} or {\"jti\":\"...\"}".into(),
        )
    };
    let Value::Object(fields) = body else {
        return Err(exactly_one());
    };
    let mut fields = fields.into_iter();
    let (Some((key, value)), None) = (fields.next(), fields.next()) else {
        return Err(exactly_one());
    };
    let kind = key.parse::<RevocationKind>().map_err(|_| exactly_one())?;
    match value {
        Value::String(value) if !value.is_empty() => Ok((kind, value)),
        _ => Err(ApiError::InvalidParameter(format!(
            "{kind} must be a non-empty string"
        ))),
    }
}
