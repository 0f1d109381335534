//! A node whose NATS is down stays ready: it accepts publishes and serves
//! its own subscribers, reports the outage in `/healthz` and `herald_bus_up`,
//! and subscribers on other nodes catch up once NATS returns.

use std::time::Duration;

use herald_tests::app::{TestApp, unique_topic};
use herald_tests::clients::{SseClient, WAIT, WsEvent};
use herald_tests::nats::NatsServer;
use serde_json::{Value, json};

use crate::cluster::{cluster_with, next_seqs, seq};

/// `/healthz`: its status and body.
async fn health(node: &TestApp) -> (u16, Value) {
    let response = node
        .http
        .get(format!("{}/healthz", node.base_url))
        .send()
        .await
        .expect("healthz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("healthz answers JSON"))
}

/// `/readyz`: its status and body.
async fn readiness(node: &TestApp) -> (u16, Value) {
    let response = node
        .http
        .get(format!("{}/readyz", node.base_url))
        .send()
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz answers JSON"))
}

/// Waits (bounded) until `node`'s `/healthz` reports the bus as `ok`; it
/// answers `200` all along.
async fn wait_bus(node: &TestApp, ok: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = health(node).await;
        assert_eq!(status, 200, "healthz stays 200 whatever the bus: {body}");
        assert_eq!(body["bus"]["kind"], "nats", "{body}");
        if body["bus"]["ok"] == ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bus not ok={ok} within {WAIT:?}: {body}; log:\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The seqs of the next `n` SSE events, within `WAIT`.
async fn sse_seqs(sse: &mut SseClient, n: usize) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_within(left).await {
            Ok(Some(message)) if message.event == "message" => got.push(seq(&message.json())),
            Ok(Some(message)) => panic!("expected an event, got {message:?} after {got:?}"),
            Ok(None) => panic!("the stream ended after {got:?}"),
            Err(()) => panic!("only {got:?} of {n} SSE events within {WAIT:?}"),
        }
    }
    got
}

/// Asserts nothing but pings arrives on `ws` for `quiet`.
async fn assert_quiet(ws: &mut herald_tests::clients::WsClient, quiet: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            None => return,
            Some(WsEvent::Ping) => {}
            Some(other) => panic!("{what}: nothing more expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_is_down_stays_ready_serves_its_subscribers_and_the_others_catch_up() {
    const BEFORE: u64 = 3;
    const DURING: u64 = 12;
    let mut nats = NatsServer::start().expect("a private NATS starts");
    // A long heartbeat: the periodic store check (every heartbeat) cannot
    // bring node B the events within the test, only NATS' return can.
    let nodes = cluster_with(&nats, 2, &[("HERALD_HEARTBEAT_SECS", "30".to_owned())]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("outage.ready");
    let token = a.root_token();

    // Subscribers on node A (local to the publishes) and node B (remote).
    let mut ws_a = a.ws_subscribed(&token, &[&topic], None).await;
    let mut sse_a = a
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    let mut ws_b = b.ws_subscribed(&token, &[&topic], None).await;
    for i in 1..=BEFORE {
        assert_eq!(seq(&a.publish(&topic, json!({"i": i})).await), i);
    }
    let before: Vec<u64> = (1..=BEFORE).collect();
    assert_eq!(next_seqs(&mut ws_a, 3).await, before);
    assert_eq!(sse_seqs(&mut sse_a, 3).await, before);
    assert_eq!(next_seqs(&mut ws_b, 3).await, before);

    tokio::task::block_in_place(|| nats.stop());
    wait_bus(a, false).await;
    wait_bus(b, false).await;
    assert_eq!(
        a.metrics().await.get("herald_bus_up"),
        0.0,
        "the gauge tells"
    );
    assert!(
        a.logs().contains("NATS disconnected"),
        "the log tells: {}",
        a.logs()
    );

    // Node A stays ready and takes publishes; its own subscribers get them.
    for i in BEFORE + 1..=BEFORE + DURING {
        let (status, body) = readiness(a).await;
        assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
        assert_eq!(body["store"]["ok"], true, "{body}");
        assert_eq!(seq(&a.publish(&topic, json!({"i": i})).await), i);
    }
    assert_eq!(readiness(b).await.0, 200, "node B stays ready too");
    let during: Vec<u64> = (BEFORE + 1..=BEFORE + DURING).collect();
    assert_eq!(next_seqs(&mut ws_a, during.len()).await, during);
    assert_eq!(sse_seqs(&mut sse_a, during.len()).await, during);
    // A client that connects to node A during the outage is served too.
    let mut late = a
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:{BEFORE}")))
        .await;
    assert_eq!(next_seqs(&mut late, during.len()).await, during);
    // So is one of a topic the node did not follow when NATS went away.
    let fresh_topic = unique_topic("outage.fresh");
    let mut fresh = a
        .sse(&format!("topic={fresh_topic}&access_token={token}"), None)
        .await;
    assert_eq!(seq(&a.publish(&fresh_topic, json!("new")).await), 1);
    assert_eq!(sse_seqs(&mut fresh, 1).await, vec![1]);
    assert!(
        !health(a).await.1["bus"]["ok"].as_bool().unwrap_or(true),
        "all of this happened while NATS was still down"
    );
    // Node B cannot have them yet: they come when NATS returns.
    assert_quiet(
        &mut ws_b,
        Duration::from_millis(300),
        "node B during the outage",
    )
    .await;

    tokio::task::block_in_place(|| nats.restart()).expect("NATS restarts");
    wait_bus(b, true).await;
    wait_bus(a, true).await;

    // Node B's subscriber catches up: every event, in order, once.
    assert_eq!(next_seqs(&mut ws_b, during.len()).await, during);
    let last = BEFORE + DURING + 1;
    assert_eq!(seq(&a.publish(&topic, json!({"i": last})).await), last);
    for (name, ws) in [
        ("node B", &mut ws_b),
        ("node A", &mut ws_a),
        ("late", &mut late),
    ] {
        assert_eq!(
            next_seqs(ws, 1).await,
            vec![last],
            "{name}: no duplicate before it"
        );
        assert_quiet(ws, Duration::from_millis(500), name).await;
    }
    assert_eq!(
        sse_seqs(&mut sse_a, 1).await,
        vec![last],
        "SSE: no duplicate"
    );
    assert_eq!(b.metrics().await.get("herald_bus_up"), 1.0);
}
