//! `GET /v1/poll`: credentials, topics, cursor, `wait` and `limit`; the
//! answer comes from `session::poll`, rendered here.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::json;

use super::error::ApiError;
use super::{SubscribeQuery, check_protocol};
use crate::node::Node;
use crate::session::poll::{self, Answer, PollError};

/// `GET /v1/poll?topic=...&since=...&wait=...&limit=...`
pub async fn poll(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    check_protocol(req.query_string())?;
    if node.gate.is_draining() {
        return Err(ApiError::Draining {
            retry_after_secs: 1,
        });
    }
    let query = SubscribeQuery::parse(&req, &node, true).await?;
    let answer = poll::answer(
        &node.env,
        &node.gate,
        poll::Request {
            principal: &query.principal,
            topics: &query.topics,
            since: &query.since,
            wait_secs: query.wait_secs,
            limit: query.limit,
        },
    )
    .await
    .map_err(|e| match e {
        PollError::Store(e) => ApiError::from(e),
        PollError::Refused(refused) => ApiError::from(refused),
    })?;
    Ok(respond(answer))
}

/// The answer as JSON: `{"events":[...],"resets":[...],"cursor":"...","more":false}`.
fn respond(answer: Answer) -> HttpResponse {
    crate::telemetry::metrics::delivered("poll", answer.events.len() as u64);
    crate::telemetry::metrics::resets_sent("poll", answer.resets.len() as u64);
    let mut body = Vec::with_capacity(64 + answer.events.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, event) in answer.events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    let resets: Vec<serde_json::Value> = answer
        .resets
        .iter()
        .map(|(topic, from)| json!({"topic": topic, "from": from}))
        .collect();
    let tail = json!({"resets": resets, "cursor": answer.cursor.to_string(), "more": answer.more});
    body.extend_from_slice(b"],");
    let tail = tail.to_string();
    body.extend_from_slice(&tail.as_bytes()[1..]);
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}
