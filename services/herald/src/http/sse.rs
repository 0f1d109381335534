//! `GET /v1/sse`: credentials, topics and cursor, admission (the
//! `Last-Event-ID` an `EventSource` sends wins over `since`); the session
//! streams the events (`session::sse`). A node that cannot take the stream
//! never answers `503`: see [`come_back_later`].

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::error::ApiError;
use super::{SubscribeQuery, check_protocol};
use crate::node::Node;
use crate::session::gate::Refused;
use crate::topic::Cursor;

/// `GET /v1/sse?topic=...&topic=...`
pub async fn sse(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    // A client that speaks another protocol gets a 400 (which stops an
    // EventSource), not a `drain` it would come back from.
    check_protocol(req.query_string())?;
    // A full node says so before a ticket is spent on it; the place itself
    // is taken once the credentials hold.
    if node.gate.is_draining() {
        return Ok(come_back_later("draining"));
    }
    if !node.gate.has_room() {
        return Ok(come_back_later("full"));
    }
    let query = match SubscribeQuery::parse(&req, &node, false).await {
        Ok(query) => query,
        // A ticket that could not be looked up: the store is away.
        Err(ApiError::Unavailable(_) | ApiError::Store(_)) => {
            return Ok(come_back_later("unavailable"));
        }
        Err(refused) => return Err(refused),
    };
    let admission = match node.gate.enter() {
        Ok(admission) => admission,
        Err(Refused::Draining) => return Ok(come_back_later("draining")),
        Err(Refused::Full(_) | Refused::TooManyWaiting(_)) => return Ok(come_back_later("full")),
    };
    let since = match req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
    {
        Some(last) => Cursor::parse(last)
            .map_err(|e| ApiError::InvalidCursor(format!("Last-Event-ID is not a cursor: {e}")))?,
        None => query.since.clone(),
    };
    let opened = crate::session::sse::open(
        query.principal,
        query.topics,
        since,
        node.env.clone(),
        admission,
    )
    .await;
    match opened {
        Some((stream, stall)) => {
            let mut response = stream_response().streaming(stream);
            // For the writer (`http::front::lean`): a stalled socket is the
            // client's, not the node's.
            response.extensions_mut().insert(stall);
            Ok(response)
        }
        None => Ok(come_back_later("unavailable")),
    }
}

/// The headers of every event stream.
fn stream_response() -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .insert_header((header::CONTENT_ENCODING, "identity"));
    response
}

/// The answer when this node cannot take the stream now (`reason`:
/// `draining`, `full`, `unavailable`): a `200` stream that only says
/// `retry:` and `event: drain`, then ends. A native `EventSource` gives up
/// for good on any status but `200`; this makes it reconnect by itself,
/// with the `Last-Event-ID` it holds, and the load balancer sends it to
/// another node.
fn come_back_later(reason: &'static str) -> HttpResponse {
    stream_response().body(format!(
        "retry: {}\n\nevent: drain\ndata: {}\n\n",
        crate::session::sse::retry_ms(),
        json!({ "reason": reason })
    ))
}
