//! Clients leaving a node that dies or drains: they reconnect to another
//! node of the cluster with their cursors and miss nothing, while events
//! keep being published.

use std::time::Duration;

use herald_tests::app::{TestApp, unique_topic};
use herald_tests::clients::{SseClient, WsClient, WsEvent};
use herald_tests::nats::NatsServer;
use herald_tests::procs;
use serde_json::{Value, json};

use crate::cluster::{cluster, cluster_with, seq};

/// Events each test publishes.
const EVENTS: u64 = 120;
/// Pause between publishes: the stream lasts about `EVENTS` x this.
const PUBLISH_EVERY: Duration = Duration::from_millis(15);
/// How long a client may take to see every event.
const READ_WITHIN: Duration = Duration::from_secs(60);

/// Publishes seq 1..=EVENTS of `topic` to `node`, one at a time, in the
/// background.
fn publish_stream(node: &TestApp, topic: &str) -> tokio::task::JoinHandle<()> {
    let http = node.http.clone();
    let url = format!("{}/v1/publish", node.base_url);
    let token = node.root_token();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        for i in 1..=EVENTS {
            let response = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"topic": topic, "data": {"i": i}}))
                .send()
                .await
                .expect("the publish is answered");
            assert_eq!(response.status(), 201, "publish {i}");
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    })
}

/// How a WebSocket read ended.
#[derive(Debug, PartialEq)]
enum WsEnd {
    /// The last seq arrived.
    Complete,
    /// The server closed with this code.
    Closed(u16),
    /// The connection broke without a close frame.
    Broken,
}

/// Reads event seqs from `ws` into `got` until the last seq, a close, or
/// `read_at_least` new events when that is given.
async fn read_ws(ws: &mut WsClient, got: &mut Vec<u64>, read_at_least: Option<usize>) -> WsEnd {
    let deadline = tokio::time::Instant::now() + READ_WITHIN;
    let start = got.len();
    loop {
        if got.last() == Some(&EVENTS) {
            return WsEnd::Complete;
        }
        if read_at_least.is_some_and(|n| got.len() - start >= n) {
            return WsEnd::Complete;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            Some(WsEvent::Json(frame)) if frame["op"] == "event" => got.push(seq(&frame)),
            Some(WsEvent::Json(frame)) => panic!("unexpected frame {frame} after {got:?}"),
            Some(WsEvent::Ping) => {}
            Some(WsEvent::Closed(code, _)) => return WsEnd::Closed(code),
            Some(WsEvent::Ended) => return WsEnd::Broken,
            None => panic!("no event within {READ_WITHIN:?}; got {got:?}"),
        }
    }
}

/// How an SSE read ended.
#[derive(Debug, PartialEq)]
enum SseEnd {
    Complete,
    /// A named event (`drain`, `error`) ended the stream.
    Told(String),
    /// The stream ended.
    Ended,
}

/// Reads event seqs from `sse` like [`read_ws`].
async fn read_sse(sse: &mut SseClient, got: &mut Vec<u64>, read_at_least: Option<usize>) -> SseEnd {
    let deadline = tokio::time::Instant::now() + READ_WITHIN;
    let start = got.len();
    loop {
        if got.last() == Some(&EVENTS) {
            return SseEnd::Complete;
        }
        if read_at_least.is_some_and(|n| got.len() - start >= n) {
            return SseEnd::Complete;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sse.next_within(left).await {
            Ok(Some(message)) if message.event == "message" => got.push(seq(&message.json())),
            Ok(Some(message)) => return SseEnd::Told(message.event),
            Ok(None) => return SseEnd::Ended,
            Err(()) => panic!("no SSE event within {READ_WITHIN:?}; got {got:?}"),
        }
    }
}

fn every_event() -> Vec<u64> {
    (1..=EVENTS).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_node_killed_with_sigkill_resume_on_another_node_without_loss() {
    let nats = NatsServer::start().expect("a private NATS starts");
    let mut nodes = cluster(&nats, 3).await;
    let mut b = nodes.remove(1);
    let (a, c) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("failover.kill");
    let token = a.root_token();
    let sse_query = format!("topic={topic}&since={topic}:0&access_token={token}");

    let mut ws = b
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:0")))
        .await;
    let mut sse = b.sse(&sse_query, None).await;
    let publisher = publish_stream(a, &topic);

    let (mut over_ws, mut over_sse) = (Vec::new(), Vec::new());
    assert_eq!(
        read_ws(&mut ws, &mut over_ws, Some(10)).await,
        WsEnd::Complete
    );
    assert_eq!(
        read_sse(&mut sse, &mut over_sse, Some(10)).await,
        SseEnd::Complete
    );

    tokio::task::block_in_place(|| b.kill());
    // Whatever was in flight is read; then the connections are gone.
    let ws_end = read_ws(&mut ws, &mut over_ws, None).await;
    assert!(
        matches!(ws_end, WsEnd::Broken | WsEnd::Closed(_)),
        "the WebSocket broke with node B: {ws_end:?}"
    );
    assert_eq!(read_sse(&mut sse, &mut over_sse, None).await, SseEnd::Ended);
    assert!(
        over_ws.last() < Some(&EVENTS),
        "node B died mid-stream ({over_ws:?}); the test means nothing otherwise"
    );

    // Both resume on node C from where they were.
    let cursor = format!("{topic}:{}", over_ws.last().expect("events arrived"));
    let mut ws = c.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    let last_event_id = sse.last_id.clone();
    let mut sse = c.sse(&sse_query, Some(&last_event_id)).await;
    assert_eq!(read_ws(&mut ws, &mut over_ws, None).await, WsEnd::Complete);
    assert_eq!(
        read_sse(&mut sse, &mut over_sse, None).await,
        SseEnd::Complete
    );
    publisher.await.expect("every publish succeeded");

    assert_eq!(
        over_ws,
        every_event(),
        "WebSocket: each event once, in order"
    );
    assert_eq!(over_sse, every_event(), "SSE: each event once, in order");
}

/// Long polls the node at `base_url` from `cursor` until the last seq
/// (`200`) or until the node refuses (its status, `0` when it is gone),
/// collecting seqs and advancing `cursor`.
async fn long_poll(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    topic: &str,
    cursor: &mut String,
    got: &mut Vec<u64>,
) -> u16 {
    let deadline = tokio::time::Instant::now() + READ_WITHIN;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "long polls got {got:?}"
        );
        let response = http
            .get(format!(
                "{base_url}/v1/poll?topic={topic}&since={cursor}&wait=20&access_token={token}"
            ))
            .send()
            .await;
        let Ok(response) = response else {
            // The node has gone.
            return 0;
        };
        let status = response.status().as_u16();
        if status != 200 {
            return status;
        }
        let body: Value = response.json().await.expect("a poll answers JSON");
        for event in body["events"].as_array().expect("events") {
            got.push(seq(event));
        }
        *cursor = body["cursor"].as_str().expect("a cursor").to_owned();
        if got.last() == Some(&EVENTS) {
            return 200;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_draining_node_are_told_to_go_and_resume_on_another_node_without_loss() {
    let drain_secs = 2;
    let nats = NatsServer::start().expect("a private NATS starts");
    let mut nodes = cluster_with(
        &nats,
        3,
        &[
            ("HERALD_HEARTBEAT_SECS", "1".to_owned()),
            ("HERALD_DRAIN_SECS", drain_secs.to_string()),
        ],
    )
    .await;
    let mut b = nodes.remove(1);
    let (a, c) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("failover.drain");
    let token = a.root_token();
    let start = format!("{topic}:0");
    let sse_query = format!("topic={topic}&since={start}&access_token={token}");

    let mut ws = b.ws_subscribed(&token, &[&topic], Some(&start)).await;
    let mut sse = b.sse(&sse_query, None).await;
    let publisher = publish_stream(a, &topic);
    let (mut over_ws, mut over_sse) = (Vec::new(), Vec::new());
    assert_eq!(
        read_ws(&mut ws, &mut over_ws, Some(10)).await,
        WsEnd::Complete
    );
    assert_eq!(
        read_sse(&mut sse, &mut over_sse, Some(10)).await,
        SseEnd::Complete
    );

    // A long-polling client, following the stream on node B until B
    // refuses it, in the background.
    let poller = {
        let (http, base_url) = (b.http.clone(), b.base_url.clone());
        let (token, topic) = (token.clone(), topic.clone());
        tokio::spawn(async move {
            let mut cursor = format!("{topic}:0");
            let mut got = Vec::new();
            let status = long_poll(&http, &base_url, &token, &topic, &mut cursor, &mut got).await;
            (status, cursor, got)
        })
    };

    procs::signal(&[b.pid().expect("node B runs")], "TERM").expect("SIGTERM is sent");
    assert_eq!(
        read_ws(&mut ws, &mut over_ws, None).await,
        WsEnd::Closed(1012)
    );
    assert_eq!(
        read_sse(&mut sse, &mut over_sse, None).await,
        SseEnd::Told("drain".into())
    );
    let (status, mut poll_cursor, mut over_poll) = poller.await.expect("the poller finishes");
    assert_eq!(status, 503, "a drained node refuses the next poll");
    let exit = tokio::task::block_in_place(|| b.wait_for_exit(Duration::from_secs(drain_secs + 5)))
        .expect("node B exits after its drain");
    assert_eq!(exit.code(), Some(0));
    assert!(
        over_ws.last() < Some(&EVENTS),
        "node B drained mid-stream ({over_ws:?}); the test means nothing otherwise"
    );

    // Everyone resumes on node C.
    let cursor = format!("{topic}:{}", over_ws.last().expect("events arrived"));
    let mut ws = c.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    let last_event_id = sse.last_id.clone();
    let mut sse = c.sse(&sse_query, Some(&last_event_id)).await;
    assert_eq!(read_ws(&mut ws, &mut over_ws, None).await, WsEnd::Complete);
    assert_eq!(
        read_sse(&mut sse, &mut over_sse, None).await,
        SseEnd::Complete
    );
    assert_eq!(
        long_poll(
            &c.http,
            &c.base_url,
            &token,
            &topic,
            &mut poll_cursor,
            &mut over_poll
        )
        .await,
        200
    );
    publisher.await.expect("every publish succeeded");

    assert_eq!(
        over_ws,
        every_event(),
        "WebSocket: each event once, in order"
    );
    assert_eq!(over_sse, every_event(), "SSE: each event once, in order");
    assert_eq!(
        over_poll,
        every_event(),
        "long polling: each event once, in order"
    );
}
