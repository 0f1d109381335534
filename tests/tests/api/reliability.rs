//! Defects found in review, each pinned by a test that failed before its fix:
//! polling with a cursor beyond the head, a busy topic starving the others
//! in a poll, revocation boundaries, stalled clients holding connections.

use std::time::{Duration, Instant};

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use serde_json::{Value, json};

crate::on_both_stores!(
    a_poll_cursor_beyond_the_head_is_a_reset_and_the_cursor_moves_back,
    a_busy_topic_does_not_starve_the_others_in_a_poll,
    resubscribing_while_a_replay_is_read_replays_nothing_unasked,
    a_subject_revocation_spares_tokens_of_its_own_second_and_refuses_tokens_without_iat,
);

/// Publishes `n` events to `topic` in one batch.
async fn publish_batch(app: &TestApp, topic: &str, n: u64) {
    let body: Vec<Value> = (1..=n)
        .map(|i| json!({"topic": topic, "data": i}))
        .collect();
    let response = app.publish_as(&app.root_token(), &json!(body)).await;
    assert_eq!(response.status(), 201, "the batch is stored");
}

fn topics_of(events: &Value) -> Vec<(String, u64)> {
    events
        .as_array()
        .expect("events is an array")
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().expect("topic").to_owned(),
                e["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

async fn a_poll_cursor_beyond_the_head_is_a_reset_and_the_cursor_moves_back(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let token = app.root_token();
    let (topic, empty) = (unique_topic("ahead"), unique_topic("ahead.zempty"));
    publish_batch(&app, &topic, 3).await;

    // Short poll: the answer says events 4 on are gone, and stands at the head.
    let (status, body) = app
        .poll(&format!(
            "topic={topic}&topic={empty}&since={topic}:50,{empty}:7&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    let mut resets = body["resets"].as_array().expect("resets").clone();
    resets.sort_by_key(|r| r["topic"].as_str().map(str::to_owned));
    let mut expected = vec![
        json!({"topic": topic, "from": 4}),
        json!({"topic": empty, "from": 1}),
    ];
    expected.sort_by_key(|r| r["topic"].as_str().map(str::to_owned));
    assert_eq!(resets, expected, "{body}");
    assert_eq!(body["cursor"], format!("{topic}:3,{empty}:0"), "{body}");

    // A long poll answers the reset at once instead of waiting.
    let asked = Instant::now();
    let (status, body) = app
        .poll(&format!(
            "topic={topic}&since={topic}:50&wait=20&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resets"],
        json!([{"topic": topic, "from": 4}]),
        "{body}"
    );
    assert_eq!(body["cursor"], format!("{topic}:3"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered at once, not after its wait: {:?}",
        asked.elapsed()
    );

    // From the returned cursor, the next event is delivered.
    app.publish(&topic, json!("fourth")).await;
    let (_, body) = app
        .poll(&format!(
            "topic={topic}&since={topic}:3&access_token={token}"
        ))
        .await;
    assert_eq!(
        topics_of(&body["events"]),
        vec![(topic.clone(), 4)],
        "{body}"
    );
    assert_eq!(body["resets"], json!([]), "{body}");
}

async fn a_busy_topic_does_not_starve_the_others_in_a_poll(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let token = app.root_token();
    let (busy, quiet, idle) = (
        unique_topic("busy"),
        unique_topic("quiet"),
        unique_topic("idle"),
    );
    publish_batch(&app, &busy, 30).await;
    publish_batch(&app, &quiet, 3).await;

    // The busy topic is requested first, and alone has more than `limit`.
    let (status, body) = app
        .poll(&format!(
            "topic={busy}&topic={idle}&topic={quiet}&since={busy}:0,{quiet}:0,{idle}:0\
             &limit=10&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let got = topics_of(&body["events"]);
    let of = |t: &str| -> Vec<u64> {
        got.iter()
            .filter(|(topic, _)| topic == t)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(got.len(), 10, "the limit is used: {body}");
    assert_eq!(
        of(&quiet),
        vec![1, 2, 3],
        "the quiet topic is served: {body}"
    );
    assert_eq!(of(&busy), (1..=7).collect::<Vec<_>>(), "{body}");
    assert_eq!(body["more"], true, "{body}");
    assert_eq!(
        body["cursor"],
        format!("{busy}:7,{idle}:0,{quiet}:3"),
        "{body}"
    );
    // Grouped by topic in the order requested.
    assert_eq!(got[0].0, busy, "{body}");
    assert_eq!(got[7].0, quiet, "{body}");

    // Resuming from the cursor continues exactly, nothing lost or repeated.
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();
    let (_, body) = app
        .poll(&format!(
            "topic={busy}&topic={idle}&topic={quiet}&since={cursor}&limit=1000&access_token={token}"
        ))
        .await;
    assert_eq!(
        topics_of(&body["events"]),
        (8..=30).map(|s| (busy.clone(), s)).collect::<Vec<_>>(),
        "{body}"
    );
    assert_eq!(body["more"], false, "{body}");

    // Fewer events than topics: each poll still returns at most `limit`.
    let (_, body) = app
        .poll(&format!(
            "topic={busy}&topic={quiet}&since={busy}:0,{quiet}:0&limit=1&access_token={token}"
        ))
        .await;
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["more"], true, "{body}");
}

async fn resubscribing_while_a_replay_is_read_replays_nothing_unasked(backend: Backend) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_with(Options::new(backend)).await;
    let token = app.root_token();
    let topic = unique_topic("resub");
    publish_batch(&app, &topic, 300).await;
    let mut ws = app.ws(Some(&token)).await;
    assert_eq!(ws.next_json().await["op"], "authenticated");

    // Subscribe from the start, then at once unsubscribe and subscribe again
    // live only: the first subscription's head and store reads are still
    // under way when the second one begins.
    for frame in [
        json!({"op": "subscribe", "topics": [topic], "since": format!("{topic}:0")}),
        json!({"op": "unsubscribe", "topics": [topic]}),
        json!({"op": "subscribe", "topics": [topic]}),
    ] {
        ws.stream
            .feed(Message::text(frame.to_string()))
            .await
            .expect("the frame is queued");
    }
    ws.stream.flush().await.expect("the frames are sent");

    // Events before `unsubscribed` were asked for; none may follow it.
    loop {
        let frame = ws.next_json().await;
        if frame["op"] == "unsubscribed" {
            break;
        }
        assert!(
            ["event", "subscribed"].contains(&frame["op"].as_str().unwrap_or_default()),
            "{frame}"
        );
    }
    let confirmed = ws.next_json().await;
    assert_eq!(confirmed["op"], "subscribed", "{confirmed}");
    assert_eq!(confirmed["heads"], format!("{topic}:300"), "{confirmed}");
    app.publish(&topic, json!("live")).await;
    let next = ws.next_json().await;
    assert_eq!(next["op"], "event", "{next}");
    assert_eq!(
        (next["seq"].as_u64(), &next["data"]),
        (Some(301), &json!("live")),
        "the live-only subscription gets the live event, and nothing replayed: {next}"
    );
    // And nothing else arrives (no late replay of the first subscription).
    ws.stream
        .send(Message::text(json!({"op": "ping"}).to_string()))
        .await
        .expect("ping sent");
    let pong = ws.next_json().await;
    assert_eq!(pong["op"], "pong", "{pong}");
}

/// A token of `sub` that may publish everywhere, issued at `iat` (or without).
fn token_issued(sub: &str, iat: Option<i64>) -> String {
    herald_tests::app::token_with(herald::auth::Claims {
        sub: sub.into(),
        exp: (herald_tests::app::now_secs() + 3600) as u64,
        iat: iat.map(|i| i as u64),
        herald: herald::auth::HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: false,
        },
        ..Default::default()
    })
}

async fn a_subject_revocation_spares_tokens_of_its_own_second_and_refuses_tokens_without_iat(
    backend: Backend,
) {
    // The leeway admits the token dated a second after the revocation
    // while that second has not come yet.
    let mut app = spawn_with(Options::new(backend).env("HERALD_JWT_LEEWAY_SECS", 5)).await;
    let topic = unique_topic("revoke.edge");
    let admin = app.admin_token();
    let response = app
        .http
        .post(format!("{}/v1/admin/revoke", app.base_url))
        .bearer_auth(&admin)
        .json(&json!({"sub": "edge"}))
        .send()
        .await
        .expect("the revoke request is answered");
    assert_eq!(response.status(), 200);
    let at = response.json::<Value>().await.expect("json")["at"]
        .as_i64()
        .expect("the revocation's second");

    for round in ["as revoked", "after a restart, from the store"] {
        let status = |iat: Option<i64>| {
            let (app, topic) = (&app, &topic);
            async move {
                app.publish_as(
                    &token_issued("edge", iat),
                    &json!({"topic": topic, "data": 1}),
                )
                .await
                .status()
                .as_u16()
            }
        };
        assert_eq!(status(Some(at - 1)).await, 401, "{round}: issued before");
        assert_eq!(status(None).await, 401, "{round}: no iat, age unknown");
        assert_eq!(
            status(Some(at)).await,
            201,
            "{round}: a log-in in the revocation's own second works"
        );
        assert_eq!(status(Some(at + 1)).await, 201, "{round}: issued after");
        app.restart().await.expect("herald restarts");
    }
}

/// Socket inodes of the descriptors process `pid` holds open.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors can be listed")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Whether process `pid` holds a descriptor of a TCP connection to the
/// client port `peer_port` (from `/proc/net/tcp`).
fn holds_connection_to(pid: u32, peer_port: u16) -> bool {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string("/proc/net/tcp").expect("the TCP table is readable");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let remote_port = fields
            .get(2)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let inode = fields.get(9).and_then(|i| i.parse::<u64>().ok());
        remote_port == Some(peer_port) && inode.is_some_and(|i| inodes.contains(&i))
    })
}

/// Connects with a small receive buffer, sends `request`, and never reads.
async fn stalled_client(app: &TestApp, request: String) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(4_096)
        .expect("a small receive buffer");
    let mut stream = socket
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .expect("connects");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    stream
}

async fn a_client_that_never_reads_is_cut_off_within_the_write_timeout(
    transport: &str,
    write_timeout_secs: u64,
) {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_WRITE_TIMEOUT_SECS", write_timeout_secs)
            .env("HERALD_MAX_CONNECTIONS", 1)
            // Queue bounds far above what is published: only the write
            // timeout can end this connection.
            .env("HERALD_QUEUE_BYTES", 256 << 20)
            .env("HERALD_QUEUE_EVENTS", 100_000),
    )
    .await;
    let pid = app.pid().expect("the server runs");
    let token = app.root_token();
    let topic = unique_topic("stall");
    // The publisher's own connection is part of the baseline.
    app.publish(&topic, json!("warm-up")).await;
    let baseline = socket_inodes(pid).len();

    let request = match transport {
        "sse" => format!(
            "GET /v1/sse?topic={topic}&access_token={token} HTTP/1.1\r\nHost: herald\r\n\r\n"
        ),
        _ => format!(
            "GET /v1/ws?access_token={token} HTTP/1.1\r\nHost: herald\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    };
    let mut client = stalled_client(&app, request).await;
    if transport == "ws" {
        // Subscribe through the raw socket: a masked text frame.
        use tokio::io::AsyncWriteExt;
        let payload = json!({"op": "subscribe", "topics": [topic]}).to_string();
        let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        assert!(payload.len() < 126, "a short frame");
        frame.extend_from_slice(payload.as_bytes());
        client.write_all(&frame).await.expect("subscribe sent");
    }
    app.wait_for_metric(
        &format!(r#"herald_connections_open{{transport="{transport}"}}"#),
        1.0,
        Duration::from_secs(15),
    )
    .await;
    let client_port = client.local_addr().expect("bound").port();
    assert!(
        holds_connection_to(pid, client_port),
        "the connection holds a descriptor"
    );
    // Far more than the socket buffers hold: writes stall (a WebSocket's
    // subscribe is in place after the first batch at the latest).
    let data = "x".repeat(60_000);
    for _ in 0..10 {
        let batch: Vec<Value> = (0..15)
            .map(|_| json!({"topic": topic, "data": data}))
            .collect();
        let response = app.publish_as(&token, &json!(batch)).await;
        assert_eq!(response.status(), 201);
    }
    // Within the write timeout (and the kernel's probe timer), the connection
    // is cut, its descriptor closed and its slot freed.
    let stalled_at = Instant::now();
    let deadline = stalled_at + Duration::from_secs(write_timeout_secs + 15);
    loop {
        let (held, sockets, open) = (
            holds_connection_to(pid, client_port),
            socket_inodes(pid).len(),
            app.metrics().await.get(&format!(
                r#"herald_connections_open{{transport="{transport}"}}"#
            )),
        );
        if !held && open == 0.0 {
            eprintln!(
                "{transport}: cut off {:?} after the last publish (write timeout \
                 {write_timeout_secs} s); server sockets: {baseline} before, {sockets} after",
                stalled_at.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: the stalled connection is {}held by the server, {open} {transport} \
             open; {}",
            stalled_at.elapsed(),
            if held { "still " } else { "no longer " },
            herald_tests::procs::tail(&app.log_path(), 3)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The slot is free again (the node admits one connection).
    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    app.publish(&topic, json!("after")).await;
    assert_eq!(
        ws.next_event().await["data"],
        "after",
        "the node serves again"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_is_cut_off_and_its_descriptor_and_slot_freed() {
    a_client_that_never_reads_is_cut_off_within_the_write_timeout("sse", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_never_reads_is_cut_off_and_its_descriptor_and_slot_freed() {
    a_client_that_never_reads_is_cut_off_within_the_write_timeout("ws", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_slowly_is_answered_408_and_closed_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head_timeout_secs = 2;
    let app = spawn_with(
        Options::new(Backend::Sqlite).env("HERALD_REQUEST_HEAD_TIMEOUT_SECS", head_timeout_secs),
    )
    .await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connects");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
        .await
        .expect("the request line is sent");
    let opened = Instant::now();
    // One more header line every 500 ms, never the end of the head.
    let mut answer = Vec::new();
    let deadline = opened + Duration::from_secs(head_timeout_secs + 10);
    let mut buf = [0u8; 1024];
    loop {
        let _ = slow.write_all(b"X-Slow: 1\r\n").await;
        match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // Others are served meanwhile.
        let status = app
            .http
            .get(format!("{}/healthz", app.base_url))
            .send()
            .await
            .expect("healthz answers")
            .status();
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "the slow client is still connected after {:?}",
            opened.elapsed()
        );
    }
    let took = opened.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a slow head is answered 408 (or the connection closed): {answer}"
    );
    assert!(
        took >= Duration::from_millis(head_timeout_secs * 1_000 - 500),
        "not before the timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_subscribe_and_unsubscribe_frames_is_rate_limited_and_the_connection_stays_usable()
 {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let per_sec = 20;
    let app = spawn_with(
        Options::new(Backend::Sqlite).env("HERALD_MAX_SUBSCRIPTION_OPS_PER_SEC", per_sec),
    )
    .await;
    let token = app.root_token();
    let topic = unique_topic("flood");
    let mut ws = app.ws(Some(&token)).await;
    assert_eq!(ws.next_json().await["op"], "authenticated");

    let started = Instant::now();
    let frames = 2_000;
    for i in 0..frames {
        let op = if i % 2 == 0 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        ws.stream
            .feed(Message::text(
                json!({"op": op, "topics": [topic]}).to_string(),
            ))
            .await
            .expect("queued");
    }
    ws.stream
        .feed(Message::text(json!({"op": "ping"}).to_string()))
        .await
        .expect("queued");
    ws.stream.flush().await.expect("sent");
    let (mut answered, mut limited) = (0u32, 0u32);
    loop {
        let frame = ws.next_json().await;
        match frame["op"].as_str() {
            Some("subscribed" | "unsubscribed") => answered += 1,
            Some("error") if frame["code"] == "rate_limited" => limited += 1,
            Some("pong") => break,
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of `per_sec`, then `per_sec` a second: the store and the hub
    // see no more than that, and every other frame is refused. (A subscribe
    // undone by the next unsubscribe before its head was read is not
    // confirmed: it never started.)
    let allowed = f64::from(per_sec) * (1.0 + elapsed) + 1.0;
    assert!(
        f64::from(answered) <= allowed,
        "{answered} frames were carried out in {elapsed:.1} s, more than {allowed}"
    );
    assert!(
        f64::from(limited) >= f64::from(frames) - allowed,
        "only {limited} of {frames} frames were refused"
    );

    // The connection stays usable once the client slows down.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ws.subscribe(&[&topic], None).await;
    let confirmed = loop {
        let frame = ws.next_json().await;
        if frame["op"] == "subscribed" {
            break frame;
        }
    };
    assert_eq!(confirmed["topics"], json!([topic]));
    app.publish(&topic, json!("after the flood")).await;
    assert_eq!(ws.next_event().await["data"], "after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_cursor_in_last_event_id_or_since_is_refused_and_the_node_keeps_serving() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let token = app.root_token();
    let topic = unique_topic("big");
    // A well-formed cursor of over 72 KiB: many topics at seq 1.
    let big: String = (0..4_000)
        .map(|i| format!("t{i:05}.padding-padding:1"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(big.len() > 72 * 1024);
    let answers = [
        format!(
            "GET /v1/sse?topic={topic}&access_token={token} HTTP/1.1\r\nHost: herald\r\n\
             Last-Event-ID: {big}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /v1/poll?topic={topic}&since={big}&access_token={token} HTTP/1.1\r\n\
             Host: herald\r\nConnection: close\r\n\r\n"
        ),
    ];
    for (what, request) in ["Last-Event-ID", "since"].iter().zip(answers) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connects");
        // The server may answer before reading the whole request.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP answer to an oversized {what}: {answer:?}"));
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        eprintln!("{what}: {status} {body}");
        assert!(
            [400, 414, 431].contains(&status),
            "an oversized {what} is refused: {status} {body}"
        );
        match *what {
            // Herald reads the header: a problem document.
            "Last-Event-ID" => assert!(
                status == 400 && body.contains("invalid_cursor"),
                "{status} {body}"
            ),
            // A request target over 64 KiB is refused by the HTTP server
            // before any handler sees it, with a problem document.
            _ => assert!(
                status == 400 && body.contains("\"code\":\"bad_request\""),
                "{status} {body}"
            ),
        }
    }
    app.publish(&topic, json!("still serving")).await;
    let (status, body) = app
        .poll(&format!(
            "topic={topic}&since={topic}:0&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"], "still serving");
}
