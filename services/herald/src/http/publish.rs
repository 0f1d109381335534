//! `POST /v1/publish`: credentials and whether the token may publish at
//! all (both before the body is read), then size, then shape and topic,
//! then permission per topic; `201` once durably stored.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tracing::Instrument as _;

use super::Bearer;
use super::error::ApiError;
use crate::auth::AuthError;
use crate::node::Node;

pub async fn publish(
    Bearer(principal): Bearer,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let span = crate::telemetry::trace::publish_span(req.headers());
    let published = async {
        // Refused before the body is read: a caller that may publish nowhere
        // gets its answer without sending (or holding back) a body.
        if principal.publish.is_empty() {
            return Err(ApiError::from(AuthError::Forbidden(
                "the token may not publish to any topic (its herald.publish is empty)".into(),
            )));
        }
        let body = read_body(&req, payload, state.settings.max_body_bytes).await?;
        check_content_type(&req)?;
        let published: Result<_, ApiError> = Ok(crate::publish::publish(
            &principal,
            &body,
            state.settings.limits,
            &state.committer,
            &state.hubs,
        )
        .await?);
        published
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

#[cfg(test)]
mod tests {
    use crate::http::error::ApiError;
    use crate::publish::{Limits, parse};

    const LIMITS: Limits = Limits {
        max_data_bytes: 64 * 1024,
        max_batch_events: 1000,
    };

    fn code(body: &str) -> &'static str {
        parse(body.as_bytes(), LIMITS)
            .err()
            .map(|e| ApiError::from(e).code())
            .unwrap_or("ok")
    }

    #[test]
    fn bodies_are_checked_size_first_then_shape() {
        assert_eq!(code(r#"{"topic":"a","data":null}"#), "ok");
        assert_eq!(code(r#"{"topic":"a","data":1"#), "invalid_json");
        assert_eq!(code("[]"), "invalid_event");
        assert_eq!(code(r#"{"topic":"a"}"#), "invalid_event");
        assert_eq!(code(r#"{"topic":"a b","data":1}"#), "invalid_topic");
        assert_eq!(code(r#"{"topic":7,"data":1}"#), "invalid_event");
        assert_eq!(code(r#"{"topic":"a","data":1,"id":""}"#), "invalid_event");
        assert_eq!(code(r#"{"topic":"a","data":1,"id":7}"#), "invalid_event");
        assert_eq!(
            code(r#"{"topic":"a","data":1,"type":"a\u0000"}"#),
            "invalid_event"
        );
        assert_eq!(code("42"), "invalid_event");
        let big = format!(
            r#"[{{"topic":"a b"}},{{"topic":"a","data":"{}"}}]"#,
            "x".repeat(70_000)
        );
        assert_eq!(code(&big), "payload_too_large");
        let many = format!("[{}]", vec![r#"{"topic":"a","data":1}"#; 1001].join(","));
        assert_eq!(code(&many), "payload_too_large");
    }
}
