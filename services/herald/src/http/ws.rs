//! `GET /v1/ws`: the handshake, credentials (or none: the first frame may
//! carry them), admission, the upgrade; the session does the rest
//! (`session::ws`). The front door's connection reads and writes the frames
//! (`http::front::ws`): it is the one WebSocket implementation, and a
//! request that did not come through it is refused, never upgraded.
//! A client that speaks another version of the protocol is upgraded and
//! told so (an `error` frame, then close `4426`), since browser code never
//! sees the status of a refused handshake.

use actix_http::ws::HandshakeError;
use actix_web::{HttpRequest, HttpResponse, web};
use bytestring::ByteString;
use serde_json::json;

use super::error::ApiError;
use super::front::ws::Upgrade;
use super::{check_protocol, subscriber_credential};
use crate::node::Node;
use crate::session::outbound;
use crate::session::ws::WsFrame;

/// The close code for a client that speaks another protocol version.
const UNSUPPORTED_PROTOCOL_CLOSE: u16 = 4426;

pub async fn ws(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let Some(upgrade) = Upgrade::of(&req) else {
        return Err(ApiError::NotServed(
            "a WebSocket is served only on a connection the front door handed to a stream \
             thread; this request did not arrive that way"
                .into(),
        ));
    };
    let mut response = actix_http::ws::handshake(req.head()).map_err(refused_handshake)?;
    if let Err(refused) = check_protocol(req.query_string()) {
        // Before credentials: a ticket is not spent on a connection that ends here.
        let (feed, _ignored) = Upgrade::input();
        upgrade.attach(
            unsupported_protocol(&refused),
            feed,
            node.env.settings.max_frame_bytes,
        );
        return Ok(HttpResponse::from(response.finish().map_into_boxed_body()));
    }
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

/// The frames of a connection whose client speaks another protocol: an
/// `error` frame (`unsupported_protocol`), then close `4426`. Nothing reads
/// what the client sends but the connection, which answers its close.
fn unsupported_protocol(refused: &ApiError) -> outbound::OutboundRx<WsFrame> {
    let (out, frames) = outbound::channel(2, usize::MAX);
    let error = json!({"op": "error", "code": refused.code(), "message": refused.to_string()});
    let text = error.to_string();
    let size = text.len();
    // Two frames into an empty queue of two cannot be refused.
    let _ = out.push(WsFrame::Text(ByteString::from(text)), size);
    let _ = out.push(
        WsFrame::Close(
            Some(UNSUPPORTED_PROTOCOL_CLOSE),
            "unsupported protocol".to_owned(),
        ),
        0,
    );
    frames
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
