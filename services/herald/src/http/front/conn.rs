//! One connection on an HTTP worker: its requests, one after another, until
//! it closes or one of them opens a stream.
//!
//! Each request head is decoded here ([`head`](super::head)); a request the
//! worker answers runs through the application while its body is read from
//! the socket only as fast as the handler takes it, within a deadline; its
//! response is written piece by piece with `writev` (no write buffer), and
//! the connection waits for the next request holding no read buffer. A
//! request that opens a stream takes the socket, and the bytes after its
//! head, to a stream thread: a stream is served the same way whether it is
//! the first request of its connection or the tenth.
//!
//! A response that leaves part of its request's body unread (a `413`, a
//! refusal before the body) closes the connection, but only after reading
//! and dropping what the client still sends for a bounded time (a lingering
//! close, as nginx does): a client that writes its whole body before reading
//! gets its answer instead of a reset.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use actix_http::h1::{Codec, Message};
use actix_http::{Payload, Request, Version};
use actix_service::Service;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::http::Method;
use actix_web::rt::net::TcpStream;
use actix_web::{HttpResponse, ResponseError};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Decoder;

use super::Front;
use super::body::{self, Failure, Feed, Want};
use super::head::{self, Body, Next};
use super::lean::{self, BodySource, Framing, Wire, drive};
use crate::http::error::ApiError;

/// How many bytes a read asks the socket for while a head or body arrives.
const READ_BYTES: usize = 4 * 1024;
/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// A connection between requests.
struct Connection {
    io: TcpStream,
    /// Bytes read and not yet decoded; empty (and unallocated) while the
    /// connection waits for its next request.
    buf: BytesMut,
    codec: Codec,
    peer: Option<SocketAddr>,
}

/// How waiting for a request head ended.
enum Arrived {
    Next(Next),
    /// The client closed the connection (or it failed).
    Gone,
    /// An idle keep-alive connection expired before a byte of a new request.
    Idle,
    /// The head did not arrive in time.
    TimedOut,
}

/// One step of reading a request's body.
enum Step {
    /// A piece went to the handler.
    Fed,
    /// The handler asks for the body, which the client waits to send until
    /// it hears `100 Continue`.
    Continue,
    /// The body is complete.
    Ended,
    /// The handler dropped the body.
    Dropped,
    /// The body did not arrive within its deadline.
    TimedOut,
    /// The client went, or framed its body wrongly.
    Broken,
}

/// What became of a request's body by the time its response was ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// Read to its end (or there was none): the next request may follow.
    Read,
    /// Some of it is still on its way.
    Unread,
    /// The connection cannot carry another request.
    Broken,
}

impl Front {
    /// Serves one accepted connection to its end, or until a request hands
    /// it to a stream thread.
    pub async fn connection(self: Rc<Front>, io: TcpStream) {
        let peer = io.peer_addr().ok();
        self.tune(&io);
        let mut conn = Connection {
            io,
            buf: BytesMut::new(),
            codec: Codec::new(self.config.clone()),
            peer,
        };
        let mut later = false;
        loop {
            let arrived = conn.next_head(&self.settings, later).await;
            match arrived {
                Arrived::Gone | Arrived::Idle => return,
                Arrived::TimedOut => {
                    crate::telemetry::front::refused("head_timeout");
                    let error =
                        ApiError::RequestTimeout("the request head did not arrive in time".into());
                    conn.refuse(error, self.settings.linger).await;
                    return;
                }
                Arrived::Next(Next::Partial) => unreachable!("next_head reads until a decision"),
                Arrived::Next(Next::Refused(error)) => {
                    crate::telemetry::front::refused(match error {
                        ApiError::HeadTooLarge(_) => "head_too_large",
                        _ => "malformed",
                    });
                    conn.refuse(error, self.settings.linger).await;
                    return;
                }
                Arrived::Next(Next::Stream(stream, request)) => {
                    crate::telemetry::front::stream(later);
                    let checked = lean::Checked::of(stream, request, conn.peer);
                    let rest = (!conn.buf.is_empty()).then(|| conn.buf.split().freeze());
                    self.streams.take(conn.io, checked, rest);
                    return;
                }
                Arrived::Next(Next::Request(request, body)) => {
                    if !self.answer(&mut conn, request, body).await {
                        return;
                    }
                }
            }
            later = true;
        }
    }

    /// Sets what every accepted socket gets.
    fn tune(&self, io: &TcpStream) {
        // Events are small and latency is what they are for.
        if let Err(e) = io.set_nodelay(true) {
            tracing::warn!(error = %e, "setting TCP_NODELAY on a connection failed");
        }
        if let Some(limit) = self.settings.write_timeout
            && let Err(e) = socket2::SockRef::from(io).set_tcp_user_timeout(Some(limit))
        {
            tracing::warn!(error = %e, "setting the write timeout of a connection failed");
        }
    }

    /// Answers one request with the application: `true` when the
    /// connection stays open for the next.
    async fn answer(&self, conn: &mut Connection, mut request: Request, body: Body) -> bool {
        let mut wire = Wire {
            version: request.version(),
            keep_alive: conn.codec.keep_alive() && body != Body::UntilClose,
            head_only: request.method() == Method::HEAD,
        };
        let expect = request.head().expect();
        request.head_mut().peer_addr = conn.peer;
        let feed = match body {
            Body::Delimited => {
                let (feed, payload) = body::channel();
                request = request
                    .replace_payload(Payload::Stream {
                        payload: Box::pin(payload) as actix_http::BoxedPayloadStream,
                    })
                    .0;
                Some(feed)
            }
            Body::None | Body::UntilClose => None,
        };
        let deadline = self.settings.body_timeout.map(|t| Instant::now() + t);
        let call = self.app.call(request);
        let (response, rest) = match feed {
            None => (call.await, Rest::Read),
            Some(feed) => match conn.run(call, &feed, expect, deadline).await {
                Some(answered) => answered,
                None => {
                    crate::telemetry::front::refused("body_timeout");
                    let error =
                        ApiError::RequestTimeout("the request body did not arrive in time".into());
                    conn.refuse(error, self.settings.linger).await;
                    return false;
                }
            },
        };
        let rest = if rest == Rest::Unread {
            conn.skip_buffered_body()
        } else {
            rest
        };
        let response = match response {
            Ok(response) => response.into_parts().1,
            Err(e) => e.error_response(),
        };
        wire.keep_alive &= rest == Rest::Read
            && !self.gate.is_draining()
            && response.head().connection_type() != actix_http::ConnectionType::Close;
        if conn.write(response, wire).await.is_err() {
            return false;
        }
        if wire.keep_alive {
            return true;
        }
        if rest == Rest::Unread {
            crate::telemetry::front::lingered();
            conn.linger(self.settings.linger).await;
        } else {
            let _ = conn.io.shutdown().await;
        }
        false
    }
}

impl Connection {
    /// Reads until the next request head decides what happens. `later`: a
    /// request came before on this connection, so the wait for the first
    /// byte is the keep-alive wait.
    async fn next_head(&mut self, settings: &super::FrontSettings, later: bool) -> Arrived {
        let head_deadline = || settings.head_timeout.map(|t| Instant::now() + t);
        let mut deadline = if later && self.buf.is_empty() {
            None
        } else {
            head_deadline()
        };
        loop {
            match head::next(&mut self.codec, &mut self.buf) {
                Next::Partial => {}
                decided => return Arrived::Next(decided),
            }
            if deadline.is_none() {
                // An idle keep-alive connection: no buffer while it waits;
                // the head's clock starts with its first byte.
                self.buf = BytesMut::new();
                let Some(keep_alive) = settings.keep_alive else {
                    return Arrived::Idle;
                };
                match timeout(keep_alive, self.io.readable()).await {
                    Err(_) => return Arrived::Idle,
                    Ok(Err(_)) => return Arrived::Gone,
                    Ok(Ok(())) => deadline = head_deadline(),
                }
            }
            match read_by(&mut self.io, &mut self.buf, deadline).await {
                Ok(0) | Err(Stall::Failed) => return Arrived::Gone,
                Ok(_) => {}
                Err(Stall::TimedOut) => return Arrived::TimedOut,
            }
        }
    }

    /// Runs the handler's `call` while the request's body is read for it:
    /// the response and what became of the body, or `None` when the body
    /// did not arrive in time.
    async fn run<F>(
        &mut self,
        call: F,
        feed: &Feed,
        expect: bool,
        deadline: Option<Instant>,
    ) -> Option<(F::Output, Rest)>
    where
        F: Future,
    {
        let mut call = pin!(call);
        let mut continued = !expect;
        loop {
            let step = tokio::select! {
                biased;
                response = &mut call => return Some((response, Rest::Unread)),
                step = self.feed(feed, continued, deadline) => step,
            };
            match step {
                Step::Fed => {}
                Step::Continue => {
                    continued = true;
                    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
                    if self.io.write_all(interim).await.is_err() {
                        feed.fail(Failure::Incomplete);
                        return Some((call.await, Rest::Broken));
                    }
                }
                Step::Ended => return Some((call.await, Rest::Read)),
                Step::Dropped => return Some((call.await, Rest::Unread)),
                Step::Broken => {
                    feed.fail(Failure::Incomplete);
                    return Some((call.await, Rest::Broken));
                }
                Step::TimedOut => {
                    feed.fail(Failure::TimedOut);
                    return None;
                }
            }
        }
    }

    /// One step of reading the body for the handler.
    async fn feed(&mut self, feed: &Feed, continued: bool, deadline: Option<Instant>) -> Step {
        if feed.want().await == Want::Nothing {
            return Step::Dropped;
        }
        if !continued {
            return Step::Continue;
        }
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Message::Chunk(Some(chunk)))) => {
                    feed.push(chunk);
                    return Step::Fed;
                }
                Ok(Some(Message::Chunk(None))) => {
                    feed.end();
                    return Step::Ended;
                }
                Ok(None) => {}
                Ok(Some(Message::Item(_))) | Err(_) => return Step::Broken,
            }
            match read_by(&mut self.io, &mut self.buf, deadline).await {
                Ok(0) | Err(Stall::Failed) => return Step::Broken,
                Ok(_) => {}
                Err(Stall::TimedOut) => return Step::TimedOut,
            }
        }
    }

    /// Drops the rest of a body the handler left, when it has all arrived
    /// already (a small body sent with its head): the connection may then
    /// carry the next request.
    fn skip_buffered_body(&mut self) -> Rest {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Message::Chunk(Some(_)))) => {}
                Ok(Some(Message::Chunk(None))) => return Rest::Read,
                Ok(None) => return Rest::Unread,
                Ok(Some(Message::Item(_))) | Err(_) => return Rest::Broken,
            }
        }
    }

    /// Writes `response`: its head and body pieces as they come, with
    /// `writev`.
    async fn write(&mut self, response: HttpResponse, wire: Wire) -> std::io::Result<()> {
        let (response, body) = response.into_parts();
        let framing = Framing::of(response.status(), body.size(), wire);
        let wire = Wire {
            keep_alive: wire.keep_alive && framing != Framing::Raw,
            ..wire
        };
        let head = lean::response_head(&response, framing, wire);
        drop(response);
        let (body, framing) = if wire.head_only || framing == Framing::None {
            (BoxBody::new(()), Framing::None)
        } else {
            (body, framing)
        };
        let mut pending = VecDeque::from([head]);
        let mut source = BodySource::new(body, framing, None);
        std::future::poll_fn(|cx| drive(&self.io, &mut pending, &mut source, cx)).await
    }

    /// Answers with a problem document and closes the connection (after a
    /// lingering read: the client may still be sending).
    async fn refuse(&mut self, error: ApiError, linger: Duration) {
        let wire = Wire {
            version: Version::HTTP_11,
            keep_alive: false,
            head_only: false,
        };
        if self.write(error.error_response(), wire).await.is_ok() {
            self.linger(linger).await;
        }
    }

    /// Closes the sending side, then reads and drops what the client still
    /// sends for at most `limit` (and [`LINGER_BYTES`]), so that closing
    /// does not reset a response the client has not read yet.
    async fn linger(&mut self, limit: Duration) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        self.buf = BytesMut::new();
        let deadline = Instant::now() + limit;
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match timeout_at(deadline, self.io.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
            match lean::discard(&self.io) {
                Ok(Some(0)) | Err(_) => return,
                Ok(Some(n)) => dropped += n,
                Ok(None) => {}
            }
        }
    }
}

/// Why a read returned nothing.
enum Stall {
    TimedOut,
    Failed,
}

/// Reads what the socket has into `buf` (waiting at most until
/// `deadline`): how many bytes, `0` at the end of the stream.
async fn read_by(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> Result<usize, Stall> {
    buf.reserve(READ_BYTES);
    let read = io.read_buf(buf);
    let read = match deadline {
        Some(deadline) => timeout_at(deadline, read)
            .await
            .map_err(|_| Stall::TimedOut)?,
        None => read.await,
    };
    read.map_err(|_| Stall::Failed)
}
