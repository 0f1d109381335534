//! Request heads as the front door reads them, for every request of every
//! connection. Sans-IO: bytes in, a decision out.
//!
//! One parser decides for every path: actix-http's HTTP/1 codec (`httparse`
//! with its checks: exactly one `Host` on HTTP/1.1, one `Content-Length`, no
//! `Transfer-Encoding` beside it or on HTTP/1.0, `chunked` only, 96 fields at
//! most), plus a bound on the head's size here. A head it refuses is
//! answered `400` (`431` when too large) whatever its path; a head it takes
//! is either a long-lived stream (`GET /v1/ws`, `GET /v1/sse`, without a
//! body), which goes with its socket to a stream thread, or a request the
//! HTTP worker answers.

use actix_http::Request;
use actix_http::error::ParseError;
use actix_http::h1::{Codec, Message, MessageType};
use actix_web::http::Method;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::http::error::ApiError;

/// Longest request head, in bytes (request line, fields, blank line): the
/// codec's own bound, which a subscription to the most topics with the
/// longest cursor fits. The head's buffer is freed once it is decoded.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// The long-lived endpoints served on the stream threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    WebSocket,
    Events,
}

/// What a request's head says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// Delimited by `Content-Length` or chunked.
    Delimited,
    /// Everything until the client closes (an upgrade the handler does not
    /// take): the connection ends with the response.
    UntilClose,
}

/// What the bytes read so far decide.
#[derive(Debug)]
pub enum Next {
    /// The head is not complete yet: read more.
    Partial,
    /// A request the HTTP worker answers.
    Request(Request, Body),
    /// A long-lived stream: its request, for a stream thread.
    Stream(Stream, Request),
    /// Not a head HTTP allows (or too large): answered with this, then the
    /// connection closes.
    Refused(ApiError),
}

/// Decodes the next request head from `buf`, whose bytes before it were
/// the previous request's (its body included). What follows the head stays
/// in `buf`.
pub fn next(codec: &mut Codec, buf: &mut BytesMut) -> Next {
    let before = buf.len();
    match codec.decode(buf) {
        Ok(Some(Message::Item(request))) => {
            if before - buf.len() > MAX_HEAD_BYTES {
                return Next::Refused(too_large());
            }
            classify(request, codec.message_type())
        }
        // The previous request's body was not all read: the connection
        // should have closed.
        Ok(Some(Message::Chunk(_))) => Next::Refused(ApiError::BadRequest(
            "a request body continued past its request".into(),
        )),
        Ok(None) if buf.len() >= MAX_HEAD_BYTES => Next::Refused(too_large()),
        Ok(None) => Next::Partial,
        Err(ParseError::TooLarge) => Next::Refused(too_large()),
        Err(e) => Next::Refused(ApiError::BadRequest(format!(
            "not an HTTP/1.1 request head: {} ({e})",
            describe(&e)
        ))),
    }
}

/// An HTTP/1 settings object made outside a server (for tests and fuzzing):
/// building one starts actix-http's date task, which needs a local task set
/// to be spawned on; it is never run, and decoding does not read it.
#[doc(hidden)]
pub fn standalone_config() -> actix_http::ServiceConfig {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime with timers builds on any platform tokio supports");
    tokio::task::LocalSet::new().block_on(&runtime, async { actix_http::ServiceConfig::default() })
}

fn too_large() -> ApiError {
    ApiError::HeadTooLarge(format!(
        "the request head is over {MAX_HEAD_BYTES} bytes or 96 fields"
    ))
}

/// What was wrong, in words a client can act on.
fn describe(e: &ParseError) -> &'static str {
    match e {
        ParseError::Method => "invalid method",
        ParseError::Uri(_) => "invalid request target",
        ParseError::Version => "unsupported HTTP version",
        ParseError::Header => {
            "invalid header fields (HTTP/1.1 needs exactly one Host; at most one Content-Length, \
             and no Transfer-Encoding but chunked beside none)"
        }
        _ => "malformed",
    }
}

fn classify(request: Request, message: MessageType) -> Next {
    let stream = (request.method() == Method::GET)
        .then(|| stream_of(request.path()))
        .flatten();
    match (stream, message) {
        (Some(_), MessageType::Payload) => Next::Refused(ApiError::BadRequest(format!(
            "GET {} opens a stream and takes no request body",
            request.path()
        ))),
        (Some(stream), _) => Next::Stream(stream, request),
        (None, MessageType::None) => Next::Request(request, Body::None),
        (None, MessageType::Payload) => Next::Request(request, Body::Delimited),
        (None, MessageType::Stream) => Next::Request(request, Body::UntilClose),
    }
}

fn stream_of(path: &str) -> Option<Stream> {
    match path {
        "/v1/ws" => Some(Stream::WebSocket),
        "/v1/sse" => Some(Stream::Events),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (Next, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let next = next(&mut Codec::new(standalone_config()), &mut buf);
        (next, buf)
    }

    fn status(next: &Next) -> u16 {
        match next {
            Next::Refused(e) => actix_web::ResponseError::status_code(e).as_u16(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_websocket_upgrade_and_an_event_stream_are_streams_wherever_their_target_points() {
        let (ws, rest) = decode(
            b"GET /v1/ws?access_token=t HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x85",
        );
        match ws {
            Next::Stream(Stream::WebSocket, request) => {
                assert_eq!(request.uri().query(), Some("access_token=t"));
                assert!(request.upgrade());
            }
            other => panic!("expected a WebSocket, got {other:?}"),
        }
        assert_eq!(&rest[..], b"\x81\x85", "bytes after the head stay");
        for bytes in [
            &b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"[..],
            b"GET http://h/v1/sse?topic=a HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /v1/sse?topic=a HTTP/1.0\r\n\r\n",
        ] {
            assert!(
                matches!(decode(bytes).0, Next::Stream(Stream::Events, _)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn other_requests_are_answered_here_with_their_body_kind() {
        assert!(matches!(
            decode(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").0,
            Next::Request(_, Body::None)
        ));
        assert!(matches!(
            decode(b"POST /v1/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}").0,
            Next::Request(_, Body::Delimited)
        ));
        assert!(matches!(
            decode(b"POST /v1/publish HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n").0,
            Next::Request(_, Body::Delimited)
        ));
        assert!(matches!(
            decode(b"HEAD /v1/sse HTTP/1.1\r\nHost: h\r\n\r\n").0,
            Next::Request(_, Body::None)
        ));
        assert!(matches!(
            decode(b"GET /v1/wsx HTTP/1.1\r\nHost: h\r\n\r\n").0,
            Next::Request(_, Body::None)
        ));
    }

    #[test]
    fn a_head_that_has_not_all_arrived_waits_for_more() {
        for bytes in [
            &b""[..],
            b"GE",
            b"GET /v1/s",
            b"GET /v1/sse HTTP/1.1\r\nHost: h\r\n",
        ] {
            assert!(matches!(decode(bytes).0, Next::Partial));
        }
    }

    #[test]
    fn heads_http_refuses_are_refused_on_every_path() {
        for path in ["/v1/sse", "/v1/ws", "/v1/publish"] {
            for head in [
                format!("GET {path} HTTP/1.1\r\n\r\n"),
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
                format!(
                    "GET {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
                ),
                format!(
                    "GET {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                ),
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
                format!("GET {path} HTTP/1.1\r\nBad Header\r\n\r\n"),
                format!("GET {path} HTTP/2.0\r\nHost: a\r\n\r\n"),
            ] {
                assert_eq!(status(&decode(head.as_bytes()).0), 400, "{head:?}");
            }
        }
        assert_eq!(
            status(&decode(b"GET /v1/sse HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello").0),
            400,
            "a stream with a body"
        );
    }

    #[test]
    fn heads_over_the_limits_are_refused_as_too_large() {
        let mut long = b"GET /v1/sse?topic=a HTTP/1.1\r\nHost: h\r\n".to_vec();
        while long.len() <= MAX_HEAD_BYTES {
            long.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(status(&decode(&long).0), 431, "incomplete and too long");
        long.extend_from_slice(b"\r\n");
        assert_eq!(status(&decode(&long).0), 431, "complete and too long");
        let mut many = b"GET /v1/sse?topic=a HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&decode(&many).0), 431, "too many fields");
    }

    #[test]
    fn pipelined_requests_come_one_at_a_time() {
        let mut buf = BytesMut::from(
            &b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/sse?topic=a HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        );
        let mut codec = Codec::new(standalone_config());
        assert!(matches!(
            next(&mut codec, &mut buf),
            Next::Request(_, Body::None)
        ));
        assert!(matches!(
            next(&mut codec, &mut buf),
            Next::Stream(Stream::Events, _)
        ));
        assert!(buf.is_empty());
    }
}
