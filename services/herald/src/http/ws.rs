//! `GET /v1/ws`: the handshake, credentials (or none: the first frame may
//! carry them), admission, the upgrade; the session does the rest
//! (`session::ws`). The front door's connection reads and writes the frames
//! (`http::front::ws`): it is the one WebSocket implementation, and a
//! request that did not come through it is refused, never upgraded.

use actix_http::ws::HandshakeError;
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;
use super::front::ws::Upgrade;
use super::subscriber_credential;
use crate::node::Node;

pub async fn ws(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let Some(upgrade) = Upgrade::of(&req) else {
        return Err(ApiError::NotServed(
            "a WebSocket is served only on a connection the front door handed to a stream \
             thread; this request did not arrive that way"
                .into(),
        ));
    };
    let mut response = actix_http::ws::handshake(req.head()).map_err(refused_handshake)?;
    // Credentials first: a connection's place goes only to a client whose
    // credentials hold. One that will send them in its first frame waits
    // in the gate's smaller waiting room until it does.
    let principal = subscriber_credential(&req, &node).await?;
    let admission = match principal {
        Some(_) => node.gate.enter()?,
        None => node.gate.wait()?,
    };
    let (feed, messages) = Upgrade::input();
    let frames = crate::session::ws::start(messages, principal, node.env.clone(), admission);
    upgrade.attach(frames, feed, node.env.settings.max_frame_bytes);
    Ok(HttpResponse::from(response.finish().map_into_boxed_body()))
}

/// The answer to a request that is not a WebSocket handshake Herald takes:
/// a version other than 13 (or none) is `426` with the one it speaks.
fn refused_handshake(e: HandshakeError) -> ApiError {
    match e {
        HandshakeError::NoVersionHeader | HandshakeError::UnsupportedVersion => {
            ApiError::UpgradeRequired(format!("{e}: this server speaks WebSocket version 13"))
        }
        e => ApiError::InvalidParameter(format!("not a WebSocket upgrade: {e}")),
    }
}
