//! Real-time delivery on every transport: live events, resume without a gap
//! or a duplicate, resets on retention, long polls, slow consumers,
//! heartbeats.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsEvent};
use serde_json::{Value, json};

crate::on_both_stores!(
    websocket_delivers_live_events_of_several_topics_in_order,
    sse_delivers_live_events_of_several_topics_with_the_whole_cursor_as_id,
    sse_says_where_each_topic_starts_before_any_event_so_a_live_stream_resumes_without_loss,
    websocket_resume_delivers_exactly_the_missed_events_including_those_published_during_replay,
    sse_resume_from_last_event_id_delivers_exactly_the_missed_events,
    poll_resume_from_the_returned_cursor_delivers_exactly_the_missed_events,
    a_cursor_older_than_retention_yields_a_reset_on_every_transport,
);

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().expect("an event has a seq")
}

async fn publish_n(app: &TestApp, topic: &str, from: u64, to: u64) {
    for i in from..=to {
        let r = app.publish(topic, json!({"i": i})).await;
        assert_eq!(seq(&r), i, "publishing {topic} in order");
    }
}

async fn websocket_delivers_live_events_of_several_topics_in_order(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let (a, b) = (unique_topic("live"), unique_topic("live"));
    let mut ws = app.ws_subscribed(&app.root_token(), &[&a, &b], None).await;
    for i in 1..=5 {
        app.publish(&a, json!(i)).await;
        app.publish(&b, json!(i)).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..10 {
        let e = ws.next_event().await;
        if e["topic"] == a.as_str() {
            got_a.push(seq(&e));
        } else {
            assert_eq!(e["topic"], b.as_str());
            got_b.push(seq(&e));
        }
        assert!(e["time"].is_string() && e["id"].is_string(), "{e}");
    }
    assert_eq!(got_a, vec![1, 2, 3, 4, 5]);
    assert_eq!(got_b, vec![1, 2, 3, 4, 5]);
}

async fn sse_delivers_live_events_of_several_topics_with_the_whole_cursor_as_id(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let (a, b) = (unique_topic("sse"), unique_topic("sse"));
    app.publish(&b, json!("before")).await;
    let token = app.root_token();
    let mut sse = app
        .sse(&format!("topic={a}&topic={b}&access_token={token}"), None)
        .await;
    // The stream is open once the retry field arrives; nothing is replayed.
    app.publish(&a, json!(1)).await;
    let first = sse.next().await.expect("an event");
    assert_eq!(first.event, "message", "events carry no event: line");
    assert_eq!(first.json()["topic"], a.as_str());
    assert!(
        sse.retry.is_some_and(|ms| (1_000..=5_000).contains(&ms)),
        "retry: {:?}",
        sse.retry
    );
    // b stands at its head when the stream opened.
    let mut expected = [(a.clone(), 1), (b.clone(), 1)];
    expected.sort();
    assert_eq!(
        first.id,
        format!(
            "{}:{},{}:{}",
            expected[0].0, expected[0].1, expected[1].0, expected[1].1
        )
    );
    app.publish(&b, json!(2)).await;
    let second = sse.next().await.expect("an event");
    assert_eq!(second.json()["topic"], b.as_str());
    assert_eq!(second.json()["seq"], 2);
    assert!(second.id.contains(&format!("{b}:2")) && second.id.contains(&format!("{a}:1")));
}

async fn sse_says_where_each_topic_starts_before_any_event_so_a_live_stream_resumes_without_loss(
    backend: Backend,
) {
    let app = spawn_with(Options::new(backend)).await;
    let (live, from_start) = (unique_topic("sse"), unique_topic("sse"));
    app.publish(&live, json!(1)).await;
    app.publish(&live, json!(2)).await;
    app.publish(&from_start, json!(1)).await;
    let token = app.root_token();
    let mut sse = app
        .sse(
            &format!("topic={live}&topic={from_start}&since={from_start}:0&access_token={token}"),
            None,
        )
        .await;
    let replayed = sse.next().await.expect("the replayed event");
    assert_eq!(replayed.json()["topic"], from_start.as_str());
    assert_eq!(replayed.json()["seq"], 1);
    let [subscribed] = &sse.subscribed.clone()[..] else {
        panic!(
            "one subscribed message before the first event: {:?}",
            sse.subscribed
        );
    };
    let cursor = |a: u64, b: u64| {
        let mut parts = [format!("{live}:{a}"), format!("{from_start}:{b}")];
        parts.sort();
        parts.join(",")
    };
    // The live topic starts at its head, the other at its `since`.
    assert_eq!(subscribed.id, cursor(2, 0));
    let data = subscribed.json();
    assert_eq!(data["cursor"], cursor(2, 0).as_str());
    assert_eq!(data["heads"], cursor(2, 1).as_str());
    let mut topics: Vec<&str> = data["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    topics.sort();
    let mut expected = [live.as_str(), from_start.as_str()];
    expected.sort();
    assert_eq!(topics, expected);
    drop(sse);

    // Down before any live event: what is published meanwhile comes with the start id.
    app.publish(&live, json!(3)).await;
    let mut again = app
        .sse(
            &format!("topic={live}&topic={from_start}&access_token={token}"),
            Some(&subscribed.id),
        )
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = again.next().await.expect("an event");
        got.push((
            m.json()["topic"].as_str().unwrap_or_default().to_owned(),
            seq(&m.json()),
        ));
    }
    got.sort();
    let mut want = vec![(live.clone(), 3), (from_start.clone(), 1)];
    want.sort();
    assert_eq!(got, want);
}

async fn websocket_resume_delivers_exactly_the_missed_events_including_those_published_during_replay(
    backend: Backend,
) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("resume");
    let token = app.root_token();
    publish_n(&app, &topic, 1, 5).await;
    let mut ws = app
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    let mut got: Vec<u64> = Vec::new();
    for _ in 0..5 {
        got.push(seq(&ws.next_event().await));
    }
    drop(ws); // a forced disconnect
    publish_n(&app, &topic, 6, 300).await;
    // Reconnect with the cursor while publishing goes on.
    let cursor = format!("{topic}:{}", got.last().expect("got events"));
    let publisher = {
        let (http, url, token, topic) = (
            app.http.clone(),
            format!("{}/v1/publish", app.base_url),
            token.clone(),
            topic.clone(),
        );
        tokio::spawn(async move {
            for i in 301..=400 {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"topic": topic, "data": i}))
                    .send()
                    .await
                    .expect("answered");
                assert_eq!(r.status(), 201);
            }
        })
    };
    let mut ws = app.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    while got.len() < 400 {
        got.push(seq(&ws.next_event().await));
    }
    publisher.await.expect("publisher");
    assert_eq!(
        got,
        (1..=400).collect::<Vec<_>>(),
        "no gap, no duplicate, in order"
    );
    assert!(
        ws.next_within(Duration::from_millis(300))
            .await
            .is_none_or(|e| e == WsEvent::Ping),
        "nothing after the last event"
    );
}

async fn sse_resume_from_last_event_id_delivers_exactly_the_missed_events(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let (a, b) = (unique_topic("sseresume"), unique_topic("sseresume"));
    let token = app.root_token();
    publish_n(&app, &a, 1, 3).await;
    let query = format!("topic={a}&topic={b}&since={a}:0&access_token={token}");
    let mut sse = app.sse(&query, None).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push((a.clone(), seq(&sse.next().await.expect("event").json())));
    }
    let last_id = sse.last_id.clone();
    drop(sse);
    publish_n(&app, &a, 4, 50).await;
    publish_n(&app, &b, 1, 20).await;
    // Like an EventSource: the original URL (with its original since), and Last-Event-ID.
    let mut sse = app.sse(&query, Some(&last_id)).await;
    while got.len() < 70 {
        let e = sse.next().await.expect("event").json();
        got.push((e["topic"].as_str().expect("topic").to_owned(), seq(&e)));
    }
    let of = |t: &str| {
        got.iter()
            .filter(|(x, _)| x == t)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&a), (1..=50).collect::<Vec<_>>());
    assert_eq!(
        of(&b),
        (1..=20).collect::<Vec<_>>(),
        "the quiet topic lost nothing"
    );
}

async fn poll_resume_from_the_returned_cursor_delivers_exactly_the_missed_events(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let (a, b) = (unique_topic("poll"), unique_topic("poll"));
    let token = app.root_token();
    // Live-only: the cursor stands at the head.
    publish_n(&app, &a, 1, 2).await;
    let (status, body) = app
        .poll(&format!("topic={a}&topic={b}&access_token={token}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]));
    let mut cursor = body["cursor"].as_str().expect("cursor").to_owned();
    assert!(
        cursor.contains(&format!("{a}:2")) && cursor.contains(&format!("{b}:0")),
        "{cursor}"
    );
    publish_n(&app, &a, 3, 40).await;
    publish_n(&app, &b, 1, 10).await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let mut rounds = 0;
    loop {
        let (status, body) = app
            .poll(&format!(
                "topic={a}&topic={b}&since={cursor}&limit=7&access_token={token}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().expect("events");
        assert!(events.len() <= 7, "limit counts events across topics");
        for e in events {
            if e["topic"] == a.as_str() {
                got_a.push(seq(e))
            } else {
                got_b.push(seq(e))
            }
        }
        cursor = body["cursor"].as_str().expect("cursor").to_owned();
        rounds += 1;
        if body["more"] == false {
            break;
        }
        assert!(rounds < 20, "more stays true");
    }
    assert_eq!(got_a, (3..=40).collect::<Vec<_>>());
    assert_eq!(got_b, (1..=10).collect::<Vec<_>>());
}

async fn a_cursor_older_than_retention_yields_a_reset_on_every_transport(backend: Backend) {
    let app = spawn_with(
        Options::new(backend)
            .env("HERALD_RETENTION_EVENTS", 3)
            .env("HERALD_PRUNE_INTERVAL_SECS", 1),
    )
    .await;
    let topic = unique_topic("reset");
    let token = app.root_token();
    publish_n(&app, &topic, 1, 10).await;
    // Wait for the pruner to keep the newest 3: a poll from the start then
    // answers with a reset to 8 (it may have pruned earlier, mid-publish).
    let deadline = tokio::time::Instant::now() + WAIT;
    let body = loop {
        let (_, body) = app
            .poll(&format!(
                "topic={topic}&since={topic}:0&access_token={token}"
            ))
            .await;
        if body["resets"][0]["from"] == 8 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["resets"], json!([{"topic": topic, "from": 8}]));
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    assert_eq!(body["cursor"], format!("{topic}:10"));

    let mut ws = app
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:2")))
        .await;
    assert_eq!(
        ws.next_json().await,
        json!({"op": "reset", "topic": topic, "from": 8})
    );
    let seqs: Vec<u64> = [
        ws.next_event().await,
        ws.next_event().await,
        ws.next_event().await,
    ]
    .iter()
    .map(seq)
    .collect();
    assert_eq!(seqs, vec![8, 9, 10]);

    let mut sse = app
        .sse(
            &format!("topic={topic}&since={topic}:2&access_token={token}"),
            None,
        )
        .await;
    let reset = sse.next().await.expect("reset");
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json(), json!({"topic": topic, "from": 8}));
    assert_eq!(reset.id, format!("{topic}:7"), "the id moves past the gap");
    assert_eq!(seq(&sse.next().await.expect("event").json()), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_promptly_on_publish_and_times_out_empty() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("longpoll");
    let token = app.root_token();
    app.publish(&topic, json!(0)).await;
    let started = tokio::time::Instant::now();
    let (status, body) = app
        .poll(&format!("topic={topic}&wait=1&access_token={token}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursor"], format!("{topic}:1"));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "held for its wait"
    );

    let poll = {
        let (http, url) = (
            app.http.clone(),
            format!(
                "{}/v1/poll?topic={topic}&since={topic}:1&wait=30&access_token={token}",
                app.base_url
            ),
        );
        tokio::spawn(async move {
            let r = http.get(url).send().await.expect("answered");
            (
                tokio::time::Instant::now(),
                r.json::<Value>().await.expect("json"),
            )
        })
    };
    // Once the poll is waiting on the server, publish.
    app.wait_for_metric(r#"herald_connections_open{transport="poll"}"#, 1.0, WAIT)
        .await;
    let published = tokio::time::Instant::now();
    app.publish(&topic, json!("wake")).await;
    let (answered, body) = tokio::time::timeout(WAIT, poll)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(body["events"][0]["data"], "wake");
    assert_eq!(body["cursor"], format!("{topic}:2"));
    assert!(
        answered.duration_since(published) < Duration::from_secs(5),
        "a long poll answers as soon as an event arrives, not at its wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_get_heartbeats_sse_comments_and_websocket_pings() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_HEARTBEAT_SECS", 1)).await;
    let topic = unique_topic("idle");
    let token = app.root_token();
    let mut sse = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    assert_eq!(
        sse.comment_within(Duration::from_secs(5)).await.as_deref(),
        Some("keepalive")
    );
    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    assert_eq!(
        ws.next_within(Duration::from_secs(5)).await,
        Some(WsEvent::Ping)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_closed_as_slow_consumer_and_resumes_without_loss() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_QUEUE_EVENTS", 16)
            .env("HERALD_QUEUE_BYTES", 1024 * 1024),
    )
    .await;
    let topic = unique_topic("slow");
    let token = app.root_token();
    let mut slow = app.ws_subscribed(&token, &[&topic], None).await;
    let mut fast = app.ws_subscribed(&token, &[&topic], None).await;
    const EVENTS: u64 = 400;
    let payload = "x".repeat(48 * 1024);
    // The fast subscriber reads everything while the slow one reads nothing.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < EVENTS as usize {
            seqs.push(seq(&fast.next_event().await));
        }
        seqs
    });
    for i in 1..=EVENTS {
        let r = app.publish(&topic, json!({"i": i, "pad": payload})).await;
        assert_eq!(seq(&r), i);
    }
    let fast_seqs = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the fast reader is not slowed")
        .unwrap_or_else(|e| panic!("fast reader failed: {e}; server log:\n{}", app.logs()));
    assert_eq!(fast_seqs, (1..=EVENTS).collect::<Vec<_>>());
    // The server gave up on the slow one.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !app.logs().contains("\"reason\":\"slow_consumer\"") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slow-consumer close logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It reads what reached it, then the close.
    let (frames, code) = slow.until_closed(WAIT).await;
    assert_eq!(code, Some(4008), "closed as a slow consumer");
    let mut got: Vec<u64> = frames
        .iter()
        .filter(|f| f["op"] == "event")
        .map(seq)
        .collect();
    assert!((got.len() as u64) < EVENTS, "it really fell behind");
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    // Resume from its cursor: the rest, nothing lost.
    let cursor = format!("{topic}:{}", got.len());
    let mut again = app.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    while (got.len() as u64) < EVENTS {
        got.push(seq(&again.next_event().await));
    }
    assert_eq!(got, (1..=EVENTS).collect::<Vec<_>>());
}

/// Sends `GET {path}` on `stream` (HTTP/1.1, keep-alive) and returns the
/// status line, or `None` if the server had closed the connection.
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: herald\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut buffer = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .expect("the server answers or closes within WAIT")
        .ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_polling_client_reuses_its_connection_between_polls_seconds_apart() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("keepalive");
    let token = app.root_token();
    app.publish(&topic, json!(1)).await;
    let path = format!("/v1/poll?topic={topic}&since={topic}:0&access_token={token}");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connects");
    assert_eq!(
        get_on(&mut stream, &path).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    // Longer than actix-web's own default keep-alive (5 s): a client polling
    // every few seconds must not pay a new connection each time.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        get_on(&mut stream, &path).await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "the idle connection is still open for the next poll"
    );
}
