//! The front door and its lean path, over raw TCP: what the server parses
//! itself (the first request head, the WebSocket upgrade, client frames)
//! and how it treats clients that send too little, too much, or several
//! requests at once.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connects")
}

/// Reads until `done` says what arrived is enough, the server closes, or
/// `WAIT` passes; returns what arrived and whether the server closed.
async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
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

async fn assert_healthy(app: &TestApp) {
    let status = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status, 200, "the server stays healthy");
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    count(haystack, needle) > 0
}

/// A WebSocket upgrade request for `/v1/ws?{query}`.
fn upgrade(query: &str, extra: &str) -> String {
    format!(
        "GET /v1/ws?{query} HTTP/1.1\r\nHost: herald\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked client text frame.
fn client_text(text: &str) -> Vec<u8> {
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
fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
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

fn json_frames(bytes: &[u8]) -> Vec<Value> {
    server_frames(bytes)
        .into_iter()
        .filter(|(opcode, _)| *opcode == 1)
        .map(|(_, payload)| serde_json::from_slice(&payload).expect("JSON text frames"))
        .collect()
}

fn has_op(op: &'static str) -> impl Fn(&[u8]) -> bool {
    move |bytes| json_frames(bytes).iter().any(|f| f["op"] == op)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_frames_arrive_with_its_head_or_a_byte_at_a_time_is_served() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("front");
    let token = app.token("f", &[&topic], &[], 600);

    // The head, the auth frame and a subscribe frame in one write.
    let mut together = upgrade("", "").into_bytes();
    together.extend(client_text(
        &json!({"op": "auth", "token": token}).to_string(),
    ));
    let subscribe = json!({"op": "subscribe", "topics": [topic]}).to_string();
    together.extend(client_text(&subscribe));
    let mut ws = connect(&app).await;
    ws.write_all(&together).await.expect("sent");
    let (got, closed) = read_until(&mut ws, has_op("subscribed")).await;
    assert!(!closed);
    assert!(
        got.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(contains(
        &got,
        b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    ));
    let ops: Vec<Value> = json_frames(&got)
        .into_iter()
        .map(|f| f["op"].clone())
        .collect();
    assert_eq!(ops, [json!("authenticated"), json!("subscribed")]);

    // Another connection sends the same, one byte per write.
    let mut slow = connect(&app).await;
    for byte in &together {
        slow.write_all(&[*byte]).await.expect("sent");
        slow.flush().await.expect("flushed");
    }
    let (got, _) = read_until(&mut slow, has_op("subscribed")).await;
    assert!(has_op("authenticated")(&got));

    // Both receive an event.
    app.publish(&topic, json!({"n": 1})).await;
    for stream in [&mut ws, &mut slow] {
        let (got, _) = read_until(stream, |b| {
            json_frames(b).iter().any(|f| f["topic"] == json!(topic))
        })
        .await;
        let event = json_frames(&got)
            .into_iter()
            .find(|f| f["topic"] == json!(topic))
            .expect("the event");
        assert_eq!(event["data"], json!({"n": 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_a_valid_upgrade_is_answered_with_a_problem_and_closed() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("f", &["a"], &[], 600);
    let query = format!("access_token={token}");
    for (request, status) in [
        // No Upgrade header.
        (
            format!("GET /v1/ws?{query} HTTP/1.1\r\nHost: herald\r\n\r\n"),
            "400",
        ),
        // A WebSocket version the server does not speak.
        (
            upgrade(&query, "").replace("Version: 13", "Version: 8"),
            "400",
        ),
        // No key.
        (
            upgrade(&query, "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            "400",
        ),
        // A bad token: refused before the upgrade.
        (upgrade("access_token=nope", ""), "401"),
    ] {
        let mut stream = connect(&app).await;
        stream.write_all(request.as_bytes()).await.expect("sent");
        let (got, closed) = read_until(&mut stream, |_| false).await;
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "the connection ends after the answer");
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {text}"
        );
        assert!(text.contains("application/problem+json"), "{text}");
        let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
        let problem: Value = serde_json::from_str(body).expect("a problem document");
        assert!(problem["code"].is_string(), "{problem}");
    }
    assert_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_in_order() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("front");
    let token = app.token("f", &[&topic], &[], 600);
    let mut stream = connect(&app).await;
    // Two plain requests, then an event stream, in one write.
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n\
         GET /readyz HTTP/1.1\r\nHost: herald\r\n\r\n\
         GET /v1/sse?topic={topic}&access_token={token} HTTP/1.1\r\nHost: herald\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).await.expect("sent");
    let (got, closed) = read_until(&mut stream, |b| contains(b, b"retry:")).await;
    assert!(!closed);
    assert_eq!(
        count(&got, b"HTTP/1.1 200 "),
        3,
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(contains(&got, b"text/event-stream"));
    app.publish(&topic, json!({"n": 2})).await;
    let (got, _) = read_until(&mut stream, |b| contains(b, b"\"n\":2")).await;
    assert!(contains(&got, b"data: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_past_the_lean_limits_are_served_by_the_general_server() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("front");
    let token = app.token("f", &[&topic], &[], 600);
    let sse =
        format!("GET /v1/sse?topic={topic}&access_token={token} HTTP/1.1\r\nHost: herald\r\n");

    // 12 KiB of headers (past the lean path's 8 KiB) and 60 fields (past
    // its 48): still an event stream.
    for filler in [
        format!("X-Filler: {}\r\n", "a".repeat(12 * 1024)),
        (0..60)
            .map(|i| format!("X-F{i}: v\r\n"))
            .collect::<String>(),
    ] {
        let mut stream = connect(&app).await;
        stream
            .write_all(format!("{sse}{filler}\r\n").as_bytes())
            .await
            .expect("sent");
        let (got, closed) = read_until(&mut stream, |b| contains(b, b"retry:")).await;
        assert!(!closed);
        assert!(
            got.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    // 64 KiB of head: the general server's answer, whatever it is (it
    // takes heads this long), and the server lives.
    let mut stream = connect(&app).await;
    let huge = format!("{sse}X-Filler: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = stream.write_all(huge.as_bytes()).await;
    let (got, _) = read_until(&mut stream, |b| contains(b, b"\r\n\r\n")).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_sending_are_timed_out() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_REQUEST_HEAD_TIMEOUT_SECS", 1)
            .env("HERALD_AUTH_TIMEOUT_SECS", 1),
    )
    .await;
    // Nothing at all, and half a lean head: 408, then closed.
    for sent in ["", "GET /v1/sse?topic=a HTTP/1.1\r\nHost: herald\r\n"] {
        let mut stream = connect(&app).await;
        stream.write_all(sent.as_bytes()).await.expect("sent");
        let (got, closed) = read_until(&mut stream, |_| false).await;
        assert!(closed);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408 "), "{sent:?}: {text}");
    }
    // A whole WebSocket head, then nothing: the socket is upgraded, and
    // closed with 4001 once the time to authenticate has passed.
    let mut stream = connect(&app).await;
    stream
        .write_all(upgrade("", "").as_bytes())
        .await
        .expect("sent");
    let (got, _) = read_until(&mut stream, |b| {
        server_frames(b).iter().any(|(opcode, _)| *opcode == 8)
    })
    .await;
    assert!(got.starts_with(b"HTTP/1.1 101 "));
    let close = server_frames(&got)
        .into_iter()
        .find(|(opcode, _)| *opcode == 8)
        .expect("a close frame");
    assert_eq!(&close.1[..2], &4001u16.to_be_bytes());
}
