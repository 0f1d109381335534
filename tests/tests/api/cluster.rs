//! Several nodes on one Postgres and one NATS: an event published to any
//! node reaches subscribers on every node, cursors work on any node, and a
//! NATS outage loses nothing.

use std::time::Duration;

use herald_tests::app::{Backend, Options, SECRET, TestApp, binary, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsClient, WsEvent};
use herald_tests::nats::NatsServer;
use serde_json::{Value, json};

/// Heartbeat of the test nodes: also how often a node repairs after a bus
/// failure.
const HEARTBEAT_SECS: u64 = 1;

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().expect("an event has a seq")
}

/// The seqs of the next `n` events on `ws`, pings skipped; panics unless
/// they all arrive within `WAIT` (pings alone never extend the wait).
async fn next_seqs(ws: &mut WsClient, n: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            Some(WsEvent::Json(frame)) if frame["op"] == "event" => got.push(seq(&frame)),
            Some(WsEvent::Ping) => {}
            Some(other) => panic!("expected an event, got {other:?}"),
            None => panic!("only {got:?} of {n} events within {WAIT:?}"),
        }
    }
    got
}

/// Starts `n` nodes on one fresh Postgres database and `nats`, each ready
/// (its bus connected) before this returns.
async fn cluster(nats: &NatsServer, n: usize) -> Vec<TestApp> {
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    let mut nodes = Vec::new();
    for _ in 0..n {
        let node = spawn_with(
            Options::new(Backend::Url(database_url.clone()))
                .env("HERALD_NATS_URL", nats.url())
                .env("HERALD_HEARTBEAT_SECS", HEARTBEAT_SECS),
        )
        .await;
        wait_ready(&node).await;
        nodes.push(node);
    }
    nodes
}

/// Waits (bounded) until `/readyz` says the store and the bus are up.
async fn wait_ready(node: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = node
            .http
            .get(format!("{}/readyz", node.base_url))
            .send()
            .await
            .expect("readyz answers");
        if response.status() == 200 {
            let body: Value = response.json().await.expect("readyz answers JSON");
            assert_eq!(body["bus"]["kind"], "nats", "{body}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node not ready within {WAIT:?}: {}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_to_one_node_reaches_websocket_and_sse_subscribers_on_the_others_in_order()
 {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = unique_topic("cluster.fanout");
    let token = a.root_token();
    let mut ws = b.ws_subscribed(&token, &[&topic], None).await;
    let mut sse = c
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;

    for i in 1..=30u64 {
        let r = a.publish(&topic, json!({"i": i})).await;
        assert_eq!(seq(&r), i);
    }

    let over_ws = next_seqs(&mut ws, 30).await;
    let mut over_sse = Vec::new();
    while over_sse.len() < 30 {
        let e = sse.next().await.expect("an SSE event").json();
        assert_eq!(e["topic"], topic.as_str());
        over_sse.push(seq(&e));
    }
    let expected: Vec<u64> = (1..=30).collect();
    assert_eq!(over_ws, expected, "WebSocket on node B");
    assert_eq!(over_sse, expected, "SSE on node C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_one_node_resumes_on_another_with_exactly_the_missed_events() {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let topic = unique_topic("cluster.resume");
    let token = a.root_token();

    let mut ws = b.ws_subscribed(&token, &[&topic], None).await;
    for i in 1..=5u64 {
        a.publish(&topic, json!({"i": i})).await;
    }
    assert_eq!(next_seqs(&mut ws, 5).await, vec![1, 2, 3, 4, 5]);
    let last = 5;
    drop(ws);
    let cursor = format!("{topic}:{last}");

    for i in 6..=12u64 {
        a.publish(&topic, json!({"i": i})).await;
    }
    let mut ws = c.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    assert_eq!(next_seqs(&mut ws, 7).await, (6..=12).collect::<Vec<_>>());
    // Nothing more: no duplicate arrives over the bus.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            None => break,
            Some(WsEvent::Ping) => {}
            Some(other) => panic!("nothing more expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_during_a_publish_stream_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 150;
    const STOP_AT: u64 = 40;
    const RESTART_AT: u64 = 90;

    let mut nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("cluster.outage");
    let token = a.root_token();
    let mut ws = b.ws_subscribed(&token, &[&topic], None).await;

    // Node B's subscriber reads everything until the last seq, or gives up.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while got.last() != Some(&EVENTS) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ws.next_within(left).await {
                Some(WsEvent::Json(frame)) if frame["op"] == "event" => got.push(seq(&frame)),
                Some(WsEvent::Json(frame)) => panic!("unexpected frame {frame}"),
                Some(WsEvent::Ping) => {}
                Some(other) => panic!("the subscriber lost its connection: {other:?}"),
                None => break,
            }
        }
        got
    });

    for i in 1..=EVENTS {
        if i == STOP_AT {
            tokio::task::block_in_place(|| nats.stop());
        }
        if i == RESTART_AT {
            tokio::task::block_in_place(|| nats.restart()).expect("NATS restarts");
        }
        // The store is up: every publish succeeds, bus or no bus.
        let r = a.publish(&topic, json!({"i": i})).await;
        assert_eq!(seq(&r), i);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let got = reader.await.expect("the reader finishes");
    assert!(
        b.logs().contains("NATS disconnected"),
        "node B saw the outage: {}",
        b.logs()
    );
    assert_eq!(
        got,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event exactly once, in order; node B's log:\n{}",
        b.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_events_published_during_a_nats_outage_arrive_after_it_without_a_later_event() {
    let mut nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("cluster.tail");
    let token = a.root_token();
    let mut ws = b.ws_subscribed(&token, &[&topic], None).await;
    for i in 1..=3u64 {
        a.publish(&topic, json!({"i": i})).await;
    }
    assert_eq!(next_seqs(&mut ws, 3).await, vec![1, 2, 3]);

    tokio::task::block_in_place(|| nats.stop());
    for i in 4..=6u64 {
        let r = a.publish(&topic, json!({"i": i})).await;
        assert_eq!(seq(&r), i, "publishing goes on without NATS");
    }
    tokio::task::block_in_place(|| nats.restart()).expect("NATS restarts");

    // Nothing follows seq 6: only the repair after the outage brings them.
    assert_eq!(next_seqs(&mut ws, 3).await, vec![4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_nats_on_a_sqlite_store() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env(
            "HERALD_DATABASE_URL",
            format!("sqlite://{}/herald.db", dir.path().display()),
        )
        .env("HERALD_JWT_SECRET", SECRET)
        .env("HERALD_NATS_URL", "nats://127.0.0.1:4222")
        .env("HERALD_LOG_FORMAT", "text")
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("herald exits at once")
        .expect("herald runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must refuse; stderr: {stderr}");
    assert!(
        stderr.contains("HERALD_NATS_URL needs a Postgres store"),
        "a clear reason: {stderr}"
    );
    assert!(
        !dir.path().join("herald.db").exists(),
        "refused before creating the file"
    );
}
