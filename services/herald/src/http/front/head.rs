//! The request head as the front door sees it: enough to decide whether a
//! connection opens a long-lived stream (`GET /v1/ws`, `GET /v1/sse`) that
//! the lean path serves, or goes to the general HTTP server. Sans-IO: bytes
//! in, a decision out.
//!
//! The lean path takes only plain requests: HTTP/1.1 `GET` of one of the
//! two paths, without a body (`Content-Length` other than `0`,
//! `Transfer-Encoding`, `Expect`). Anything else, malformed heads included,
//! goes to the general server, which answers it as it always has.

/// Most header fields the lean path reads; a head with more goes to the
/// general server (which answers `431`).
pub const MAX_HEADERS: usize = 48;

/// Longest head the lean path reads, in bytes; a longer one goes to the
/// general server.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The long-lived endpoints the lean path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    WebSocket,
    Events,
}

/// A request head the lean path takes, copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub stream: Stream,
    /// The request target as sent (path and query).
    pub target: String,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Whether the client asked for a connection upgrade.
    pub upgrade: bool,
    /// Bytes of the head, its blank line included.
    pub len: usize,
}

/// What the bytes read so far decide.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspect {
    /// The head is not complete yet; read more.
    Partial,
    /// Not for the lean path: hand the connection, and the bytes read, to
    /// the general server.
    General,
    /// A long-lived stream the lean path serves.
    Lean(Head),
}

/// Looks at the bytes a connection sent first.
pub fn inspect(buf: &[u8]) -> Inspect {
    // The request line decides early: a request for anything else never
    // waits for its whole head here.
    if !could_be_lean(buf) {
        return Inspect::General;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Inspect::Partial,
        _ => return Inspect::General,
    };
    if len > MAX_HEAD_BYTES || request.method != Some("GET") || request.version != Some(1) {
        return Inspect::General;
    }
    let Some(target) = request.path else {
        return Inspect::General;
    };
    let Some(stream) = stream_of(target) else {
        return Inspect::General;
    };
    let mut headers = Vec::with_capacity(request.headers.len());
    let mut upgrade = false;
    for field in request.headers.iter() {
        let name = field.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" if field.value.trim_ascii() != b"0" => return Inspect::General,
            "transfer-encoding" | "expect" => return Inspect::General,
            "connection" => {
                upgrade |= field
                    .value
                    .split(|b| *b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
            }
            _ => {}
        }
        headers.push((name, field.value.to_vec()));
    }
    Inspect::Lean(Head {
        stream,
        target: target.to_owned(),
        headers,
        upgrade,
        len,
    })
}

/// Whether `buf` can still turn out to be a lean request (its request line,
/// as far as it has arrived, is `GET /v1/ws` or `GET /v1/sse`).
fn could_be_lean(buf: &[u8]) -> bool {
    const LINES: [&[u8]; 2] = [b"GET /v1/ws", b"GET /v1/sse"];
    let end = match buf.iter().position(|b| *b == b' ') {
        // The end of the target: its query, the version, or what has arrived.
        Some(space) => buf[space + 1..]
            .iter()
            .position(|b| matches!(b, b' ' | b'?' | b'\r'))
            .map_or(buf.len(), |p| space + 1 + p),
        None => buf.len(),
    };
    let line = &buf[..end];
    LINES.iter().any(|wanted| {
        if line.len() < wanted.len() {
            wanted.starts_with(line)
        } else {
            line == *wanted
        }
    })
}

fn stream_of(target: &str) -> Option<Stream> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        "/v1/ws" => Some(Stream::WebSocket),
        "/v1/sse" => Some(Stream::Events),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lean(bytes: &[u8]) -> Head {
        match inspect(bytes) {
            Inspect::Lean(head) => head,
            other => panic!("expected the lean path, got {other:?}"),
        }
    }

    #[test]
    fn a_websocket_upgrade_and_an_event_stream_take_the_lean_path() {
        let ws = lean(
            b"GET /v1/ws?access_token=t HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(ws.stream, Stream::WebSocket);
        assert_eq!(ws.target, "/v1/ws?access_token=t");
        assert!(ws.upgrade);
        assert_eq!(
            ws.headers[1],
            ("connection".into(), b"keep-alive, Upgrade".to_vec())
        );
        let bytes = b"GET /v1/sse?topic=a HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n";
        let sse = lean(bytes);
        assert_eq!(sse.stream, Stream::Events);
        assert!(!sse.upgrade);
        assert_eq!(sse.len, bytes.len());
    }

    #[test]
    fn other_requests_go_to_the_general_server_as_soon_as_the_line_tells() {
        for bytes in [
            &b"POST /v1/publish HTTP/1.1\r\n"[..],
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /v1/wsx HTTP/1.1\r\n\r\n",
            b"GET /v1/sse/x HTTP/1.1\r\n\r\n",
            b"GET /v1/poll?topic=a",
            b"HEAD /v1/sse HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(
                inspect(bytes),
                Inspect::General,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_head_that_has_not_all_arrived_waits_for_more() {
        assert_eq!(inspect(b""), Inspect::Partial);
        assert_eq!(inspect(b"GE"), Inspect::Partial);
        assert_eq!(inspect(b"GET /v1/s"), Inspect::Partial);
        assert_eq!(
            inspect(b"GET /v1/sse?topic=a HTTP/1.1\r\nHost: h\r\n"),
            Inspect::Partial
        );
    }

    #[test]
    fn bodies_old_versions_and_oversized_heads_go_to_the_general_server() {
        for bytes in [
            &b"GET /v1/sse HTTP/1.0\r\n\r\n"[..],
            b"GET /v1/sse HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /v1/sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/ws HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v1/sse HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(
                inspect(bytes),
                Inspect::General,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut long = b"GET /v1/sse?topic=a HTTP/1.1\r\n".to_vec();
        while long.len() <= MAX_HEAD_BYTES {
            long.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert_eq!(inspect(&long), Inspect::General, "too long to be complete");
        let mut many = b"GET /v1/sse?topic=a HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(inspect(&many), Inspect::General, "too many fields");
    }

    #[test]
    fn pipelined_bytes_after_the_head_are_not_part_of_it() {
        let first = b"GET /v1/ws HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut bytes = first.to_vec();
        bytes.extend_from_slice(b"\x81\x85abcd");
        assert_eq!(lean(&bytes).len, first.len());
    }
}
