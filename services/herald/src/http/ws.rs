//! `GET /v1/ws`: admission, credentials (or none: the first frame may carry
//! them), the upgrade; the session does the rest (`session::ws`). On the
//! front door's lean path the connection itself writes and reads frames
//! (`http::front::ws`); otherwise actix-ws does.

use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::front::ws::Upgrade;
use super::subscriber_credential;
use crate::node::Node;

pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let admission = node.gate.enter()?;
    let principal = subscriber_credential(&req, &node).await?;
    if let Some(upgrade) = Upgrade::of(&req) {
        // The front door's lean path: the connection takes the frames.
        let mut response = actix_http::ws::handshake(req.head()).map_err(not_an_upgrade)?;
        let (feed, messages) = Upgrade::input();
        let frames =
            crate::session::ws::start_lean(messages, principal, node.env.clone(), admission);
        upgrade.attach(frames, feed, node.env.settings.max_frame_bytes);
        return Ok(HttpResponse::from(response.finish().map_into_boxed_body()));
    }
    let (response, ws, messages) = actix_ws::handle(&req, body).map_err(not_an_upgrade)?;
    crate::session::ws::start(ws, messages, principal, node.env.clone(), admission);
    Ok(response)
}

fn not_an_upgrade(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParameter(format!("not a WebSocket upgrade: {e}"))
}
