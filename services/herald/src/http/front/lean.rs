//! The lean path: one long-lived stream per connection, driven without
//! per-connection buffers.
//!
//! The application answers the request as on the general server. The
//! response's body (a WebSocket's frames, an event stream's events) is
//! written to the socket as it comes, several ready pieces in one
//! `writev`; nothing is copied into a write buffer. The socket is read
//! when the kernel says it is readable, into a per-thread scratch buffer:
//! an idle connection holds no read buffer at all. A WebSocket's bytes go
//! to its frame decoder; bytes after an event stream's request are
//! discarded, and its end (or a reset) ends the stream.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::Uri;
use actix_http::header::HeaderMap;
use actix_http::{ConnectionType, HttpMessage, Method, Request, StatusCode, Version};
use actix_service::Service;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::rt::net::TcpStream;
use bytes::{Buf, Bytes};

use super::Application;
use super::head::Stream;
use super::ws::{Upgrade, WsPump};
use crate::session::outbound::Stall;

/// Most pieces written in one `writev`.
pub const MAX_BATCH: usize = 64;
/// Size of each thread's read scratch buffer.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A request ready for the application, and a WebSocket's slot for the
/// session the handler attaches.
pub struct Prepared {
    request: Request,
    upgrade: Option<Upgrade>,
}

/// A stream's request in the HTTP types that may move to another thread
/// (a decoded request may not).
pub struct Checked {
    stream: Stream,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    upgrade: bool,
    peer: Option<SocketAddr>,
}

impl Checked {
    /// What a stream thread needs of `request`.
    pub fn of(stream: Stream, mut request: Request, peer: Option<SocketAddr>) -> Checked {
        let upgrade = request.upgrade();
        let head = request.head_mut();
        Checked {
            stream,
            uri: std::mem::take(&mut head.uri),
            version: head.version,
            headers: std::mem::take(&mut head.headers),
            upgrade,
            peer,
        }
    }
}

/// The application's request for a checked head.
pub fn request(checked: Checked) -> Prepared {
    let mut request = Request::new();
    let upgrade = (checked.stream == Stream::WebSocket).then(|| {
        let upgrade = Upgrade::default();
        request.extensions_mut().insert(upgrade.clone());
        upgrade
    });
    let request_head = request.head_mut();
    request_head.method = Method::GET;
    request_head.uri = checked.uri;
    request_head.version = checked.version;
    request_head.headers = checked.headers;
    request_head.peer_addr = checked.peer;
    if checked.upgrade {
        request_head.set_connection_type(ConnectionType::Upgrade);
    }
    Prepared { request, upgrade }
}

/// Answers `prepared` with the application: what drives the connection
/// from then on, until the response ends or the client goes. `rest`:
/// bytes the client sent after the head.
pub async fn respond(
    io: TcpStream,
    prepared: Prepared,
    rest: Option<Bytes>,
    app: &Application,
) -> Option<Streaming> {
    let Prepared { request, upgrade } = prepared;
    let wire = Wire {
        version: request.version(),
        keep_alive: false,
        head_only: false,
    };
    let response = match app.call(request).await {
        Ok(response) => response.into_parts().1,
        Err(e) => e.error_response(),
    };
    let (response, body) = response.into_parts();
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let framing = Framing::of(response.status(), body.size(), wire);
    let head = response_head(&response, framing, wire);
    // An event stream's word on a stalled socket (`http::sse`).
    let stall = response.extensions().get::<Stall>().cloned();
    // Nothing of the response but its body stays with the connection.
    drop(response);
    if let Some(upgrade) = upgrade.filter(|_| upgraded) {
        // The head goes out with the session's first frames, in one write.
        let mut pump = upgrade.pump(io, head)?;
        if let Some(rest) = rest {
            // Frames the client sent right behind its request.
            pump.take(&rest);
        }
        return Some(Streaming::WebSocket(pump));
    }
    // The head goes out with the first pieces of the body, in one write.
    Some(Streaming::Body(Pump::new(io, head, body, framing, stall)))
}

/// A connection after its response head: what an idle one keeps.
pub enum Streaming {
    Body(Pump),
    WebSocket(WsPump),
}

impl Future for Streaming {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping the socket when this ends closes it; nothing is left unwritten.
        match self.get_mut() {
            Streaming::Body(pump) => Pin::new(pump).poll(cx),
            Streaming::WebSocket(pump) => Pin::new(pump).poll(cx),
        }
    }
}

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    None,
    Sized(u64),
    Chunked,
    /// An upgraded connection (the body is the new protocol's bytes), or a
    /// body an HTTP/1.0 client reads until the connection closes.
    Raw,
}

impl Framing {
    /// How a response with `status` and a body of `size` goes out.
    pub(super) fn of(status: StatusCode, size: BodySize, wire: Wire) -> Framing {
        match size {
            _ if status == StatusCode::SWITCHING_PROTOCOLS => Framing::Raw,
            // RFC 9110 §8.6: no length and no body for these.
            _ if status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED =>
            {
                Framing::None
            }
            BodySize::None => Framing::None,
            BodySize::Sized(n) => Framing::Sized(n),
            BodySize::Stream if wire.version == Version::HTTP_10 => Framing::Raw,
            BodySize::Stream => Framing::Chunked,
        }
    }
}

/// What the request decided about the response's wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wire {
    /// The request's version (an HTTP/1.0 client gets no chunks).
    pub version: Version,
    /// Whether the connection stays open for another request.
    pub keep_alive: bool,
    /// A `HEAD` request: the head only.
    pub head_only: bool,
}

/// The status line and header fields.
pub(super) fn response_head(
    response: &actix_web::HttpResponse<()>,
    framing: Framing,
    wire: Wire,
) -> Bytes {
    use std::fmt::Write;
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in response.headers() {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date"
        ) {
            continue;
        }
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        head.push_str("\r\n");
    }
    let _ = write!(
        head,
        "date: {}\r\n",
        actix_web::http::header::HttpDate::from(std::time::SystemTime::now())
    );
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
    match framing {
        Framing::Sized(n) => {
            let _ = write!(head, "content-length: {n}\r\n");
        }
        Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Raw => {}
    }
    head.push_str(
        match (upgraded, wire.keep_alive && framing != Framing::Raw) {
            (true, _) => "connection: upgrade\r\n",
            (false, true) if wire.version == Version::HTTP_10 => "connection: keep-alive\r\n",
            (false, true) => "",
            (false, false) => "connection: close\r\n",
        },
    );
    head.push_str("\r\n");
    Bytes::from(head)
}

/// Writes the body as it comes while watching the socket, until the body
/// ends or the client goes. A hand-written future: what an idle connection
/// keeps is this struct, and nothing else.
pub struct Pump {
    io: TcpStream,
    /// Framed pieces not yet written; empty (and unallocated) when idle.
    pending: VecDeque<Bytes>,
    body: BodySource,
}

/// A response body as a pump's source.
pub(super) struct BodySource {
    body: BoxBody,
    framing: Framing,
    /// The body has ended; once `pending` is written, so has the response.
    ended: bool,
    /// For an event stream: its queue's word on a stalled socket, and
    /// whether it is stalled now.
    stall: Option<(Stall, bool)>,
}

impl BodySource {
    pub(super) fn new(body: BoxBody, framing: Framing, stall: Option<Stall>) -> BodySource {
        BodySource {
            body,
            framing,
            ended: false,
            stall: stall.map(|stall| (stall, false)),
        }
    }
}

impl Pump {
    fn new(
        io: TcpStream,
        head: Bytes,
        body: BoxBody,
        framing: Framing,
        stall: Option<Stall>,
    ) -> Pump {
        Pump {
            io,
            pending: VecDeque::from([head]),
            body: BodySource::new(body, framing, stall),
        }
    }

    /// Reads (and drops) what the client sends after its request: `Ready`
    /// when the client went (its end of the stream, or an error).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            if let Some(bytes) = read(&self.io)?
                && bytes.is_empty()
            {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// What a pump writes: a response body, or a session's frames.
pub trait Source {
    /// Queues what is ready, framed, onto `pending`; `true` once the last
    /// piece is queued.
    fn fill(&mut self, pending: &mut VecDeque<Bytes>, cx: &mut Context<'_>) -> io::Result<bool>;
    /// The socket takes nothing now (`true`: the client is not reading), or
    /// takes again; called on each change.
    fn stalled(&mut self, _stalled: bool) {}
}

impl Source for BodySource {
    fn stalled(&mut self, stalled: bool) {
        if let Some((stall, now)) = &mut self.stall
            && *now != stalled
        {
            *now = stalled;
            stall.set(stalled);
        }
    }

    fn fill(&mut self, pending: &mut VecDeque<Bytes>, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut fresh = Vec::new();
        while !self.ended && pending.len() + fresh.len() < MAX_BATCH {
            match Pin::new(&mut self.body).poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    if !piece.is_empty() {
                        fresh.push(piece)
                    }
                }
                // The end of the body, or an error in it: either way, the end.
                Poll::Ready(end) => {
                    self.ended = true;
                    if end.is_some() {
                        // A body that failed gets no last chunk: the client
                        // sees a cut stream, not a complete one.
                        self.framing = Framing::Raw;
                    }
                }
                Poll::Pending => break,
            }
        }
        if self.framing == Framing::Chunked {
            frame_chunk(&mut fresh, self.ended);
        }
        pending.extend(fresh);
        Ok(self.ended)
    }
}

impl Future for Pump {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(done) = drive(&this.io, &mut this.pending, &mut this.body, cx) {
            return Poll::Ready(done);
        }
        // A client that goes ends the response.
        this.poll_read(cx)
    }
}

/// Writes what `source` has ready while the socket takes it: `Ready` once
/// the last piece is written (or writing failed), `Pending` while waiting
/// for the socket or the source.
pub fn drive(
    io: &TcpStream,
    pending: &mut VecDeque<Bytes>,
    source: &mut impl Source,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let ended = source.fill(pending, cx)?;
        if pending.is_empty() {
            // Give back the queue's memory while the connection is idle.
            *pending = VecDeque::new();
            return if ended {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        match write(io, pending, cx) {
            Poll::Ready(written) => {
                written?;
                source.stalled(false);
            }
            Poll::Pending => {
                source.stalled(true);
                return Poll::Pending;
            }
        }
    }
}

/// Writes what the socket takes of `pending` in one `writev`: `Pending`
/// when it takes nothing now (the task is woken when it can).
fn write(
    io: &TcpStream,
    pending: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    ready!(io.poll_write_ready(cx))?;
    let slices: Vec<IoSlice<'_>> = pending
        .iter()
        .take(2 * MAX_BATCH)
        .map(|piece| IoSlice::new(piece))
        .collect();
    match io.try_write_vectored(&slices) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Ok(written) => {
            drop(slices);
            advance(pending, written);
            Poll::Ready(Ok(()))
        }
        // The readiness was stale: poll again, which waits for it.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
        Err(e) => Poll::Ready(Err(e)),
    }
}

/// Drops `written` bytes from the front of `pending`.
pub fn advance(pending: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let Some(piece) = pending.front_mut() else {
            return;
        };
        let step = written.min(piece.len());
        piece.advance(step);
        written -= step;
        if piece.is_empty() {
            pending.pop_front();
        }
    }
}

/// Wraps a batch of body pieces in one HTTP/1.1 chunk (and the last chunk
/// when the body `ended`).
fn frame_chunk(batch: &mut Vec<Bytes>, ended: bool) {
    let len: usize = batch.iter().map(Bytes::len).sum();
    if len > 0 {
        batch.insert(0, Bytes::from(format!("{len:x}\r\n")));
        batch.push(Bytes::from_static(b"\r\n"));
    } else {
        batch.clear();
    }
    if ended {
        batch.push(Bytes::from_static(b"0\r\n\r\n"));
    }
}

/// Reads what the socket holds into the thread's scratch buffer and copies
/// out exactly that: `Some(empty)` at the end of the stream, `None` when
/// the readiness was spurious.
pub fn read(io: &TcpStream) -> io::Result<Option<Bytes>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        match io.try_read(&mut scratch) {
            Ok(n) => Ok(Some(Bytes::copy_from_slice(&scratch[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// Reads and drops what the socket holds (into the thread's scratch
/// buffer): how many bytes, `Some(0)` at the end of the stream, `None` when
/// the readiness was spurious.
pub fn discard(io: &TcpStream) -> io::Result<Option<usize>> {
    SCRATCH.with(|scratch| match io.try_read(&mut scratch.borrow_mut()) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_one_chunk_and_the_last_chunk_follows_the_end() {
        let mut batch = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")];
        frame_chunk(&mut batch, false);
        assert_eq!(batch.concat(), b"8\r\nabcdefgh\r\n");
        let mut batch = vec![Bytes::new()];
        frame_chunk(&mut batch, true);
        assert_eq!(batch.concat(), b"0\r\n\r\n");
    }

    #[test]
    fn a_stream_request_keeps_its_head_and_upgrade_across_threads() {
        let mut buf = bytes::BytesMut::from(
            &b"GET /v1/ws?access_token=t HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        );
        let mut codec = actix_http::h1::Codec::new(super::super::head::standalone_config());
        let super::super::head::Next::Stream(stream, decoded) =
            super::super::head::next(&mut codec, &mut buf)
        else {
            panic!("a WebSocket request is a stream");
        };
        let checked = Checked::of(stream, decoded, None);
        // What crosses to a stream thread must be sendable.
        fn sendable<T: Send>(_: &T) {}
        sendable(&checked);
        let prepared = request(checked);
        assert!(prepared.upgrade.is_some());
        assert!(prepared.request.head().upgrade());
        assert_eq!(prepared.request.uri().query(), Some("access_token=t"));
        assert_eq!(
            prepared
                .request
                .head()
                .headers
                .get("host")
                .map(|v| v.as_bytes()),
            Some(&b"h"[..])
        );
    }

    fn head_of(status: StatusCode, size: BodySize, wire: Wire) -> String {
        let response = actix_web::HttpResponse::with_body(status, ());
        let framing = Framing::of(status, size, wire);
        String::from_utf8(response_head(&response, framing, wire).to_vec()).expect("ASCII")
    }

    #[test]
    fn the_response_head_says_how_the_body_ends_and_whether_the_connection_stays() {
        let kept = Wire {
            version: Version::HTTP_11,
            keep_alive: true,
            head_only: false,
        };
        let sized = head_of(StatusCode::OK, BodySize::Sized(5), kept);
        assert!(sized.contains("content-length: 5\r\n"), "{sized}");
        assert!(!sized.contains("connection:"), "{sized}");
        let closing = head_of(
            StatusCode::OK,
            BodySize::Stream,
            Wire {
                keep_alive: false,
                ..kept
            },
        );
        assert!(
            closing.contains("transfer-encoding: chunked\r\n"),
            "{closing}"
        );
        assert!(closing.contains("connection: close\r\n"), "{closing}");
        let old = Wire {
            version: Version::HTTP_10,
            ..kept
        };
        let streamed = head_of(StatusCode::OK, BodySize::Stream, old);
        assert!(!streamed.contains("chunked"), "HTTP/1.0: {streamed}");
        assert!(streamed.contains("connection: close\r\n"), "{streamed}");
        assert!(
            head_of(StatusCode::OK, BodySize::Sized(1), old).contains("connection: keep-alive")
        );
        let empty = head_of(StatusCode::NO_CONTENT, BodySize::Sized(0), kept);
        assert!(!empty.contains("content-length"), "{empty}");
        assert!(
            head_of(StatusCode::SWITCHING_PROTOCOLS, BodySize::Stream, kept)
                .contains("connection: upgrade\r\n")
        );
    }
}
