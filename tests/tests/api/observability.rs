//! Observability: `/metrics` parses as Prometheus text and its counters
//! follow what clients do; one log line per connection open and close, the
//! close carrying its reason and never a token; `/v1/admin/stats`; spans
//! reach an OTLP/HTTP endpoint with a publish and its deliveries in one
//! trace, on one node and across two nodes over NATS.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_app, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsEvent};
use herald_tests::nats::NatsServer;
use herald_tests::otlp::{self, Receiver};
use herald_tests::prom::Metrics;
use serde_json::{Value, json};

/// Scrapes `/metrics`, checking the answer parses as Prometheus text.
async fn scrape(app: &TestApp) -> Metrics {
    let response = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("/metrics has a body");
    Metrics::parse(&text).unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"))
}

/// Scrapes until `series` reaches at least `value` (counters move a little
/// after the client sees the effect: a close is counted when the server's
/// side of the connection has stopped). Panics after `WAIT`.
async fn wait_for_metric(app: &TestApp, series: &str, value: f64) -> Metrics {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = scrape(app).await;
        if metrics.value(series).is_some_and(|v| v >= value) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} did not reach {value} within {WAIT:?}; it is {:?}; all: {:?}",
            metrics.value(series),
            metrics.samples
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_clients_publish_subscribe_resume_and_disconnect() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    for family in [
        "herald_connections_open",
        "herald_connects_total",
        "herald_disconnects_total",
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_events_replayed_total",
        "herald_resets_sent_total",
        "herald_slow_consumer_closes_total",
        "herald_auth_failures_total",
        "herald_bus_up",
        "herald_store_up",
        "herald_queue_high_water_frames",
    ] {
        assert!(
            before.types.contains_key(family),
            "{family} is missing from /metrics"
        );
    }
    assert_eq!(
        before.get(r#"herald_connections_open{transport="ws"}"#),
        0.0
    );
    assert_eq!(before.get("herald_bus_up"), 1.0);
    assert_eq!(before.get("herald_store_up"), 1.0);

    let topic = unique_topic("obs.metrics");
    let token = app.root_token();
    let mut live = app.ws_subscribed(&token, &[&topic], None).await;
    let mut sse = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    let open = scrape(&app).await;
    assert_eq!(open.get(r#"herald_connections_open{transport="ws"}"#), 1.0);
    assert_eq!(open.get(r#"herald_connections_open{transport="sse"}"#), 1.0);
    assert_eq!(open.get(r#"herald_connects_total{transport="ws"}"#), 1.0);

    for i in 1..=3 {
        app.publish(&topic, json!({"i": i})).await;
    }
    for _ in 0..3 {
        live.next_event().await;
        sse.next().await.expect("an SSE event");
    }
    let published = scrape(&app).await;
    for histogram in [
        "herald_publish_duration_seconds",
        "herald_delivery_lag_seconds",
        "herald_store_commit_duration_seconds",
        "herald_bus_publish_duration_seconds",
    ] {
        assert_eq!(
            published.types.get(histogram).map(String::as_str),
            Some("histogram"),
            "{histogram}"
        );
    }
    assert_eq!(published.get("herald_events_published_total"), 3.0);
    assert_eq!(published.get("herald_publish_duration_seconds_count"), 3.0);
    assert!(published.get("herald_delivery_lag_seconds_count") >= 3.0);
    assert!(published.get("herald_store_commit_duration_seconds_count") >= 1.0);
    assert_eq!(
        published.get(r#"herald_events_delivered_total{transport="ws"}"#),
        3.0
    );
    assert_eq!(
        published.get(r#"herald_events_delivered_total{transport="sse"}"#),
        3.0
    );

    // A resume from the start replays the three events from the store; a
    // cursor beyond the head is answered with a reset.
    let beyond = unique_topic("obs.metrics.beyond");
    let mut resumed = app
        .ws_subscribed(
            &token,
            &[&topic, &beyond],
            Some(&format!("{topic}:0,{beyond}:9")),
        )
        .await;
    let mut frames = Vec::new();
    while frames.len() < 4 {
        frames.push(resumed.next_json().await);
    }
    assert_eq!(
        frames.iter().filter(|f| f["op"] == "event").count(),
        3,
        "{frames:?}"
    );
    assert_eq!(
        frames.iter().filter(|f| f["op"] == "reset").count(),
        1,
        "{frames:?}"
    );
    let replayed = scrape(&app).await;
    assert_eq!(
        replayed.get(r#"herald_events_replayed_total{transport="ws"}"#),
        3.0
    );
    assert_eq!(
        replayed.get(r#"herald_events_delivered_total{transport="ws"}"#),
        6.0
    );
    assert_eq!(
        replayed.get(r#"herald_resets_sent_total{transport="ws"}"#),
        1.0
    );

    // A refused credential is counted by its code.
    let refused = app
        .publish_as("not-a-token", &json!({"topic": topic, "data": 1}))
        .await;
    assert_eq!(refused.status(), 401);
    let failures = scrape(&app).await;
    assert_eq!(
        failures.get(r#"herald_auth_failures_total{code="unauthorized"}"#),
        1.0
    );
    // A refused refresh on an open WebSocket keeps the connection, and counts.
    live.send_json(json!({"op": "auth", "token": "not-a-token"}))
        .await;
    let refused = live.next_json().await;
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert_eq!(
        scrape(&app)
            .await
            .get(r#"herald_auth_failures_total{code="unauthorized"}"#),
        2.0
    );

    // Disconnects, by reason.
    for mut ws in [live, resumed] {
        ws.stream
            .close(None)
            .await
            .expect("the close frame is sent");
        // The server answers the close before it forgets the connection.
        ws.until_closed(WAIT).await;
    }
    let closed = wait_for_metric(
        &app,
        r#"herald_disconnects_total{reason="normal",transport="ws"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        closed.get(r#"herald_connections_open{transport="ws"}"#),
        0.0
    );
    assert_eq!(
        closed.get(r#"herald_connections_open{transport="sse"}"#),
        1.0
    );
    let mut unauthenticated = app.ws(None).await;
    unauthenticated.send_json(json!({"op": "ping"})).await;
    let (_, code) = unauthenticated.until_closed(WAIT).await;
    assert_eq!(code, Some(4001));
    let last = wait_for_metric(
        &app,
        r#"herald_disconnects_total{reason="unauthorized",transport="ws"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        last.get(r#"herald_auth_failures_total{code="unauthorized"}"#),
        3.0,
        "the refused publish, the refused refresh and the refused WebSocket"
    );

    // Every metric that the dashboard and the docs name is served, and every
    // metric served is documented.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let served: Vec<String> = last.types.keys().cloned().collect();
    for (file, text) in [
        (
            "deploy/grafana/herald.json",
            std::fs::read_to_string(format!("{root}/deploy/grafana/herald.json")),
        ),
        (
            "docs/OBSERVABILITY.md",
            std::fs::read_to_string(format!("{root}/docs/OBSERVABILITY.md")),
        ),
    ] {
        let text = text.unwrap_or_else(|e| panic!("{file}: {e}"));
        let named = metric_names(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        for name in &named {
            // Recorded only once a push is sent (this node has no push
            // provider): the push tests check it is served (push::webpush).
            if name.starts_with("herald_push_delay_seconds") {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| last.types.get(*f).is_some_and(|t| t == "histogram"))
                .unwrap_or(name);
            assert!(
                served.iter().any(|s| s == family),
                "{file} names {name}, which /metrics does not serve"
            );
        }
        if file.ends_with(".md") {
            for family in &served {
                assert!(
                    named.contains(family),
                    "{family} is not documented in {file}"
                );
            }
        }
    }
}

/// The `herald_*` metric names that `text` mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("herald_") && w.len() > "herald_".len())
        .map(str::to_owned)
        .collect()
}

/// The JSON log lines of `app` whose message is `message`.
fn log_lines(app: &TestApp, message: &str) -> Vec<Value> {
    app.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == message)
        .collect()
}

/// Waits until a `message` line matching `found` is in the log.
async fn wait_for_log(app: &TestApp, message: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(line) = log_lines(app, message).into_iter().find(&found) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching {message:?} line within {WAIT:?}:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_logs_one_open_and_one_close_line_with_its_reason_and_no_token() {
    let app = spawn_app().await;
    let topic = unique_topic("obs.logs");
    let token = app.token("alice", &[&topic], &[&topic], 3600);
    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    let secret_data = "body-that-must-not-be-logged";
    app.publish(&topic, json!({"note": secret_data})).await;
    ws.next_event().await;
    // A frame over the limit closes the connection with 1009.
    ws.send_text(&"x".repeat(70 * 1024)).await;
    let (_, code) = ws.until_closed(WAIT).await;
    assert_eq!(code, Some(1009));

    let closed = wait_for_log(&app, "connection closed", |l| {
        l["transport"] == "ws" && l["sub"] == "alice"
    })
    .await;
    assert_eq!(closed["reason"], "frame_too_large", "{closed}");
    assert_eq!(closed["topics"], 1, "{closed}");
    assert_eq!(closed["events_sent"], 1, "{closed}");
    assert!(
        closed["bytes_sent"].as_u64().is_some_and(|b| b > 0),
        "{closed}"
    );
    assert!(closed["duration_ms"].as_u64().is_some(), "{closed}");
    assert_eq!(closed["level"], "INFO", "{closed}");
    let connection = closed["connection"].clone();
    let opened: Vec<Value> = log_lines(&app, "connection opened")
        .into_iter()
        .filter(|l| l["connection"] == connection)
        .collect();
    assert_eq!(opened.len(), 1, "one open line per connection");
    assert_eq!(opened[0]["transport"], "ws");
    assert_eq!(
        log_lines(&app, "connection closed")
            .iter()
            .filter(|l| l["connection"] == connection)
            .count(),
        1,
        "one close line per connection"
    );

    // Nor does a token in a URL (SSE `access_token`).
    let sse = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    drop(sse);
    let logs = app.logs();
    assert!(!logs.contains(&token), "a token reached the log");
    assert!(!logs.contains(secret_data), "an event body reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_topic_logs_each_stage_of_its_events_and_others_do_not() {
    let followed = unique_topic("obs.follow");
    let other = unique_topic("obs.quiet");
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_LOG_TOPIC", &followed)).await;
    let token = app.root_token();
    let mut ws = app.ws_subscribed(&token, &[&followed, &other], None).await;
    app.publish(&other, json!(1)).await;
    app.publish(&followed, json!(2)).await;
    ws.next_event().await;
    ws.next_event().await;
    let queued = wait_for_log(&app, "queued for a connection", |l| {
        l["topic"] == followed.as_str()
    })
    .await;
    assert_eq!(queued["seq"], 1);
    assert_eq!(queued["level"], "DEBUG");
    for stage in [
        "committed; handing it to the bus",
        "handing the event to this node's connections",
    ] {
        let lines = log_lines(&app, stage);
        assert!(
            lines.iter().any(|l| l["topic"] == followed.as_str()),
            "{stage}: {lines:?}"
        );
        assert!(
            lines.iter().all(|l| l["topic"] != other.as_str()),
            "{stage}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_stats_show_connections_topics_and_queue_high_water_marks() {
    let app = spawn_app().await;
    let topic = unique_topic("obs.stats");
    let token = app.root_token();
    let _ws = app.ws_subscribed(&token, &[&topic], None).await;
    let _second = app.ws_subscribed(&token, &[&topic], None).await;

    let url = format!("{}/v1/admin/stats", app.base_url);
    let refused = app
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("stats answers");
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.expect("a problem document");
    assert_eq!(problem["code"], "forbidden");
    let unauthenticated = app.http.get(&url).send().await.expect("stats answers");
    assert_eq!(unauthenticated.status(), 401);

    let admin = herald_tests::app::token_with(herald::auth::Claims {
        sub: "ops".into(),
        exp: (herald_tests::app::now_secs() + 600) as u64,
        iat: Some(herald_tests::app::now_secs() as u64),
        herald: herald::auth::HeraldClaims {
            admin: true,
            ..Default::default()
        },
        ..Default::default()
    });
    let response = app
        .http
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .expect("stats answers");
    assert_eq!(response.status(), 200);
    let stats: Value = response.json().await.expect("stats are JSON");
    assert_eq!(stats["connections"]["ws"], 2, "{stats}");
    assert_eq!(stats["connections"]["sse"], 0, "{stats}");
    assert_eq!(stats["topics"]["with_local_subscribers"], 1, "{stats}");
    assert_eq!(
        stats["topics"]["busiest"][0],
        json!({"topic": topic, "connections": 2}),
        "{stats}"
    );
    assert!(
        stats["queues"]["outbound_high_water_frames"].is_u64(),
        "{stats}"
    );
    assert!(
        stats["queues"]["commit_high_water_requests"].is_u64(),
        "{stats}"
    );
}

/// A W3C `traceparent` with a fresh trace id: (header, trace id).
fn traceparent() -> (String, String) {
    let trace_id = format!("{:032x}", rand_u128());
    (format!("00-{trace_id}-00f067aa0ba902b7-01"), trace_id)
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u64(1);
    let mut b = state.build_hasher();
    b.write_u64(2);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

/// Options that send spans to `receiver` as OTLP/JSON, quickly.
fn traced(options: Options, receiver: &Receiver, service: &str) -> Options {
    options
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", 100)
        .env("OTEL_SERVICE_NAME", service)
}

/// Publishes `data` to `topic` on `app` within the trace of `traceparent`.
async fn publish_traced(app: &TestApp, topic: &str, traceparent: &str) {
    let response = app
        .http
        .post(format!("{}/v1/publish", app.base_url))
        .bearer_auth(app.root_token())
        .header("traceparent", traceparent)
        .json(&json!({"topic": topic, "data": {"traced": true}}))
        .send()
        .await
        .expect("the publish is answered");
    assert_eq!(response.status(), 201);
}

/// Names of the spans of `trace_id` sent by `service`.
fn names(spans: &[otlp::Span], trace_id: &str, service: &str) -> Vec<String> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.service == service)
        .map(|s| s.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_endpoint_with_the_publish_and_its_delivery_in_one_trace() {
    let receiver = Receiver::start().await;
    let app = spawn_with(traced(
        Options::new(Backend::Sqlite),
        &receiver,
        "herald-single",
    ))
    .await;
    let topic = unique_topic("obs.trace");
    let mut ws = app.ws_subscribed(&app.root_token(), &[&topic], None).await;
    let (header, trace_id) = traceparent();
    publish_traced(&app, &topic, &header).await;
    ws.next_event().await;

    let wanted = [
        "publish",
        "publish.validate",
        "publish.commit",
        "bus.publish",
        "deliver",
    ];
    let got = receiver
        .wait_for(WAIT, |spans| {
            let names = names(spans, &trace_id, "herald-single");
            wanted
                .iter()
                .all(|w| names.iter().any(|n| n == w))
                .then_some(names)
        })
        .await;
    let spans = receiver.spans();
    assert!(
        got.is_some(),
        "spans of trace {trace_id}: {:?}\nall: {spans:?}",
        names(&spans, &trace_id, "herald-single")
    );
    // The publish span continues the caller's span.
    let publish = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "publish")
        .expect("the publish span");
    assert_eq!(publish.parent_span_id, "00f067aa0ba902b7");
    // The delivery hangs under the bus publish, which hangs under the publish.
    let bus = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "bus.publish")
        .expect("the bus.publish span");
    let deliver = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.name == "deliver")
        .expect("the deliver span");
    assert_eq!(deliver.parent_span_id, bus.span_id);

    // A connection's span ends with the connection.
    drop(ws);
    let connection = receiver
        .wait_for(WAIT, |spans| {
            spans
                .iter()
                .find(|s| s.name == "connection" && s.service == "herald-single")
                .cloned()
        })
        .await;
    let Some(connection) = connection else {
        panic!("no connection span: {:?}", receiver.spans());
    };
    // Its log lines name its trace, so logs and traces join.
    let closed = wait_for_log(&app, "connection closed", |_| true).await;
    assert_eq!(
        closed["span"]["trace_id"], connection.trace_id,
        "the close line carries the connection's trace id: {closed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_and_its_delivery_on_another_share_one_trace() {
    let receiver = Receiver::start().await;
    let nats = NatsServer::start().expect("a private NATS starts");
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    let node = |service: &'static str| {
        traced(
            Options::new(Backend::Url(database_url.clone()))
                .env("HERALD_NATS_URL", nats.url())
                .env("HERALD_HEARTBEAT_SECS", 1),
            &receiver,
            service,
        )
    };
    let a = spawn_with(node("herald-a")).await;
    let b = spawn_with(node("herald-b")).await;
    for app in [&a, &b] {
        wait_for_metric(app, "herald_bus_up", 1.0).await;
    }
    let topic = unique_topic("obs.trace.cluster");
    let mut ws = b.ws_subscribed(&b.root_token(), &[&topic], None).await;
    let (header, trace_id) = traceparent();
    publish_traced(&a, &topic, &header).await;
    let event = loop {
        match ws.next_within(WAIT).await {
            Some(WsEvent::Json(frame)) if frame["op"] == "event" => break frame,
            Some(WsEvent::Ping) => {}
            other => panic!("expected the event on node B, got {other:?}"),
        }
    };
    assert_eq!(event["topic"], topic.as_str());

    let found = receiver
        .wait_for(WAIT, |spans| {
            let on_a = names(spans, &trace_id, "herald-a");
            let on_b = names(spans, &trace_id, "herald-b");
            (on_a.iter().any(|n| n == "publish")
                && on_a.iter().any(|n| n == "bus.publish")
                && on_b.iter().any(|n| n == "bus.receive")
                && on_b.iter().any(|n| n == "deliver"))
            .then_some(())
        })
        .await;
    let spans = receiver.spans();
    assert!(
        found.is_some(),
        "trace {trace_id}: on A {:?}, on B {:?}",
        names(&spans, &trace_id, "herald-a"),
        names(&spans, &trace_id, "herald-b")
    );
    // B's receive continues A's bus publish.
    let bus_publish = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.service == "herald-a" && s.name == "bus.publish")
        .expect("A's bus.publish");
    let receive = spans
        .iter()
        .find(|s| s.trace_id == trace_id && s.service == "herald-b" && s.name == "bus.receive")
        .expect("B's bus.receive");
    assert_eq!(receive.parent_span_id, bus_publish.span_id);
    let delivered = wait_for_metric(&b, "herald_bus_received_total", 1.0).await;
    assert!(delivered.get("herald_delivery_lag_seconds_count") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_exits_with_its_spans_flushed() {
    let receiver = Receiver::start().await;
    // Spans would wait ten minutes for their batch: only the flush at exit sends them.
    let mut app = spawn_with(
        traced(Options::new(Backend::Sqlite), &receiver, "herald-exit")
            .env("OTEL_BSP_SCHEDULE_DELAY", 600_000)
            .env("HERALD_DRAIN_SECS", 1),
    )
    .await;
    let topic = unique_topic("obs.exit");
    let (header, trace_id) = traceparent();
    publish_traced(&app, &topic, &header).await;
    assert!(
        names(&receiver.spans(), &trace_id, "herald-exit").is_empty(),
        "spans were sent before the exit"
    );
    let status = tokio::task::block_in_place(|| app.signal_and_wait("TERM", WAIT))
        .expect("the node exits after the drain");
    assert!(status.success(), "{status:?}");
    let spans = receiver.spans();
    let names = names(&spans, &trace_id, "herald-exit");
    assert!(names.iter().any(|n| n == "publish"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_without_a_close_frame_is_logged_as_a_normal_close() {
    let app = spawn_app().await;
    let topic = unique_topic("obs.vanish");
    let token = app.root_token();
    let ws = app.ws_subscribed(&token, &[&topic], None).await;
    drop(ws);
    let closed = wait_for_log(&app, "connection closed", |l| l["transport"] == "ws").await;
    assert_eq!(closed["reason"], "normal", "{closed}");
    // The `authenticated` and `subscribed` frames were sent.
    assert!(
        closed["bytes_sent"].as_u64().is_some_and(|b| b > 0),
        "{closed}"
    );
    wait_for_metric(
        &app,
        r#"herald_disconnects_total{reason="normal",transport="ws"}"#,
        1.0,
    )
    .await;
}
