//! The front door: Herald's own HTTP/1.1 server, for every connection.
//!
//! Each connection's request heads are decoded here, one parser for every
//! request ([`head`]). A request that opens a long-lived stream (`GET
//! /v1/ws`, `GET /v1/sse`), whichever request of its connection it is,
//! goes with the socket to a stream thread ([`streams`]), where the
//! application answers it and the lean path drives the stream with no
//! per-connection buffers ([`lean`], [`ws`]). Every other request is
//! answered on the HTTP worker by the same application ([`conn`]): its
//! body read only as the handler takes it and within a deadline, its
//! response written with `writev`, and the connection kept alive for the
//! next request holding nothing but its socket.
//!
//! actix-web provides the application (routes, middleware, extractors,
//! handlers); actix-http provides the HTTP types and the request parser.
//! Neither keeps a connection: there is one connection path.

mod body;
mod conn;
pub mod head;
mod input;
mod lean;
pub mod streams;
pub mod ws;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_service::boxed::BoxService;
use actix_web::dev::ServiceResponse;

pub use streams::{MakeApplication, Streams};

use crate::session::gate::Gate;

/// The application, for one request.
pub type Application = BoxService<actix_http::Request, ServiceResponse, actix_web::Error>;

/// Settings of the front door.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// How long a client may take to send a request head: the first from
    /// when it connects, each later one from its first byte.
    pub head_timeout: Option<Duration>,
    /// How long an idle connection waits for its next request (`None`: it
    /// closes after each response).
    pub keep_alive: Option<Duration>,
    /// How long a client may take to send a request's body, from its head.
    pub body_timeout: Option<Duration>,
    /// How long a connection closed with part of a request unread keeps
    /// reading (and dropping) what the client sends.
    pub linger: Duration,
    /// How long written data may stay unsent or unacknowledged. The lean
    /// path has no write timeout of its own: a client that keeps its
    /// receive window at zero would keep its descriptor for as long as it
    /// lives. The kernel's `TCP_USER_TIMEOUT` resets such a connection; the
    /// next write fails and the connection, and its session, end.
    pub write_timeout: Option<Duration>,
}

/// One HTTP worker's front door.
pub struct Front {
    /// The worker's application.
    app: Application,
    /// The worker's HTTP/1 settings (the parser's; one date task a worker).
    config: actix_http::ServiceConfig,
    settings: FrontSettings,
    /// Where streams run.
    streams: Arc<Streams>,
    /// A draining node closes connections after their response.
    gate: Arc<Gate>,
}

impl Front {
    pub fn new(
        app: Application,
        settings: FrontSettings,
        streams: Arc<Streams>,
        gate: Arc<Gate>,
    ) -> Rc<Front> {
        let config = actix_http::ServiceConfig::new(
            match settings.keep_alive {
                Some(limit) => actix_http::KeepAlive::Timeout(limit),
                None => actix_http::KeepAlive::Disabled,
            },
            settings.head_timeout.unwrap_or_default(),
            Duration::ZERO,
            false,
            None,
        );
        Rc::new(Front {
            app,
            config,
            settings,
            streams,
            gate,
        })
    }
}

/// A stream's request as the stream thread would build it, for the fuzz
/// target of request heads: `None` when the bytes hold no stream request.
#[doc(hidden)]
pub fn stream_request(data: &[u8]) -> Option<()> {
    thread_local! {
        static CONFIG: actix_http::ServiceConfig = head::standalone_config();
    }
    let mut codec = CONFIG.with(|config| actix_http::h1::Codec::new(config.clone()));
    let mut buf = bytes::BytesMut::from(data);
    // Requests without a body one after another, as a keep-alive
    // connection sends them.
    loop {
        match head::next(&mut codec, &mut buf) {
            head::Next::Stream(stream, request) => {
                let checked = lean::Checked::of(stream, request, None);
                drop(lean::request(checked));
                return Some(());
            }
            head::Next::Request(_, head::Body::None) => {}
            _ => return None,
        }
    }
}
