//! The connection path: every request of every connection goes through one
//! parser and one HTTP/1.1 server, and every stream, however it arrives, is
//! driven by the fuzzed lean path. Each test failed on the binary before
//! the one connection path (the second request of a keep-alive connection
//! was served by actix-http and actix-ws).

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{
    WAIT, assert_healthy, client_text, connect, contains, count, has_op, json_frames, read_until,
    server_frames, upgrade, whole_answer,
};

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

/// The answer to one request (head and body) on a kept-alive connection.
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("sent");
    let (got, closed) = read_until(stream, whole_answer).await;
    assert!(!closed, "the connection stays open");
    String::from_utf8(got).expect("a textual answer")
}

fn body_of(answer: &str) -> Value {
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// Every way a WebSocket request used to reach actix-ws instead of the lean
/// path: `(what comes before the upgrade on the connection, the request
/// target, extra header lines)`.
fn arrivals(query: &str) -> Vec<(String, String, String)> {
    let plain = format!("/v1/ws?{query}");
    vec![
        (
            "GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n".into(),
            plain.clone(),
            String::new(),
        ),
        (
            String::new(),
            format!("http://herald{plain}"),
            String::new(),
        ),
        (
            String::new(),
            plain.clone(),
            (0..60).map(|i| format!("X-F{i}: v\r\n")).collect(),
        ),
        (
            String::new(),
            plain,
            format!("X-Filler: {}\r\n", "a".repeat(12 * 1024)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_a_terabyte_is_refused_at_once_however_the_websocket_arrived() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_FRAME_BYTES", 65536)).await;
    let before = rss_kib(&app);
    for (earlier, target, extra) in arrivals("") {
        let mut stream = connect(&app).await;
        if !earlier.is_empty() {
            let answer = exchange(&mut stream, &earlier).await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        }
        let head =
            upgrade("", &extra).replace("GET /v1/ws? HTTP/1.1", &format!("GET {target} HTTP/1.1"));
        stream.write_all(head.as_bytes()).await.expect("sent");
        let (got, _) = read_until(&mut stream, |b| contains(b, b"\r\n\r\n")).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101 "),
            "{target}: {}",
            String::from_utf8_lossy(&got)
        );
        // A binary frame of 2^40 bytes, masked, then 4 MiB of it.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        let _ = stream.write_all(&frame).await;
        let chunk = vec![0x55u8; 64 * 1024];
        for _ in 0..64 {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let (got, _) = read_until(&mut stream, |b| {
            server_frames(b).iter().any(|(opcode, _)| *opcode == 8)
        })
        .await;
        let close = server_frames(&got)
            .into_iter()
            .find(|(opcode, _)| *opcode == 8)
            .expect("a close frame");
        assert_eq!(&close.1[..2], &1009u16.to_be_bytes(), "{target}: too big");
    }
    let grown = rss_kib(&app).saturating_sub(before);
    assert!(grown < 32 * 1024, "the server grew {grown} KiB");
    let streams = app.metrics().await;
    assert_eq!(
        streams.get("herald_streams_accepted_total{request=\"later\"}"),
        1.0,
        "the upgrade after /healthz took the stream path"
    );
    assert_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_then_a_stream_on_the_same_connection_is_served_as_a_stream() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("reuse");
    let token = app.token("u", &[&topic], &[], 600);
    let ticket_request = |token: &str| {
        format!(
            "POST /v1/tickets HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };

    // The browser's flow: a ticket, then an EventSource on the same connection.
    let mut sse = connect(&app).await;
    let ticket = body_of(&exchange(&mut sse, &ticket_request(&token)).await)["ticket"]
        .as_str()
        .expect("a ticket")
        .to_owned();
    sse.write_all(
        format!("GET /v1/sse?topic={topic}&ticket={ticket} HTTP/1.1\r\nHost: herald\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("sent");
    let (got, _) = read_until(&mut sse, |b| contains(b, b"retry:")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // And a WebSocket with a ticket.
    let mut ws = connect(&app).await;
    let ticket = body_of(&exchange(&mut ws, &ticket_request(&token)).await)["ticket"]
        .as_str()
        .expect("a ticket")
        .to_owned();
    ws.write_all(upgrade(&format!("ticket={ticket}"), "").as_bytes())
        .await
        .expect("sent");
    ws.write_all(&client_text(
        &json!({"op": "subscribe", "topics": [topic]}).to_string(),
    ))
    .await
    .expect("sent");
    let (got, _) = read_until(&mut ws, has_op("subscribed")).await;
    assert!(got.starts_with(b"HTTP/1.1 101 "));

    app.publish(&topic, json!({"n": 1})).await;
    let (got, _) = read_until(&mut sse, |b| contains(b, b"\"n\":1")).await;
    assert!(contains(&got, b"data: "));
    let (got, _) = read_until(&mut ws, |b| {
        json_frames(b).iter().any(|f| f["topic"] == json!(topic))
    })
    .await;
    assert!(!got.is_empty());
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get("herald_streams_accepted_total{request=\"later\"}"),
        2.0
    );
    assert_eq!(
        metrics.get("herald_streams_accepted_total{request=\"first\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_answered_408_and_its_connection_closed() {
    let app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_REQUEST_BODY_TIMEOUT_SECS", 1)).await;
    let topic = unique_topic("slow");
    let token = app.token("p", &[], &[&topic], 600);
    // Many at once: none holds the server.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = connect(&app).await;
        stream
            .write_all(
                format!(
                    "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"topic\":"
                )
                .as_bytes(),
            )
            .await
            .expect("sent");
        slow.push(stream);
    }
    assert_healthy(&app).await;
    for stream in &mut slow {
        let (got, closed) = read_until(stream, |_| false).await;
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "closed after the answer");
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert_eq!(body_of(&text)["code"], "request_timeout");
    }
    // Nothing was stored.
    let polled: Value = app
        .http
        .get(format!(
            "{}/v1/poll?topic={topic}&since={topic}:0",
            app.base_url
        ))
        .bearer_auth(app.token("r", &[&topic], &[], 60))
        .send()
        .await
        .expect("polls")
        .json()
        .await
        .expect("JSON");
    assert_eq!(polled["events"], json!([]), "{polled}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_writes_its_whole_oversized_body_before_reading_gets_its_413() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_BODY_BYTES", 4096)).await;
    let token = app.token("p", &[], &[">"], 600);
    // Larger than the socket buffers: the client blocks writing until the
    // server reads, as a client that sends before reading does.
    let body = format!("{{\"topic\":\"big\",\"data\":\"{}\"}}", "x".repeat(8 << 20));
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        let head = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("sent");
        // Writing may fail only once the server has closed; it must not.
        tokio::time::timeout(WAIT, stream.write_all(body.as_bytes()))
            .await
            .expect("the server reads (and drops) the rest of the body")
            .expect("the server does not reset the connection while the client writes");
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("the answer arrives")
            .expect("the answer arrives whole, then the end of the stream");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert_eq!(body_of(&text)["code"], "payload_too_large");
    }
    assert_eq!(
        app.metrics()
            .await
            .get("herald_http_lingering_closes_total"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_http_refuses_are_refused_alike_on_stream_paths_and_others() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.token("u", &["a"], &[], 600);
    for path in [
        format!("/v1/sse?topic=a&access_token={token}"),
        format!("/v1/ws?access_token={token}"),
        "/healthz".to_owned(),
    ] {
        for fields in [
            "",
            "Host: a\r\nHost: b\r\n",
            "Host: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n",
            "Host: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let mut stream = connect(&app).await;
            let request = format!(
                "GET {path} HTTP/1.1\r\n{fields}Connection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("sent");
            let (got, closed) = read_until(&mut stream, |_| false).await;
            let text = String::from_utf8_lossy(&got);
            assert!(closed);
            assert!(
                text.starts_with("HTTP/1.1 400 "),
                "{path} {fields:?}: {text}"
            );
            assert_eq!(body_of(&text)["code"], "bad_request", "{text}");
        }
    }
    assert_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_only_for_a_body_the_handler_reads() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("cont");
    let token = app.token("p", &[], &[&topic], 600);
    let body = json!({"topic": topic, "data": 1}).to_string();
    let head = |token: &str| {
        format!(
            "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    let mut stream = connect(&app).await;
    stream
        .write_all(head(&token).as_bytes())
        .await
        .expect("sent");
    let (got, _) = read_until(&mut stream, |b| contains(b, b"\r\n\r\n")).await;
    assert_eq!(&got[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    let answer = exchange(&mut stream, &body).await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");

    // Refused credentials: the answer comes without asking for the body.
    let mut stream = connect(&app).await;
    stream
        .write_all(head("nope").as_bytes())
        .await
        .expect("sent");
    let (got, _) = read_until(&mut stream, |b| contains(b, b"\r\n\r\n")).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_carries_chunked_and_sized_bodies_then_a_stream() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("ka");
    let publisher = app.token("p", &[], &[&topic], 600);
    let reader = app.token("r", &[&topic], &[], 600);
    let mut stream = connect(&app).await;
    for n in 1..=2 {
        let body = json!({"topic": topic, "data": n}).to_string();
        let sized = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {publisher}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(&mut stream, &sized).await;
        assert_eq!(body_of(&answer)["seq"], n, "{answer}");
    }
    let body = json!({"topic": topic, "data": 3}).to_string();
    let (first, second) = body.split_at(5);
    let chunked = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {publisher}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let answer = exchange(&mut stream, &chunked).await;
    assert_eq!(body_of(&answer)["seq"], 3, "{answer}");
    stream
        .write_all(
            format!(
                "GET /v1/sse?topic={topic}&since={topic}:0&access_token={reader} HTTP/1.1\r\n\
                 Host: herald\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("sent");
    let (got, _) = read_until(&mut stream, |b| count(b, b"data: ") >= 3).await;
    assert!(contains(&got, b"text/event-stream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_authenticate_do_not_keep_a_subscriber_out_on_any_transport() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_MAX_CONNECTIONS", 20)
            .env("HERALD_MAX_UNAUTHENTICATED", 41)
            .env("HERALD_AUTH_TIMEOUT_SECS", 60),
    )
    .await;
    let topic = unique_topic("crowd");
    let token = app.token("u", &[&topic], &[], 600);
    // Twice the connection limit of WebSockets that give no credentials
    // and never send their `auth` frame.
    let mut waiting = Vec::new();
    for i in 0..40 {
        let mut stream = connect(&app).await;
        stream
            .write_all(upgrade("", "").as_bytes())
            .await
            .expect("sent");
        let (got, closed) = read_until(&mut stream, |b| contains(b, b"\r\n\r\n")).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101 ") && !closed,
            "socket {i}: {}",
            String::from_utf8_lossy(&got)
        );
        waiting.push(stream);
    }

    // A subscriber is served on each transport: a WebSocket, an event
    // stream, and a long poll (which holds a place while it waits).
    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    let mut sse = app
        .sse(
            &format!("topic={topic}&since={topic}:0&access_token={token}"),
            None,
        )
        .await;
    let poll = {
        let http = app.http.clone();
        let url = format!(
            "{}/v1/poll?topic={topic}&since={topic}:0&wait=20",
            app.base_url
        );
        let token = token.clone();
        tokio::spawn(async move {
            let response = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("the poll is answered");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    // The long poll is waiting once the node counts it.
    app.wait_for_metric(r#"herald_connections_open{transport="poll"}"#, 1.0, WAIT)
        .await;
    app.publish(&topic, json!({"n": 1})).await;
    let event = ws.next_event().await;
    assert_eq!(event["data"], json!({"n": 1}));
    let message = sse.next().await.expect("the stream is open");
    assert_eq!(
        message.json()["data"],
        json!({"n": 1}),
        "{:?}",
        message.data
    );
    let (status, polled) = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the poll answers in time")
        .expect("the poll task ends");
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["events"][0]["data"], json!({"n": 1}), "{polled}");

    // The waiting room has its own bound: past it, an upgrade without
    // credentials is refused before the upgrade.
    let mut last = connect(&app).await;
    last.write_all(upgrade("", "").as_bytes())
        .await
        .expect("sent");
    let (got, _) = read_until(&mut last, |b| contains(b, b"\r\n\r\n")).await;
    assert!(got.starts_with(b"HTTP/1.1 101 "), "the 41st fits");
    let mut over = connect(&app).await;
    over.write_all(upgrade("", "").as_bytes())
        .await
        .expect("sent");
    let (got, _) = read_until(&mut over, |b| contains(b, b"}")).await;
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert_eq!(body_of(&answer)["code"], "unavailable", "{answer}");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("herald_ws_waiting_auth"), 41.0);
    assert_eq!(metrics.get("herald_ws_waiting_auth_refused_total"), 1.0);

    // A waiting socket that authenticates takes a connection's place.
    let first = &mut waiting[0];
    first
        .write_all(&client_text(
            &json!({"op": "auth", "token": token}).to_string(),
        ))
        .await
        .expect("sent");
    let (got, _) = read_until(first, has_op("authenticated")).await;
    assert!(!json_frames(&got).is_empty());
    assert_eq!(app.metrics().await.get("herald_ws_waiting_auth"), 40.0);
    drop(last);
}
