//! `GET /v1/ws`: admission, credentials (or none: the first frame may carry
//! them), the upgrade; the session does the rest (`session::ws`).

use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::subscriber_credential;
use crate::node::Node;

pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let admission = node.gate.enter()?;
    let principal = subscriber_credential(&req, &node).await?;
    let (response, ws, messages) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::InvalidParameter(format!("not a WebSocket upgrade: {e}")))?;
    crate::session::ws::start(ws, messages, principal, node.env.clone(), admission);
    Ok(response)
}
