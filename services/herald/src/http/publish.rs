//! `POST /v1/publish`: credentials, then size, then shape and topic, then
//! permission; `201` once durably stored.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tracing::Instrument as _;

use super::error::ApiError;
use super::{AppState, Bearer};

pub async fn publish(
    Bearer(principal): Bearer,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let span = crate::telemetry::trace::publish_span(req.headers());
    let published = async {
        let body = read_body(&req, payload, state.max_body_bytes).await?;
        check_content_type(&req)?;
        crate::publish::publish(&principal, &body, state.limits, &state.committer).await
    }
    .instrument(span.clone())
    .await;
    crate::telemetry::metrics::publish_answered(started.elapsed());
    span.record(
        "status",
        published.as_ref().map_or_else(|e| e.code(), |_| "ok"),
    );
    let published = published?;
    let mut response = if published.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(if published.batch {
        response.json(&published.receipts)
    } else {
        response.json(&published.receipts[0])
    })
}

/// Reads the body, refusing it as soon as it passes `max_bytes`.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max_bytes: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("the body is over {max_bytes} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(max_bytes));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidJson(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// JSON bodies only; a missing Content-Type is taken as JSON.
pub(super) fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "send the body as application/json, not {essence:?}"
        )))
    }
}
