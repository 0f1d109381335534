//! Acknowledgments over HTTP: `POST /v1/ack` (a subscriber acknowledges,
//! with the credentials of SSE and polling), `GET /v1/acks` (receipts for
//! a topic's publishers) and `DELETE /v1/admin/acks` (forget a subscriber).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::Bearer;
use super::error::ApiError;
use super::publish::{check_content_type, read_body};
use crate::ack::AckError;
use crate::auth::AuthError;
use crate::node::Node;
use crate::store::acks::MAX_RECEIPTS;
use crate::topic::Topic;

impl From<AckError> for ApiError {
    fn from(error: AckError) -> ApiError {
        match error {
            AckError::InvalidCursor(m) | AckError::BeyondHead(m) => ApiError::InvalidCursor(m),
            e @ AckError::Forbidden(_) => AuthError::Forbidden(e.to_string()).into(),
            AckError::Store(e) => ApiError::Store(std::sync::Arc::new(e)),
            e @ (AckError::Full | AckError::NotWritten) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// `{"cursor":"orders.42:17,user.7:3"}`
#[derive(Deserialize)]
struct AckBody {
    cursor: String,
}

/// `POST /v1/ack`: answers once the acknowledgment is in the store.
pub async fn ack(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let principal = super::subscriber_credential(&req, &state)
        .await?
        .ok_or(AuthError::Missing)?;
    let body = read_body(&req, payload, state.env.settings.max_frame_bytes).await?;
    check_content_type(&req)?;
    let body: AckBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::InvalidJson(format!("the body is {{\"cursor\":\"topic:seq,...\"}}: {e}"))
    })?;
    let acked = state
        .env
        .acks
        .ack_and_wait(&principal, &body.cursor)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"acked": acked.to_string()})))
}

/// The query of `GET /v1/acks`.
struct ReceiptQuery {
    topic: Topic,
    sub: Option<String>,
    after: Option<String>,
    limit: usize,
}

fn parse_receipt_query(query: &str) -> Result<ReceiptQuery, ApiError> {
    let mut topic = None;
    let mut sub = None;
    let mut after = None;
    let mut limit = MAX_RECEIPTS;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => {
                topic =
                    Some(Topic::parse(&value).map_err(|e| ApiError::InvalidTopic(e.to_string()))?)
            }
            "sub" if !value.is_empty() => sub = Some(value.into_owned()),
            "after" if !value.is_empty() => after = Some(value.into_owned()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_RECEIPTS).contains(l))
                    .ok_or_else(|| {
                        ApiError::InvalidParameter(format!("limit is from 1 to {MAX_RECEIPTS}"))
                    })?
            }
            _ => {}
        }
    }
    let topic = topic.ok_or_else(|| ApiError::InvalidTopic("name the topic: ?topic=...".into()))?;
    Ok(ReceiptQuery {
        topic,
        sub,
        after,
        limit,
    })
}

/// `GET /v1/acks?topic=T[&sub=U][&after=U][&limit=N]`: each subscriber's
/// acknowledged seq of `T`, when it rose, and how many events it has not
/// acknowledged; for a token that may publish on `T`, or an admin.
pub async fn receipts(
    Bearer(principal): Bearer,
    req: HttpRequest,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let query = parse_receipt_query(req.query_string())?;
    if !principal.admin && !principal.may_publish(&query.topic) {
        return Err(AuthError::Forbidden(format!(
            "receipts of {} need a token that may publish on it, or an admin token",
            query.topic
        ))
        .into());
    }
    let store = &state.store;
    let to_api = |e| ApiError::Store(std::sync::Arc::new(e));
    let head = store
        .heads(std::slice::from_ref(&query.topic))
        .await
        .map_err(to_api)?
        .first()
        .copied()
        .unwrap_or(0);
    let rows = store
        .acks_by_topic(
            &query.topic,
            query.sub.as_deref(),
            query.after.as_deref(),
            query.limit,
        )
        .await
        .map_err(to_api)?;
    let next = (rows.len() == query.limit)
        .then(|| rows.last().map(|r| r.sub.clone()))
        .flatten();
    let acks: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "sub": row.sub,
                "seq": row.seq,
                "acked_at": crate::event::format_time_ms(row.acked_at_ms),
                "pending": head.saturating_sub(row.seq),
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({"topic": query.topic, "head": head, "acks": acks, "next": next})))
}

/// The query of `DELETE /v1/admin/acks`.
#[derive(Deserialize)]
pub struct DeleteQuery {
    sub: String,
}

/// `DELETE /v1/admin/acks?sub=U` (admin token): deletes every
/// acknowledgment of subscriber `U`, and this node's pending ones.
pub async fn delete(
    Bearer(principal): Bearer,
    query: web::Query<DeleteQuery>,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    if !principal.admin {
        return Err(
            AuthError::Forbidden("deleting acknowledgments needs an admin token".into()).into(),
        );
    }
    if query.sub.is_empty() {
        return Err(ApiError::InvalidParameter(
            "sub must be a non-empty string".into(),
        ));
    }
    state.env.acks.forget(&query.sub);
    let deleted = state
        .store
        .delete_acks(&query.sub)
        .await
        .map_err(|e| ApiError::Store(std::sync::Arc::new(e)))?;
    Ok(HttpResponse::Ok().json(json!({"sub": query.sub, "deleted": deleted})))
}
