//! Raw TCP for the tests that speak HTTP and WebSocket bytes themselves:
//! what a client sends when no library would send it, and what arrives.

use std::time::Duration;

use herald_tests::app::TestApp;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connects")
}

/// Reads until `done` says what arrived is enough, the server closes, or
/// `WAIT` passes; returns what arrived and whether the server closed.
pub async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "nothing more within {WAIT:?}; so far: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (got, false)
}

/// Whether `bytes` hold one whole HTTP answer: its head and as much body as
/// its `Content-Length` says.
pub fn whole_answer(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= end + 4 + length
}

pub async fn assert_healthy(app: &TestApp) {
    let status = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status, 200, "the server stays healthy");
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    count(haystack, needle) > 0
}

/// A WebSocket upgrade request for `/v1/ws?{query}`.
pub fn upgrade(query: &str, extra: &str) -> String {
    format!(
        "GET /v1/ws?{query} HTTP/1.1\r\nHost: herald\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked client text frame.
pub fn client_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x81];
    match u16::try_from(payload.len()) {
        Ok(len) if len < 126 => frame.push(0x80 | len as u8),
        Ok(len) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => panic!("frames under 64 KiB only"),
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Server frames (after the `101` head, when `bytes` start with it):
/// `(opcode, payload)` each.
pub fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let body = if bytes.starts_with(b"HTTP/") {
        match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => &bytes[end + 4..],
            None => return Vec::new(),
        }
    } else {
        bytes
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= body.len() {
        let opcode = body[at] & 0x0F;
        let (len, start) = match body[at + 1] & 0x7F {
            126 if at + 4 <= body.len() => (
                usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]])),
                at + 4,
            ),
            126 | 127 => break,
            len => (usize::from(len), at + 2),
        };
        if start + len > body.len() {
            break;
        }
        frames.push((opcode, body[start..start + len].to_vec()));
        at = start + len;
    }
    frames
}

pub fn json_frames(bytes: &[u8]) -> Vec<Value> {
    server_frames(bytes)
        .into_iter()
        .filter(|(opcode, _)| *opcode == 1)
        .map(|(_, payload)| serde_json::from_slice(&payload).expect("JSON text frames"))
        .collect()
}

pub fn has_op(op: &'static str) -> impl Fn(&[u8]) -> bool {
    move |bytes| json_frames(bytes).iter().any(|f| f["op"] == op)
}

/// A client frame with any first byte (FIN, RSV bits, opcode), masked with
/// `mask` or not, its length in the shortest form (7, 16 or 64 bits).
pub fn client_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut frame = vec![first];
    match payload.len() {
        len if len < 126 => frame.push(masked | len as u8),
        len => match u16::try_from(len) {
            Ok(len) => {
                frame.push(masked | 126);
                frame.extend_from_slice(&len.to_be_bytes());
            }
            Err(_) => {
                frame.push(masked | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        },
    }
    match mask {
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}
