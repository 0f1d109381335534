//! The front door: every accepted connection comes here first.
//!
//! A connection whose first request opens a long-lived stream (`GET
//! /v1/ws`, `GET /v1/sse`) is served by the lean path ([`lean`]): the same
//! application (routes, middleware, handlers, errors) answers the request,
//! but the connection is driven here, with no per-connection buffers once
//! the head is read. Every other connection, with the bytes already read,
//! goes to actix-http's HTTP/1 server, which holds an 8 KiB read and an 8
//! KiB write buffer per connection for its whole life: fine for requests
//! that come and go, most of the memory of an idle stream.
//!
//! The decision is made on the first request's head ([`head`]); later
//! requests on a keep-alive connection stay with the general server, which
//! serves `/v1/ws` and `/v1/sse` just as well.

pub mod head;
mod input;
mod io;
mod lean;
pub mod streams;
pub mod ws;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_service::boxed::BoxService;
use actix_web::dev::ServiceResponse;
use actix_web::rt::net::TcpStream;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use io::Prefixed;
pub use streams::{MakeApplication, Streams};

/// The general HTTP/1 server, for one connection.
pub type General = BoxService<(Prefixed, Option<SocketAddr>), (), actix_http::error::DispatchError>;
/// The application, for one request of the lean path.
pub type Application = BoxService<actix_http::Request, ServiceResponse, actix_web::Error>;

/// Settings of the front door.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// How long a client may take to send its first request head.
    pub head_timeout: Option<Duration>,
    /// How long written data may stay unsent or unacknowledged. Neither
    /// actix-http nor the lean path has a write timeout of its own: a
    /// client that keeps its receive window at zero would keep its
    /// descriptor for as long as it lives. The kernel's `TCP_USER_TIMEOUT`
    /// resets such a connection; the next write fails and the connection,
    /// and its session, end.
    pub write_timeout: Option<Duration>,
}

/// One worker's front door.
pub struct Front {
    general: General,
    settings: FrontSettings,
    /// Where lean streams run.
    streams: Arc<Streams>,
}

/// What the first bytes of a connection decided.
enum Decided {
    General,
    Lean(head::Head),
    /// The client went away, or sent nothing in time.
    Gone,
    TimedOut,
}

impl Front {
    pub fn new(general: General, settings: FrontSettings, streams: Arc<Streams>) -> Rc<Front> {
        Rc::new(Front {
            general,
            settings,
            streams,
        })
    }

    /// Serves one accepted connection: reads its first request head, then
    /// hands a lean stream to a stream thread, or serves the connection to
    /// its end with the general server.
    pub async fn connection(self: Rc<Front>, mut io: TcpStream) {
        let peer = io.peer_addr().ok();
        if let Some(timeout) = self.settings.write_timeout
            && let Err(e) = socket2::SockRef::from(&io).set_tcp_user_timeout(Some(timeout))
        {
            tracing::warn!(error = %e, "setting the write timeout of a connection failed");
        }
        let mut buf = BytesMut::new();
        let decided = match self.settings.head_timeout {
            Some(limit) => tokio::time::timeout(limit, decide(&mut io, &mut buf))
                .await
                .unwrap_or(Decided::TimedOut),
            None => decide(&mut io, &mut buf).await,
        };
        match decided {
            Decided::Gone => {}
            Decided::TimedOut => timed_out(io).await,
            Decided::General => self.general(io, buf, peer).await,
            Decided::Lean(head) => {
                let len = head.len;
                let Some(checked) = lean::check(head, peer) else {
                    // A head the lean path cannot represent: the general
                    // server answers it as it always has.
                    return self.general(io, buf, peer).await;
                };
                // Bytes after the head (a WebSocket frame sent at once), if
                // any; the head's buffer goes now.
                let rest = buf.split_off(len);
                drop(buf);
                let rest = (!rest.is_empty()).then(|| rest.freeze());
                self.streams.take(io, checked, rest);
            }
        }
    }

    async fn general(&self, io: TcpStream, read: BytesMut, peer: Option<SocketAddr>) {
        use actix_service::Service;
        let _ = self
            .general
            .call((Prefixed::new(read.freeze(), io), peer))
            .await;
    }
}

/// The application's request for a head the lean path takes (`None`: the
/// general server answers it), for the fuzz targets.
#[doc(hidden)]
pub fn lean_request(head: &head::Head) -> Option<()> {
    lean::check(head.clone(), None).map(|checked| drop(lean::request(checked)))
}

/// Answers a client that did not send its head in time.
async fn timed_out(mut io: TcpStream) {
    let _ = io
        .write_all(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
    let _ = io.shutdown().await;
}

/// Reads until the first request head decides where the connection goes.
async fn decide(io: &mut TcpStream, buf: &mut BytesMut) -> Decided {
    loop {
        match head::inspect(buf) {
            head::Inspect::General => return Decided::General,
            head::Inspect::Lean(head) => return Decided::Lean(head),
            head::Inspect::Partial => {}
        }
        buf.reserve(1024);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Decided::Gone,
            Ok(_) => {}
        }
    }
}
