//! The front door and its lean path, over raw TCP: what the server parses
//! itself (the first request head, the WebSocket upgrade, client frames)
//! and how it treats clients that send too little, too much, or several
//! requests at once.

use herald_tests::app::{Backend, Options, spawn_with, unique_topic};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::raw::{
    assert_healthy, client_text, connect, contains, count, has_op, json_frames, read_until,
    server_frames, upgrade,
};

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
        // A WebSocket version the server does not speak: 426 with the one
        // it does (security::websocket checks the header).
        (
            upgrade(&query, "").replace("Version: 13", "Version: 8"),
            "426",
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
async fn long_heads_are_streams_up_to_the_head_limit_and_refused_past_it() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("front");
    let token = app.token("f", &[&topic], &[], 600);
    let sse =
        format!("GET /v1/sse?topic={topic}&access_token={token} HTTP/1.1\r\nHost: herald\r\n");

    // 64 KiB of headers and 90 fields: still an event stream.
    for filler in [
        format!("X-Filler: {}\r\n", "a".repeat(64 * 1024)),
        (0..90)
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

    // Past 128 KiB, or 96 fields: 431 with a problem document, and the
    // server lives.
    for filler in [
        format!("X-Filler: {}\r\n", "a".repeat(130 * 1024)),
        (0..100)
            .map(|i| format!("X-F{i}: v\r\n"))
            .collect::<String>(),
    ] {
        let mut stream = connect(&app).await;
        let _ = stream
            .write_all(format!("{sse}{filler}\r\n").as_bytes())
            .await;
        let (got, closed) = read_until(&mut stream, |_| false).await;
        assert!(closed);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("\"code\":\"head_too_large\""), "{text}");
    }
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
