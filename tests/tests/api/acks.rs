//! Acknowledgments and delivery receipts: a subscriber acknowledges what it
//! has processed (WebSocket `ack`, `POST /v1/ack`), another device of the
//! same subscriber resumes after it (`resume=ack`), publishers read
//! receipts (`GET /v1/acks`), on both stores and across nodes.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsClient, WsEvent};
use herald_tests::nats::NatsServer;
use serde_json::{Value, json};

use crate::cluster::{cluster, next_seqs, seq};
use crate::on_both_stores;

/// `POST /v1/ack` with `token` and `{"cursor": cursor}`: (status, body).
async fn post_ack(app: &TestApp, token: &str, cursor: &str) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}/v1/ack", app.base_url))
        .bearer_auth(token)
        .json(&json!({ "cursor": cursor }))
        .send()
        .await
        .expect("the ack is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /v1/acks?{query}` with `token`: (status, body).
async fn receipts(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}/v1/acks?{query}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("the receipts are answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The acknowledged seq of `sub` on `topic`, as `app`'s receipts say.
async fn acked_seq(app: &TestApp, topic: &str, sub: &str) -> Option<u64> {
    let (status, body) =
        receipts(app, &app.root_token(), &format!("topic={topic}&sub={sub}")).await;
    assert_eq!(status, 200, "{body}");
    body["acks"][0]["seq"].as_u64()
}

/// Waits (bounded by `WAIT`) until `app`'s receipts show `sub` at `seq`.
async fn wait_acked(app: &TestApp, topic: &str, sub: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = acked_seq(app, topic, sub).await;
        if now == Some(seq) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sub} not acknowledged at {topic}:{seq} within {WAIT:?} (now {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_n(app: &TestApp, topic: &str, n: u64) {
    for i in 1..=n {
        app.publish(topic, json!({ "i": i })).await;
    }
}

/// A WebSocket authenticated with `token`.
async fn ws_authenticated(app: &TestApp, token: &str) -> WsClient {
    let mut ws = app.ws(Some(token)).await;
    let authenticated = ws.next_json().await;
    assert_eq!(authenticated["op"], "authenticated", "{authenticated}");
    ws
}

/// Subscribes `ws` to `topic` from the acknowledged position and reads the
/// `subscribed` frame.
async fn subscribe_resumed(ws: &mut WsClient, topic: &str) {
    ws.send_json(json!({"op": "subscribe", "topics": [topic], "resume": "ack"}))
        .await;
    let subscribed = ws.next_json().await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
}

/// The next JSON frame that is not an event (events before it are a failure).
async fn next_control(ws: &mut WsClient) -> Value {
    let frame = ws.next_json().await;
    assert_ne!(frame["op"], "event", "expected a control frame: {frame}");
    frame
}

on_both_stores!(
    a_second_device_without_a_cursor_resumes_after_the_acknowledged_seq_on_every_transport,
    receipts_show_the_acknowledged_seq_its_time_and_the_pending_count_and_only_move_forward,
    refused_acks_change_nothing,
    an_admin_deletes_a_subscribers_acknowledgments,
);

async fn a_second_device_without_a_cursor_resumes_after_the_acknowledged_seq_on_every_transport(
    backend: Backend,
) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("acks.devices");
    let token = app.token("alice", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 10).await;

    // The first device reads 1 to 5 and acknowledges them over the socket.
    let mut first = app
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    let mut processed = Vec::new();
    for _ in 0..5 {
        processed.push(seq(&first.next_event().await));
    }
    assert_eq!(processed, vec![1, 2, 3, 4, 5]);
    first
        .send_json(json!({"op": "ack", "cursor": format!("{topic}:5")}))
        .await;
    wait_acked(&app, &topic, "alice", 5).await;

    // A second device over WebSocket: no cursor, resume from the ack.
    let mut ws = ws_authenticated(&app, &token).await;
    subscribe_resumed(&mut ws, &topic).await;
    assert_eq!(next_seqs(&mut ws, 5).await, vec![6, 7, 8, 9, 10]);

    // Over SSE.
    let mut sse = app
        .sse(
            &format!("topic={topic}&resume=ack&access_token={token}"),
            None,
        )
        .await;
    let mut over_sse = Vec::new();
    while over_sse.len() < 5 {
        let message = sse.next().await.expect("an SSE event");
        assert_eq!(message.event, "message", "{message:?}");
        over_sse.push(seq(&message.json()));
    }
    assert_eq!(over_sse, vec![6, 7, 8, 9, 10]);
    assert_eq!(sse.last_id, format!("{topic}:10"));

    // Over polling, which then acknowledges the rest with POST /v1/ack.
    let (status, body) = app
        .poll(&format!("topic={topic}&resume=ack&access_token={token}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
    assert_eq!(body["cursor"], format!("{topic}:10"));
    let (status, body) = post_ack(&app, &token, &format!("{topic}:10")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acked"], format!("{topic}:10"));

    // Read-your-writes: POST answered after the write, so a resume right
    // away finds nothing left (live only from the head).
    let (status, body) = app
        .poll(&format!("topic={topic}&resume=ack&access_token={token}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(body["cursor"], format!("{topic}:10"));

    // Another subscriber has acknowledged nothing: it starts live, as a
    // connection without a cursor does.
    let bob = app.token("bob", &["acks.>"], &[], 3600);
    let (status, body) = app
        .poll(&format!("topic={topic}&resume=ack&access_token={bob}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(body["cursor"], format!("{topic}:10"));

    // An explicit `since` wins over the acknowledged position.
    let (status, body) = app
        .poll(&format!(
            "topic={topic}&resume=ack&since={topic}:8&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(2), "{body}");
}

async fn receipts_show_the_acknowledged_seq_its_time_and_the_pending_count_and_only_move_forward(
    backend: Backend,
) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("acks.receipts");
    let alice = app.token("alice", &["acks.>"], &[], 3600);
    let publisher = app.token("svc", &[], &[&topic], 3600);
    publish_n(&app, &topic, 10).await;

    let before = chrono::Utc::now();
    let (status, body) = post_ack(&app, &alice, &format!("{topic}:7")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = receipts(&app, &publisher, &format!("topic={topic}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["topic"], topic.as_str());
    assert_eq!(body["head"], 10);
    let acks = body["acks"].as_array().expect("acks");
    assert_eq!(acks.len(), 1, "{body}");
    assert_eq!(acks[0]["sub"], "alice");
    assert_eq!(acks[0]["seq"], 7);
    assert_eq!(acks[0]["pending"], 3);
    let acked_at = acks[0]["acked_at"].as_str().expect("acked_at").to_owned();
    let at = chrono::DateTime::parse_from_rfc3339(&acked_at).expect("RFC 3339");
    assert!(
        at >= before - chrono::Duration::seconds(1)
            && at <= chrono::Utc::now() + chrono::Duration::seconds(1),
        "{acked_at}"
    );

    // Backwards and repeated acks are accepted and change nothing.
    for cursor in [format!("{topic}:4"), format!("{topic}:7")] {
        let (status, body) = post_ack(&app, &alice, &cursor).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, body) = receipts(&app, &publisher, &format!("topic={topic}&sub=alice")).await;
    assert_eq!(body["acks"][0]["seq"], 7, "{body}");
    assert_eq!(body["acks"][0]["acked_at"], acked_at.as_str(), "{body}");

    // Forward moves it, and the pending count follows the head.
    let (status, _) = post_ack(&app, &alice, &format!("{topic}:9")).await;
    assert_eq!(status, 200);
    publish_n(&app, &topic, 2).await;
    let (_, body) = receipts(&app, &publisher, &format!("topic={topic}&sub=alice")).await;
    assert_eq!(body["head"], 12);
    assert_eq!(body["acks"][0]["seq"], 9, "{body}");
    assert_eq!(body["acks"][0]["pending"], 3, "{body}");

    // A second subscriber, and the `sub` filter.
    let bob = app.token("bob", &["acks.>"], &[], 3600);
    let (status, _) = post_ack(&app, &bob, &format!("{topic}:12")).await;
    assert_eq!(status, 200);
    let (_, body) = receipts(&app, &publisher, &format!("topic={topic}")).await;
    let subs: Vec<(&str, u64)> = body["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .map(|a| {
            (
                a["sub"].as_str().unwrap_or(""),
                a["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(subs, vec![("alice", 9), ("bob", 12)]);
    let (_, body) = receipts(&app, &publisher, &format!("topic={topic}&sub=bob")).await;
    assert_eq!(body["acks"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["acks"][0]["pending"], 0, "{body}");
    // Paging.
    let (_, body) = receipts(&app, &publisher, &format!("topic={topic}&limit=1")).await;
    assert_eq!(body["acks"][0]["sub"], "alice", "{body}");
    assert_eq!(body["next"], "alice", "{body}");
    let (_, body) = receipts(
        &app,
        &publisher,
        &format!("topic={topic}&limit=1&after=alice"),
    )
    .await;
    assert_eq!(body["acks"][0]["sub"], "bob", "{body}");

    // Receipts are for the topic's publishers and admins only.
    let (status, body) = receipts(&app, &alice, &format!("topic={topic}")).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = receipts(&app, &app.admin_token(), &format!("topic={topic}")).await;
    assert_eq!(status, 200);
    let (status, body) = receipts(&app, &publisher, "topic=bad..topic").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_topic"))
    );
    let (status, body) = receipts(&app, &publisher, &format!("topic={topic}&limit=0")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let r = app
        .http
        .get(format!("{}/v1/acks?topic={topic}", app.base_url))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
}

async fn refused_acks_change_nothing(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("acks.refused");
    let other = unique_topic("private");
    let alice = app.token("alice", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 3).await;
    publish_n(&app, &other, 3).await;
    let (status, _) = post_ack(&app, &alice, &format!("{topic}:2")).await;
    assert_eq!(status, 200);

    let cases: Vec<(String, u16, &str)> = vec![
        // Beyond the head.
        (format!("{topic}:4"), 400, "invalid_cursor"),
        // A topic never published to has head 0.
        (
            format!("{}:1", unique_topic("acks.unknown")),
            400,
            "invalid_cursor",
        ),
        // Not a cursor.
        ("not a cursor".into(), 400, "invalid_cursor"),
        (String::new(), 400, "invalid_cursor"),
        (format!("{topic}:-1"), 400, "invalid_cursor"),
        // A topic the token may not subscribe to, alone or with allowed ones:
        // the whole ack is refused.
        (format!("{other}:1"), 403, "forbidden"),
        (format!("{topic}:3,{other}:1"), 403, "forbidden"),
        // One entry beyond the head refuses the others too.
        (
            format!("{topic}:3,{}:5", unique_topic("acks.unknown")),
            400,
            "invalid_cursor",
        ),
    ];
    for (cursor, status, code) in &cases {
        let (got, body) = post_ack(&app, &alice, cursor).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (*status, Some(*code)),
            "{cursor:?}: {body}"
        );
    }
    assert_eq!(acked_seq(&app, &topic, "alice").await, Some(2));
    let (_, body) = receipts(&app, &app.root_token(), &format!("topic={other}")).await;
    assert_eq!(body["acks"], json!([]), "{body}");

    // Bodies that are not an ack, and no credentials.
    for body in ["{}", "[]", "nope", r#"{"cursor":5}"#] {
        let r = app
            .http
            .post(format!("{}/v1/ack", app.base_url))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 400, "{body}");
        let problem: Value = r.json().await.expect("problem+json");
        assert_eq!(problem["code"], "invalid_json", "{body}");
    }
    let r = app
        .http
        .post(format!("{}/v1/ack", app.base_url))
        .json(&json!({"cursor": format!("{topic}:3")}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
    assert_eq!(acked_seq(&app, &topic, "alice").await, Some(2));

    // A resume with a bad `resume` value.
    let (status, body) = app
        .poll(&format!("topic={topic}&resume=yes&access_token={alice}"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );

    // Over WebSocket: an `error` frame for each, and nothing stored.
    let mut ws = app.ws_subscribed(&alice, &[&topic], None).await;
    let frames: Vec<(Value, &str)> = vec![
        (
            json!({"op": "ack", "cursor": format!("{topic}:9")}),
            "invalid_cursor",
        ),
        (json!({"op": "ack", "cursor": "x:y:z"}), "invalid_cursor"),
        (
            json!({"op": "ack", "cursor": format!("{other}:1")}),
            "forbidden",
        ),
        (json!({"op": "ack"}), "invalid_frame"),
        (json!({"op": "ack", "cursor": 3}), "invalid_frame"),
        (
            json!({"op": "subscribe", "topics": [&topic], "resume": "later"}),
            "invalid_frame",
        ),
    ];
    for (frame, code) in frames {
        ws.send_json(frame.clone()).await;
        let answer = next_control(&mut ws).await;
        assert_eq!(answer["op"], "error", "{frame}: {answer}");
        assert_eq!(answer["code"], code, "{frame}: {answer}");
    }
    ws.send_json(json!({"op": "ping"})).await;
    assert_eq!(next_control(&mut ws).await["op"], "pong");
    assert_eq!(acked_seq(&app, &topic, "alice").await, Some(2));
}

async fn an_admin_deletes_a_subscribers_acknowledgments(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topics = [unique_topic("acks.forget"), unique_topic("acks.forget")];
    let alice = app.token("alice", &["acks.>"], &[], 3600);
    let bob = app.token("bob", &["acks.>"], &[], 3600);
    for topic in &topics {
        publish_n(&app, topic, 2).await;
    }
    let cursor = format!("{}:2,{}:1", topics[0], topics[1]);
    assert_eq!(post_ack(&app, &alice, &cursor).await.0, 200);
    assert_eq!(post_ack(&app, &bob, &cursor).await.0, 200);

    let delete = |token: String, query: &'static str| {
        let request = app
            .http
            .delete(format!("{}/v1/admin/acks{query}", app.base_url))
            .bearer_auth(token);
        async move {
            let r = request.send().await.expect("answered");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = delete(app.root_token(), "?sub=alice").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = delete(app.admin_token(), "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = delete(app.admin_token(), "?sub=alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], 2, "{body}");

    for topic in &topics {
        assert_eq!(acked_seq(&app, topic, "alice").await, None);
        assert!(acked_seq(&app, topic, "bob").await.is_some());
    }
    // A deleted subscriber resumes live, as one that never acknowledged.
    let (_, body) = app
        .poll(&format!(
            "topic={}&resume=ack&access_token={alice}",
            topics[0]
        ))
        .await;
    assert_eq!(body["events"], json!([]), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_one_node_is_resumed_from_and_reported_on_another() {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("acks.cluster");
    let token = a.token("carol", &["acks.>"], &[], 3600);
    publish_n(a, &topic, 10).await;

    let mut on_a = a
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    assert_eq!(next_seqs(&mut on_a, 5).await, vec![1, 2, 3, 4, 5]);
    on_a.send_json(json!({"op": "ack", "cursor": format!("{topic}:5")}))
        .await;

    // B reads the store: the receipt shows once A has written it.
    wait_acked(b, &topic, "carol", 5).await;
    let (_, body) = receipts(b, &b.root_token(), &format!("topic={topic}")).await;
    assert_eq!(body["acks"][0]["pending"], 5, "{body}");

    let mut on_b = ws_authenticated(b, &token).await;
    subscribe_resumed(&mut on_b, &topic).await;
    assert_eq!(next_seqs(&mut on_b, 5).await, vec![6, 7, 8, 9, 10]);

    // POST on B answers after its write: A resumes from it at once.
    let (status, _) = post_ack(b, &token, &format!("{topic}:8")).await;
    assert_eq!(status, 200);
    let (_, body) = a
        .poll(&format!("topic={topic}&resume=ack&access_token={token}"))
        .await;
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, vec![9, 10], "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_an_acknowledged_position_no_longer_retained_gets_a_reset() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_RETENTION_EVENTS", 3)
            .env("HERALD_PRUNE_INTERVAL_SECS", 1),
    )
    .await;
    let topic = unique_topic("acks.retention");
    let token = app.token("dave", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 2).await;
    assert_eq!(post_ack(&app, &token, &format!("{topic}:1")).await.0, 200);
    publish_n(&app, &topic, 8).await;

    // Wait for the pruner: only 8, 9 and 10 remain.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = app
            .poll(&format!(
                "topic={topic}&since={topic}:0&access_token={token}"
            ))
            .await;
        if body["events"][0]["seq"] == 8 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not pruned: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = app
        .poll(&format!("topic={topic}&resume=ack&access_token={token}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resets"],
        json!([{"topic": topic, "from": 8}]),
        "{body}"
    );
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(seq)
        .collect();
    assert_eq!(seqs, vec![8, 9, 10]);

    let mut ws = app.ws(Some(&token)).await;
    assert_eq!(ws.next_json().await["op"], "authenticated");
    subscribe_resumed(&mut ws, &topic).await;
    let reset = ws.next_json().await;
    assert_eq!(reset, json!({"op": "reset", "topic": topic, "from": 8}));
    assert_eq!(next_seqs(&mut ws, 3).await, vec![8, 9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgments_of_a_subscriber_idle_longer_than_retention_are_pruned() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_RETENTION_SECS", 3)
            .env("HERALD_PRUNE_INTERVAL_SECS", 1),
    )
    .await;
    let topic = unique_topic("acks.idle");
    let token = app.token("erin", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 1).await;
    assert_eq!(post_ack(&app, &token, &format!("{topic}:1")).await.0, 200);
    assert_eq!(acked_seq(&app, &topic, "erin").await, Some(1));
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked_seq(&app, &topic, "erin").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle acknowledgment was not pruned within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ack_frames_is_coalesced_into_few_store_writes() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_ACK_FLUSH_MS", 200)).await;
    let topic = unique_topic("acks.flood");
    let token = app.token("frank", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 10).await;
    let mut ws = app
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    assert_eq!(next_seqs(&mut ws, 10).await, (1..=10).collect::<Vec<u64>>());

    let before = app.metrics().await;
    let received_before = before.get("herald_acks_received_total");
    let written_before = before.get("herald_acks_written_total");
    const FRAMES: u64 = 3_000;
    for i in 0..FRAMES {
        ws.send_json(json!({"op": "ack", "cursor": format!("{topic}:{}", i % 10 + 1)}))
            .await;
    }
    // Frames are handled in order: the pong comes after every ack.
    ws.send_json(json!({"op": "ping"})).await;
    loop {
        match ws.next_within(WAIT).await {
            Some(WsEvent::Json(frame)) if frame["op"] == "pong" => break,
            Some(WsEvent::Ping) => {}
            other => panic!("expected only a pong, got {other:?}"),
        }
    }
    wait_acked(&app, &topic, "frank", 10).await;
    // A pair taken after the last write is written at the next flush.
    app.wait_for_metric("herald_acks_pending", 0.0, WAIT).await;
    let after = app.metrics().await;
    let received = after.get("herald_acks_received_total") - received_before;
    let written = after.get("herald_acks_written_total") - written_before;
    assert_eq!(received, FRAMES as f64);
    assert!(
        (1.0..=20.0).contains(&written),
        "{FRAMES} acks of one topic were written {written} times"
    );
    assert!(after.get("herald_acks_coalesced_total") >= (FRAMES - 20) as f64);
    assert!(after.value("herald_ack_lag_events").is_some());
    assert!(after.value("herald_acks_refused_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pending_set_refuses_acks_for_new_pairs_and_keeps_the_others() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_ACK_FLUSH_MS", 60_000)
            .env("HERALD_ACK_MAX_PENDING", 2),
    )
    .await;
    let topics = [
        unique_topic("acks.full"),
        unique_topic("acks.full"),
        unique_topic("acks.full"),
    ];
    let token = app.token("gina", &["acks.>"], &[], 3600);
    for topic in &topics {
        publish_n(&app, topic, 2).await;
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut ws = app.ws_subscribed(&token, &names, None).await;
    ws.send_json(json!({"op": "ack", "cursor": format!("{}:1,{}:1", topics[0], topics[1])}))
        .await;
    // Already pending pairs still move.
    ws.send_json(json!({"op": "ack", "cursor": format!("{}:2", topics[0])}))
        .await;
    ws.send_json(json!({"op": "ack", "cursor": format!("{}:1", topics[2])}))
        .await;
    let refused = next_control(&mut ws).await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let metrics = app.metrics().await;
    assert_eq!(metrics.get("herald_acks_pending"), 2.0);
    assert_eq!(metrics.get("herald_acks_refused_total"), 1.0);
    assert_eq!(metrics.get("herald_acks_coalesced_total"), 1.0);

    // A resume writes the subscriber's pending acknowledgments first.
    let mut second = ws_authenticated(&app, &token).await;
    subscribe_resumed(&mut second, &topics[0]).await;
    ws.send_json(json!({"op": "ping"})).await;
    assert_eq!(next_control(&mut ws).await["op"], "pong");
    assert_eq!(acked_seq(&app, &topics[0], "gina").await, Some(2));
    assert_eq!(acked_seq(&app, &topics[1], "gina").await, Some(1));
    assert_eq!(acked_seq(&app, &topics[2], "gina").await, None);
}

/// Runs `herald subscribe TOPIC --ack --transport TRANSPORT --max-events N`
/// as `token`'s subscriber; the seqs it printed.
async fn subscribe_cli_acking(
    app: &TestApp,
    token: &str,
    topic: &str,
    transport: &str,
    n: u64,
) -> Vec<u64> {
    let run = tokio::process::Command::new(herald_tests::app::binary())
        .args(["subscribe", topic, "--ack", "--transport", transport])
        .args(["--max-events", &n.to_string()])
        .env("HERALD_URL", &app.base_url)
        .env("HERALD_TOKEN", token)
        .env_remove("HERALD_JWT_SECRET")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("herald subscribe --ack did not finish within {WAIT:?}"))
        .expect("herald subscribe runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}; stderr: {stderr}"));
            seq(&event)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_subscribe_with_ack_acknowledges_what_it_prints_and_resumes_after_it() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    for transport in ["ws", "sse", "poll"] {
        let topic = unique_topic("acks.cli");
        let sub = format!("cli-{transport}");
        let token = app.token(&sub, &["acks.>"], &[], 3600);
        publish_n(&app, &topic, 10).await;
        assert_eq!(post_ack(&app, &token, &format!("{topic}:2")).await.0, 200);

        let first = subscribe_cli_acking(&app, &token, &topic, transport, 3).await;
        assert_eq!(first, vec![3, 4, 5], "{transport}");
        wait_acked(&app, &topic, &sub, 5).await;

        let second = subscribe_cli_acking(&app, &token, &topic, transport, 3).await;
        assert_eq!(second, vec![6, 7, 8], "{transport}");
        wait_acked(&app, &topic, &sub, 8).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_on_two_nodes_never_move_a_position_back() {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("acks.race");
    let token = a.token("hana", &["acks.>"], &[], 3600);
    publish_n(a, &topic, 20).await;

    // A climbs from 1 to 20 while B comes down from 20 to 1.
    let climb = async {
        for seq in 1..=20u64 {
            assert_eq!(post_ack(a, &token, &format!("{topic}:{seq}")).await.0, 200);
        }
    };
    let descend = async {
        for seq in (1..=20u64).rev() {
            assert_eq!(post_ack(b, &token, &format!("{topic}:{seq}")).await.0, 200);
        }
    };
    tokio::join!(climb, descend);
    assert_eq!(acked_seq(a, &topic, "hana").await, Some(20));
    assert_eq!(acked_seq(b, &topic, "hana").await, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgments_taken_while_the_store_is_away_are_written_once_it_is_back() {
    let mut pg = tokio::task::block_in_place(herald_tests::pg::PgServer::start)
        .expect("a private Postgres starts");
    let url = pg.create_database().expect("database");
    let app = spawn_with(Options::new(Backend::Url(url))).await;
    let topic = unique_topic("acks.outage");
    let token = app.token("ivan", &["acks.>"], &[], 3600);
    publish_n(&app, &topic, 3).await;
    let mut ws = app
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    assert_eq!(next_seqs(&mut ws, 3).await, vec![1, 2, 3]);
    assert_eq!(post_ack(&app, &token, &format!("{topic}:1")).await.0, 200);

    tokio::task::block_in_place(|| pg.kill());
    // Checked against what the connection delivered: taken without the store.
    ws.send_json(json!({"op": "ack", "cursor": format!("{topic}:3")}))
        .await;
    ws.send_json(json!({"op": "ping"})).await;
    assert_eq!(next_control(&mut ws).await["op"], "pong");
    // POST needs the store (the heads, then the write): 503, retry later.
    let (status, body) = post_ack(&app, &token, &format!("{topic}:2")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );

    tokio::task::block_in_place(|| pg.restart()).expect("Postgres restarts");
    wait_acked(&app, &topic, "ivan", 3).await;
}
