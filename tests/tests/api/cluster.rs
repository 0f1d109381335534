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
pub(crate) const HEARTBEAT_SECS: u64 = 1;

pub(crate) fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().expect("an event has a seq")
}

/// The seqs of the next `n` events on `ws`, pings skipped; panics unless
/// they all arrive within `WAIT` (pings alone never extend the wait).
pub(crate) async fn next_seqs(ws: &mut WsClient, n: usize) -> Vec<u64> {
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
pub(crate) async fn cluster(nats: &NatsServer, n: usize) -> Vec<TestApp> {
    cluster_with(
        nats,
        n,
        &[("HERALD_HEARTBEAT_SECS", HEARTBEAT_SECS.to_string())],
    )
    .await
}

/// Like [`cluster`], with extra settings for every node.
pub(crate) async fn cluster_with(
    nats: &NatsServer,
    n: usize,
    settings: &[(&str, String)],
) -> Vec<TestApp> {
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut options =
            Options::new(Backend::Url(database_url.clone())).env("HERALD_NATS_URL", nats.url());
        for (key, value) in settings {
            options = options.env(key, value);
        }
        let node = spawn_with(options).await;
        wait_ready(&node).await;
        nodes.push(node);
    }
    nodes
}

/// Waits (bounded) until `/readyz` answers `200` (the store is up) and
/// `/healthz` says the bus is connected: readiness alone does not wait for
/// NATS.
pub(crate) async fn wait_ready(node: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = node
            .http
            .get(format!("{}/readyz", node.base_url))
            .send()
            .await
            .expect("readyz answers");
        let health: Value = node
            .http
            .get(format!("{}/healthz", node.base_url))
            .send()
            .await
            .expect("healthz answers")
            .json()
            .await
            .expect("healthz answers JSON");
        assert_eq!(health["bus"]["kind"], "nats", "{health}");
        if ready.status() == 200 && health["bus"]["ok"] == true {
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

/// The subjects of every client subscription NATS holds under `herald.`.
async fn nats_subjects(nats: &NatsServer) -> Vec<String> {
    let body: Value = reqwest::get(format!("{}/subsz?subs=1&limit=100000", nats.monitor_url()))
        .await
        .expect("the NATS monitor answers")
        .json()
        .await
        .expect("the NATS monitor answers JSON");
    body["subscriptions_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["subject"].as_str())
        .filter(|s| s.starts_with("herald."))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until `check` holds for the NATS subjects.
async fn wait_subjects(nats: &NatsServer, what: &str, check: impl Fn(&[String]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let subjects = nats_subjects(nats).await;
        if check(&subjects) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WAIT:?}; NATS holds {subjects:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_to_a_topic_only_while_it_has_local_subscribers() {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("cluster.interest");
    let subject = format!("herald.ev.{topic}");
    let token = a.root_token();

    let subjects = nats_subjects(&nats).await;
    assert!(
        !subjects.iter().any(|s| s.starts_with("herald.ev.")),
        "no node receives events nobody here wants: {subjects:?}"
    );

    // Two connections on node B, one subscription in NATS.
    let mut first = b.ws_subscribed(&token, &[&topic], None).await;
    let mut second = b
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    let subjects = nats_subjects(&nats).await;
    assert_eq!(
        subjects.iter().filter(|s| **s == subject).count(),
        1,
        "node B subscribed once, before confirming the subscription: {subjects:?}"
    );
    assert_eq!(b.metrics().await.get("herald_bus_topics_followed"), 1.0);
    assert_eq!(a.metrics().await.get("herald_bus_topics_followed"), 0.0);
    // Subscribed means every later event arrives, from another node too.
    a.publish(&topic, json!(1)).await;
    assert_eq!(next_seqs(&mut first, 1).await, vec![1]);
    assert_eq!(seq(&second.next().await.expect("an SSE event").json()), 1);

    // The last local subscriber leaving unsubscribes the node.
    first
        .send_json(json!({"op": "unsubscribe", "topics": [&topic]}))
        .await;
    drop(second);
    wait_subjects(&nats, "node B unsubscribes", |s| !s.contains(&subject)).await;

    // And a new subscriber subscribes it again, with nothing missed.
    a.publish(&topic, json!(2)).await;
    let mut again = b
        .ws_subscribed(&token, &[&topic], Some(&format!("{topic}:1")))
        .await;
    a.publish(&topic, json!(3)).await;
    assert_eq!(next_seqs(&mut again, 2).await, vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_issued_on_one_node_closes_a_connection_on_another_within_a_heartbeat() {
    // A long heartbeat: only the bus can be this fast.
    let heartbeat_secs = 30;
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster_with(
        &nats,
        2,
        &[("HERALD_HEARTBEAT_SECS", heartbeat_secs.to_string())],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("cluster.revoke");
    // Issued before the revocation's second, so covered by it.
    let user = herald_tests::app::token_with(herald::auth::Claims {
        sub: "revoked-user".into(),
        exp: (herald_tests::app::now_secs() + 3600) as u64,
        iat: Some((herald_tests::app::now_secs() - 1) as u64),
        herald: herald::auth::HeraldClaims {
            subscribe: vec![">".into()],
            ..Default::default()
        },
        ..Default::default()
    });
    let mut ws = b.ws_subscribed(&user, &[&topic], None).await;

    let admin = b.admin_token();
    let revoked_at = tokio::time::Instant::now();
    let response = a
        .http
        .post(format!("{}/v1/admin/revoke", a.base_url))
        .bearer_auth(&admin)
        .json(&json!({"sub": "revoked-user"}))
        .send()
        .await
        .expect("the revoke request is answered");
    assert_eq!(response.status(), 200);

    let (_, code) = ws.until_closed(WAIT).await;
    assert_eq!(code, Some(4001), "closed as revoked");
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "closed {took:?} after the revocation, far within the {heartbeat_secs} s heartbeat"
    );
    assert!(
        b.logs().contains("revoked by another node"),
        "node B learned it from the bus: {}",
        b.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_by_a_node_that_died_before_its_bus_publish_is_delivered_by_the_head_check()
 {
    let nats = NatsServer::start().expect("a private NATS starts");
    let nodes = cluster(&nats, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let topic = unique_topic("cluster.headcheck");
    let token = a.root_token();
    let mut ws = b.ws_subscribed(&token, &[&topic], None).await;
    a.publish(&topic, json!(1)).await;
    assert_eq!(next_seqs(&mut ws, 1).await, vec![1]);

    // What a node that crashed between its commit and its bus publish
    // leaves behind: seq 2 in the store, never on the bus, nothing after it.
    let time_ms = chrono::Utc::now().timestamp_millis();
    herald_tests::pg::shared()
        .execute(
            &a.database_url,
            &format!(
                "UPDATE topics SET head = 2 WHERE topic = '{topic}'; \
                 INSERT INTO events (topic, seq, id, type, time_ms, data) \
                 VALUES ('{topic}', 2, 'lost-on-the-bus', NULL, {time_ms}, '{{\"i\":2}}')"
            ),
        )
        .expect("the event is committed directly");
    let committed = tokio::time::Instant::now();

    assert_eq!(next_seqs(&mut ws, 1).await, vec![2]);
    // Two repair intervals at most (the head is seen at one check and acted
    // on at the next), plus the read.
    let took = committed.elapsed();
    assert!(
        took < Duration::from_secs(2 * HEARTBEAT_SECS + 3),
        "delivered {took:?} after the commit"
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.get(r#"herald_bus_repairs_total{cause="head_check"}"#) >= 1.0,
        "the repair is counted: {:?}",
        metrics.samples
    );
}
