//! Byte-counting connections and a minimal HTTP/1.1 client, for the
//! `poll-cost` scenario: every transport runs over a [`Counted`] TCP stream
//! so that the bytes each one puts on the wire (HTTP and WebSocket framing
//! included, TCP/IP headers not) can be compared per delivered event.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest response head this client reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body this client reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Bytes read and written over a set of connections.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes received (server to client).
    pub read: AtomicU64,
    /// Bytes sent (client to server).
    pub written: AtomicU64,
}

impl Counters {
    /// (received, sent) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// A TCP stream that adds what passes through it to shared [`Counters`].
pub struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: TcpStream, counters: Arc<Counters>) -> Counted {
        Counted { inner, counters }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            self.counters.read.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// The server asked to close the connection (`Connection: close`).
    pub close: bool,
}

/// Why a request failed: `eof_before_answer` (the server had closed the
/// keep-alive connection: reconnect and retry), or another kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(pub String);

impl HttpError {
    /// The server closed the connection before answering anything.
    pub fn is_stale_connection(&self) -> bool {
        self.0 == "eof_before_answer" || self.0 == "write"
    }
}

/// Sends `request` (a complete HTTP/1.1 request without body) and reads
/// the response (`Content-Length` or chunked body).
pub async fn request(stream: &mut Counted, request: &str) -> Result<Response, HttpError> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| HttpError("write".into()))?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HttpError("read".into()))?;
        if n == 0 {
            return Err(HttpError(if buf.is_empty() {
                "eof_before_answer".into()
            } else {
                "eof".into()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError("head_too_large".into()));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError("head".into()))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError("status_line".into()))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut rest = buf[head_end..].to_vec();
    let body = if chunked {
        read_chunked(stream, &mut rest).await?
    } else {
        let length = length.unwrap_or(0);
        if length > MAX_BODY {
            return Err(HttpError("body_too_large".into()));
        }
        while rest.len() < length {
            fill(stream, &mut rest).await?;
        }
        rest.truncate(length);
        rest
    };
    Ok(Response {
        status,
        body,
        close,
    })
}

/// Reads more bytes into `buf`; an error at the end of the stream.
async fn fill(stream: &mut Counted, buf: &mut Vec<u8>) -> Result<(), HttpError> {
    let mut chunk = [0u8; 8192];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|_| HttpError("read".into()))?;
    if n == 0 {
        return Err(HttpError("eof".into()));
    }
    buf.extend_from_slice(&chunk[..n]);
    if buf.len() > MAX_BODY {
        return Err(HttpError("body_too_large".into()));
    }
    Ok(())
}

/// Decodes a chunked body, `buf` holding what was already read.
async fn read_chunked(stream: &mut Counted, buf: &mut Vec<u8>) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + p;
            }
            fill(stream, buf).await?;
        };
        let size_text =
            std::str::from_utf8(&buf[at..line_end]).map_err(|_| HttpError("chunk".into()))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpError("chunk".into()))?;
        at = line_end + 2;
        if size == 0 {
            // The last chunk, then an empty trailer line.
            while buf.len() < at + 2 {
                fill(stream, buf).await?;
            }
            return Ok(body);
        }
        while buf.len() < at + size + 2 {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn answer(raw: &'static [u8]) -> Response {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).await;
            s.write_all(raw).await.expect("write");
        });
        let counters = Arc::new(Counters::default());
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Counted::new(tcp, counters.clone());
        let response = request(&mut conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("an answer");
        server.await.expect("the server ran");
        assert_eq!(counters.get(), (raw.len() as u64, 27));
        response
    }

    #[tokio::test]
    async fn content_length_bodies_are_read() {
        let r = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (200, &b"hello"[..], false)
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (200, &b"hello"[..], true)
        );
    }
}
