//! The WebSocket protocol (RFC 6455) as Herald's one decoder speaks it: a
//! table of cases driven over raw TCP, in place of the Autobahn Testsuite
//! (see docs/FUZZING.md). Framing (7, 16 and 64-bit lengths, masking),
//! fragmentation with control frames between fragments, control frames,
//! close codes and the closing handshake, the opening handshake, UTF-8
//! checked across fragments, and the size limit read from the header.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{WAIT, assert_healthy, client_frame, connect, contains, server_frames, upgrade};

const MASK: Option<[u8; 4]> = Some([0x37, 0xFA, 0x21, 0x3D]);

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// How long a server that waits for the client's close frame must keep the
/// connection open after sending its own: long enough to see one that
/// drops the connection at once.
const LINGER_SEEN: Duration = Duration::from_millis(300);

/// How long a table case waits for its close frame before it is reported
/// as failed (and the next case runs).
const CASE_WAIT: Duration = Duration::from_secs(3);

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(first, payload, MASK)
}

/// A masked client close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(FIN | CLOSE, &payload)
}

/// `{"op":"ping"}` padded to `len` bytes of JSON.
fn ping_op(len: usize) -> String {
    let bare = r#"{"op":"ping","pad":""}"#;
    assert!(len >= bare.len());
    format!(
        r#"{{"op":"ping","pad":"{}"}}"#,
        "x".repeat(len - bare.len())
    )
}

/// One raw WebSocket: everything the server sent, head included.
struct Conn {
    stream: TcpStream,
    got: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// Upgrades with `token` and waits for the `authenticated` frame.
    async fn open(app: &TestApp, token: &str) -> Conn {
        let mut conn = Conn::raw(app, &upgrade(&format!("access_token={token}"), "")).await;
        conn.until(|c| c.json().iter().any(|f| f["op"] == "authenticated"))
            .await;
        assert!(
            conn.got.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&conn.got)
        );
        conn
    }

    /// Sends `request` and reads the answer's head.
    async fn raw(app: &TestApp, request: &str) -> Conn {
        let mut conn = Conn {
            stream: connect(app).await,
            got: Vec::new(),
            closed: false,
        };
        conn.send(request.as_bytes()).await;
        conn.until(|c| contains(&c.got, b"\r\n\r\n")).await;
        conn
    }

    fn head(&self) -> String {
        let end = self
            .got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(self.got.len());
        String::from_utf8_lossy(&self.got[..end]).to_ascii_lowercase()
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("sent");
    }

    fn frames(&self) -> Vec<(u8, Vec<u8>)> {
        server_frames(&self.got)
    }

    fn json(&self) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|(opcode, _)| *opcode == TEXT)
            .map(|(_, payload)| serde_json::from_slice(&payload).expect("JSON text frames"))
            .collect()
    }

    fn count_op(&self, op: &str) -> usize {
        self.json().iter().filter(|f| f["op"] == op).count()
    }

    /// Reads until `done`, or the server closes; panics after `WAIT`.
    async fn until(&mut self, done: impl Fn(&Conn) -> bool) {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) && !self.closed {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => panic!(
                    "nothing more within {WAIT:?}; frames so far: {:?}",
                    self.frames()
                ),
            }
        }
    }

    /// The payload of the server's close frame, if one comes within
    /// `within` (or before the server ends the connection).
    async fn close_payload_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        let has_close = |c: &Conn| c.frames().iter().any(|(opcode, _)| *opcode == CLOSE);
        let _ = tokio::time::timeout(within, self.until(has_close)).await;
        self.frames()
            .into_iter()
            .find(|(opcode, _)| *opcode == CLOSE)
            .map(|(_, payload)| payload)
    }

    /// The payload of the server's close frame, once it came.
    async fn close_payload(&mut self) -> Vec<u8> {
        self.until(|c| c.frames().iter().any(|(opcode, _)| *opcode == CLOSE))
            .await;
        self.frames()
            .into_iter()
            .find(|(opcode, _)| *opcode == CLOSE)
            .map(|(_, payload)| payload)
            .unwrap_or_else(|| panic!("no close frame; frames: {:?}", self.frames()))
    }

    /// Whether the server ends the TCP connection within `within`.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    }
}

fn code_of(payload: &[u8]) -> Option<u16> {
    payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// Every way a client breaks RFC 6455 that the decoder checks, and the
/// close code it earns.
fn violations() -> Vec<(String, Vec<u8>, u16)> {
    let cases = vec![
        (
            "an unmasked frame",
            client_frame(FIN | TEXT, br#"{"op":"ping"}"#, None),
            1002,
        ),
        (
            "RSV1 set",
            frame(FIN | 0x40 | TEXT, br#"{"op":"ping"}"#),
            1002,
        ),
        (
            "RSV2 set",
            frame(FIN | 0x20 | TEXT, br#"{"op":"ping"}"#),
            1002,
        ),
        (
            "RSV3 set",
            frame(FIN | 0x10 | TEXT, br#"{"op":"ping"}"#),
            1002,
        ),
        ("RSV1 on a ping", frame(FIN | 0x40 | PING, b""), 1002),
        ("reserved data opcode 3", frame(FIN | 0x3, b""), 1002),
        ("reserved control opcode 0xB", frame(FIN | 0xB, b""), 1002),
        (
            "a continuation with no message started",
            frame(FIN | CONTINUATION, b"x"),
            1002,
        ),
        (
            "a new text frame inside a fragmented message",
            [frame(TEXT, b"{\"op\":"), frame(FIN | TEXT, b"\"ping\"}")].concat(),
            1002,
        ),
        (
            "a new binary frame inside a fragmented message",
            [frame(BINARY, b"ab"), frame(BINARY, b"cd")].concat(),
            1002,
        ),
        ("a fragmented ping", frame(PING, b"p"), 1002),
        (
            "a fragmented close",
            frame(CLOSE, &1000u16.to_be_bytes()),
            1002,
        ),
        (
            "a ping over 125 bytes",
            frame(FIN | PING, &[b'p'; 126]),
            1002,
        ),
        (
            "a close with a 1-byte payload",
            frame(FIN | CLOSE, &[3]),
            1002,
        ),
        (
            "invalid UTF-8 in a text frame",
            frame(FIN | TEXT, b"{\"op\":\"\xFF\"}"),
            1007,
        ),
        (
            "a character cut at the end of a fragmented text message",
            [
                frame(TEXT, "{\"op\":\"é".as_bytes()),
                frame(FIN | CONTINUATION, &[0xC3]),
            ]
            .concat(),
            1007,
        ),
        (
            "invalid UTF-8 in the first fragment, before the rest comes",
            frame(TEXT, b"{\"op\":\"\xC0\xAF"),
            1007,
        ),
        (
            "invalid UTF-8 in a close reason",
            close_frame(1000, b"bye \xFF"),
            1007,
        ),
    ];
    let mut cases: Vec<(String, Vec<u8>, u16)> = cases
        .into_iter()
        .map(|(what, bytes, code)| (what.to_owned(), bytes, code))
        .collect();
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((
            format!("close code {code}, which a client may not send"),
            close_frame(code, b""),
            1002,
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_violation_closes_with_its_rfc_6455_code_and_the_server_waits_for_the_clients_close()
{
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("u", &[">"], &[], 600);
    let cases = violations();
    // Every case runs; the failures are reported together.
    let mut failures = Vec::new();
    for (what, bytes, expected) in &cases {
        let mut conn = Conn::open(&app, &token).await;
        conn.send(bytes).await;
        let Some(payload) = conn.close_payload_within(CASE_WAIT).await else {
            failures.push(format!(
                "{what}: no close frame; frames {:?}",
                conn.frames()
            ));
            continue;
        };
        if code_of(&payload) != Some(*expected) {
            failures.push(format!(
                "{what}: close code {:?}, not {expected} ({})",
                code_of(&payload),
                String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
            ));
            continue;
        }
        if std::str::from_utf8(&payload[2..]).is_err() {
            failures.push(format!("{what}: the reason is not UTF-8"));
        }
        // The server waits for the client's close frame...
        if conn.ends_within(LINGER_SEEN).await {
            failures.push(format!(
                "{what}: the server dropped the connection without waiting for the client's close"
            ));
            continue;
        }
        // ...and ends the connection once it came.
        conn.send(&close_frame(*expected, b"")).await;
        if !conn.ends_within(WAIT).await {
            failures.push(format!(
                "{what}: the server keeps the connection after the client's close"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Counted as protocol errors, not as normal ends.
    let series = r#"herald_disconnects_total{reason="protocol_error",transport="ws"}"#;
    app.wait_for_metric(series, cases.len() as f64, WAIT).await;
    assert_eq!(
        app.metrics()
            .await
            .value(r#"herald_disconnects_total{reason="normal",transport="ws"}"#)
            .unwrap_or(0.0),
        0.0,
        "none counted as a normal end"
    );
    assert_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_with_its_own_code_and_then_the_connection_ends() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("u", &[">"], &[], 600);
    let codes = [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999];
    for code in codes {
        let mut conn = Conn::open(&app, &token).await;
        conn.send(&close_frame(code, "bye é".as_bytes())).await;
        let payload = conn.close_payload().await;
        assert_eq!(code_of(&payload), Some(code), "echoed: {payload:?}");
        assert!(conn.ends_within(WAIT).await, "{code}: then the server ends");
    }
    // A close with no payload is answered with none.
    let mut conn = Conn::open(&app, &token).await;
    conn.send(&frame(FIN | CLOSE, b"")).await;
    assert_eq!(conn.close_payload().await, b"");
    assert!(conn.ends_within(WAIT).await);
    let series = r#"herald_disconnects_total{reason="normal",transport="ws"}"#;
    app.wait_for_metric(series, (codes.len() + 1) as f64, WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_close_frame_the_server_waits_for_the_clients_before_it_ends_tcp() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_FRAME_BYTES", 65_536)).await;
    let token = app.token("u", &[">"], &[], 600);
    // A close Herald decides (4001: a first frame that is not `auth`), and
    // one the decoder decides (1009: a header announcing 2^40 bytes).
    let mut unauthenticated = Conn::raw(&app, &upgrade("", "")).await;
    let mut oversized = Conn::open(&app, &token).await;
    let mut header = vec![FIN | BINARY, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    for (conn, bytes, code) in [
        (
            &mut unauthenticated,
            frame(FIN | TEXT, br#"{"op":"ping"}"#),
            4001,
        ),
        (&mut oversized, header, 1009),
    ] {
        conn.send(&bytes).await;
        assert_eq!(code_of(&conn.close_payload().await), Some(code));
        assert!(
            !conn.ends_within(LINGER_SEEN).await,
            "{code}: the server dropped the connection without waiting for the client's close"
        );
        conn.send(&close_frame(code, b"")).await;
        assert!(
            conn.ends_within(WAIT).await,
            "{code}: the server keeps the connection after the client's close"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_with_7_16_and_64_bit_lengths_and_any_mask_are_read() {
    let app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_FRAME_BYTES", 131_072)).await;
    let token = app.token("u", &[">"], &[], 600);
    let mut conn = Conn::open(&app, &token).await;
    let cases: [(usize, Option<[u8; 4]>); 6] = [
        (30, MASK),
        (125, MASK),
        (126, MASK),
        (65_535, MASK),
        (65_536, MASK),
        (100_000, Some([0, 0, 0, 0])),
    ];
    for (i, (len, mask)) in cases.iter().enumerate() {
        let op = ping_op(*len);
        let bytes = client_frame(FIN | TEXT, op.as_bytes(), *mask);
        let header = match len {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(
            bytes.len(),
            header + 4 + len,
            "{len}: the shortest length form"
        );
        conn.send(&bytes).await;
        conn.until(|c| c.count_op("pong") > i).await;
        assert_eq!(conn.count_op("pong"), i + 1, "{len} bytes: answered");
    }
    assert!(conn.count_op("error") == 0, "{:?}", conn.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_joined_with_control_frames_between_and_pings_echo_their_payload() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("u", &[">"], &[], 600);
    let mut conn = Conn::open(&app, &token).await;

    // A ping with the largest payload a control frame may carry.
    let payload: Vec<u8> = (0..125u8).collect();
    conn.send(&frame(FIN | PING, &payload)).await;
    conn.until(|c| c.frames().iter().any(|(op, _)| *op == PONG))
        .await;
    let pongs: Vec<Vec<u8>> = conn
        .frames()
        .into_iter()
        .filter(|(op, _)| *op == PONG)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(pongs, [payload]);

    // A text message in one-byte fragments, a ping between each two.
    let text = br#"{"op":"ping"}"#;
    let mut bytes = Vec::new();
    for (i, byte) in text.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        let fin = if i == text.len() - 1 { FIN } else { 0 };
        bytes.extend(frame(fin | opcode, &[*byte]));
        if fin == 0 {
            bytes.extend(frame(FIN | PING, format!("p{i}").as_bytes()));
        }
    }
    conn.send(&bytes).await;
    conn.until(|c| c.count_op("pong") == 1).await;
    let pong_payloads: Vec<Vec<u8>> = conn
        .frames()
        .into_iter()
        .filter(|(op, _)| *op == PONG)
        .skip(1)
        .map(|(_, p)| p)
        .collect();
    let expected: Vec<Vec<u8>> = (0..text.len() - 1)
        .map(|i| format!("p{i}").into_bytes())
        .collect();
    assert_eq!(pong_payloads, expected, "each ping answered, in order");
    let pong_at = conn
        .frames()
        .iter()
        .position(|(op, p)| *op == TEXT && p.as_slice() == br#"{"op":"pong"}"#)
        .expect("a pong text frame");
    assert_eq!(
        conn.frames()[..pong_at]
            .iter()
            .filter(|(op, _)| *op == PONG)
            .count(),
        text.len(),
        "the message is answered after the pings inside it"
    );

    // A binary message across five fragments is one message: one answer.
    let mut bytes = frame(BINARY, b"ab");
    for _ in 0..3 {
        bytes.extend(frame(CONTINUATION, b"cd"));
    }
    bytes.extend(frame(FIN | CONTINUATION, b"ef"));
    conn.send(&bytes).await;
    conn.until(|c| c.count_op("error") == 1).await;

    // UTF-8 characters of 2, 3 and 4 bytes cut between fragments at
    // every byte: each message is whole text.
    let op = r#"{"op":"é€𝄞"}"#.as_bytes();
    let mut sent = 0;
    for cut in 1..op.len() {
        let mut bytes = frame(TEXT, &op[..cut]);
        bytes.extend(frame(FIN | CONTINUATION, &op[cut..]));
        conn.send(&bytes).await;
        sent += 1;
    }
    conn.until(|c| c.count_op("error") == 1 + sent).await;
    let unknown: Vec<Value> = conn
        .json()
        .into_iter()
        .filter(|f| f["code"] == "unknown_op")
        .collect();
    assert_eq!(unknown.len(), sent);
    for f in &unknown {
        assert_eq!(f["message"], json!("unknown op \"é€𝄞\""));
    }
    let binary = conn
        .json()
        .into_iter()
        .filter(|f| f["code"] == "invalid_frame")
        .count();
    assert_eq!(binary, 1, "five fragments, one message");
    assert!(
        !conn.frames().iter().any(|(op, _)| *op == CLOSE),
        "the connection stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_refuses_bad_keys_and_versions_and_declines_permessage_deflate() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("u", &[">"], &[], 600);
    let query = format!("access_token={token}");
    let good = upgrade(&query, "");
    let mut failures = Vec::new();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let version = "Sec-WebSocket-Version: 13\r\n";
    for (what, request, status) in [
        ("no key", good.replace(key, ""), "400"),
        (
            "a key that is not 16 bytes of base64",
            good.replace(key, "Sec-WebSocket-Key: c2hvcnQ=\r\n"),
            "400",
        ),
        (
            "a key that is not base64",
            good.replace(key, "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!=\r\n"),
            "400",
        ),
        (
            "version 8",
            good.replace(version, "Sec-WebSocket-Version: 8\r\n"),
            "426",
        ),
        ("no version", good.replace(version, ""), "426"),
    ] {
        let conn = Conn::raw(&app, &request).await;
        let head = conn.head();
        let fine = head.starts_with(&format!("http/1.1 {status} "))
            && head.contains("content-type: application/problem+json")
            && (status != "426" || head.contains("sec-websocket-version: 13\r\n"));
        if !fine {
            failures.push(format!(
                "{what}: expected {status} problem+json, got {head}"
            ));
        }
    }

    // permessage-deflate offered: the 101 agrees to no extension, so a
    // compressed (RSV1) frame is a protocol error.
    let offer = upgrade(
        &query,
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let mut conn = Conn::raw(&app, &offer).await;
    let head = conn.head();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "the RFC 6455 example key's accept: {head}"
    );
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    // `{"op":"ping"}` deflated as permessage-deflate sends it (raw
    // DEFLATE, the sync flush's 00 00 FF FF cut).
    let deflated = [
        0xAA, 0x56, 0xCA, 0x2F, 0x50, 0xB2, 0x52, 0x2A, 0xC8, 0xCC, 0x4B, 0x57, 0xAA, 0x05, 0x00,
    ];
    conn.send(&frame(FIN | 0x40 | TEXT, &deflated)).await;
    let close = conn.close_payload_within(CASE_WAIT).await;
    if close.as_deref().and_then(code_of) != Some(1002) {
        failures.push(format!(
            "a compressed frame: close {close:?}, frames {:?}",
            conn.frames()
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The server's resident memory, in KiB.
fn rss_kib(app: &TestApp) -> u64 {
    let pid = app.pid().expect("the server runs as a process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_messages_over_the_limit_close_with_1009_before_their_payload_is_held() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_FRAME_BYTES", 65_536)).await;
    let token = app.token("u", &[">"], &[], 600);
    let before = rss_kib(&app);
    for first in [FIN | TEXT, FIN | BINARY, TEXT] {
        let mut conn = Conn::open(&app, &token).await;
        // A header announcing 2^40 bytes, then 8 MiB of them.
        let mut header = vec![first, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        conn.send(&header).await;
        let chunk = vec![0x55u8; 64 * 1024];
        for _ in 0..128 {
            if conn.stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
        assert_eq!(
            code_of(&conn.close_payload().await),
            Some(1009),
            "{first:#x}"
        );
    }
    let after = rss_kib(&app);
    let grown = after.saturating_sub(before);
    eprintln!(
        "herald's VmRSS: {before} KiB before, {after} KiB after three headers announcing 2^40 bytes, each followed by up to 8 MiB"
    );
    assert!(grown < 16 * 1024, "the server grew {grown} KiB");

    // A message whose fragments together pass the limit.
    let mut conn = Conn::open(&app, &token).await;
    let mut bytes = frame(TEXT, &[b' '; 40_000]);
    bytes.extend(frame(FIN | CONTINUATION, &[b' '; 40_000]));
    conn.send(&bytes).await;
    assert_eq!(code_of(&conn.close_payload().await), Some(1009));

    let metrics = app.metrics().await;
    assert_eq!(
        metrics
            .value(r#"herald_disconnects_total{reason="normal",transport="ws"}"#)
            .unwrap_or(0.0),
        0.0,
        "too large is not a normal end"
    );
    assert_healthy(&app).await;
}
