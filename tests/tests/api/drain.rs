//! Graceful drain on SIGTERM: readiness flips, new connections and polls are
//! refused with `503` `draining`, publishes are still taken, every open
//! connection is told to reconnect, the process exits 0; a second signal
//! exits at once; a subscriber resuming from its cursor loses nothing.

use std::time::{Duration, Instant};

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsEvent};
use herald_tests::procs;
use serde_json::{Value, json};

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().expect("an event has a seq")
}

fn sigterm(app: &TestApp) {
    procs::signal(&[app.pid().expect("herald is running")], "TERM").expect("SIGTERM is sent");
}

/// Waits, without blocking the other tasks of the test, for the process to exit.
fn wait_for_exit(app: &mut TestApp, timeout: Duration) -> std::process::ExitStatus {
    tokio::task::block_in_place(|| app.wait_for_exit(timeout)).expect("herald exits in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_work_tells_every_connection_to_reconnect_and_exits_zero() {
    let drain_secs = 3;
    let mut app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_DRAIN_SECS", drain_secs)).await;
    let topic = unique_topic("drain");
    let other = unique_topic("drain-publish");
    let token = app.root_token();

    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    let mut sse = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    let poll_url = format!(
        "{}/v1/poll?topic={topic}&wait=30&access_token={token}",
        app.base_url
    );
    let http = app.http.clone();
    let long_poll = tokio::spawn(async move {
        let response = http
            .get(poll_url)
            .send()
            .await
            .expect("the long poll is answered");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a poll answers JSON");
        (status, body, Instant::now())
    });
    // The long poll is waiting on the server before the signal.
    app.wait_for_metric(
        r#"herald_connections_open{transport="poll"}"#,
        1.0,
        Duration::from_secs(15),
    )
    .await;
    assert!(!long_poll.is_finished(), "the long poll is pending");

    sigterm(&app);
    let signalled = Instant::now();

    // Within the first second of the drain period.
    let ready = readyz_once_draining(&app, Duration::from_secs(1)).await;
    assert_eq!(ready["status"], "draining", "{ready}");

    // An EventSource is told to come back (a 503 would end it for good).
    let refused = app
        .sse_response(&format!("topic={topic}&access_token={token}"), None)
        .await;
    assert_eq!(refused.status(), 200);
    let told = refused.text().await.expect("a short stream");
    assert!(told.starts_with("retry: "), "{told:?}");
    assert!(
        told.ends_with("event: drain\ndata: {\"reason\":\"draining\"}\n\n"),
        "{told:?}"
    );

    assert_eq!(app.try_ws(Some(&token)).await.err(), Some(503));
    let (status, problem) = app
        .poll(&format!("topic={topic}&access_token={token}"))
        .await;
    assert_eq!((status, &problem["code"]), (503, &json!("draining")));

    let published = app.publish(&other, json!("still accepted")).await;
    assert_eq!(seq(&published), 1);
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "the checks ran early in the drain period: {:?}",
        signalled.elapsed()
    );

    // Every connection is told to reconnect.
    let (status, body, answered) = long_poll.await.expect("the long poll task finishes");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(body["cursor"], format!("{topic}:0"), "{body}");
    assert!(
        answered.duration_since(signalled) < Duration::from_secs(drain_secs + 2),
        "the long poll was answered during the drain, not at its 30 s"
    );

    let (_, code) = ws.until_closed(WAIT).await;
    assert_eq!(code, Some(1012), "the WebSocket is closed as draining");

    let drain = loop {
        let message = sse
            .next()
            .await
            .expect("the SSE stream ends with a drain event");
        if message.event == "drain" {
            break message;
        }
    };
    assert_eq!(drain.json(), json!({"reason": "draining"}));

    let status = wait_for_exit(&mut app, Duration::from_secs(drain_secs + 5));
    assert_eq!(status.code(), Some(0), "a drained node exits 0");
    assert!(
        signalled.elapsed() < Duration::from_secs(drain_secs + 5),
        "exited within the drain period and 5 s: {:?}",
        signalled.elapsed()
    );
    let logs = app.logs();
    assert!(logs.contains("drained within the deadline"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_after_a_drain_gets_every_event_exactly_once() {
    let drain_secs = 2;
    let mut app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_DRAIN_SECS", drain_secs)).await;
    let topic = unique_topic("drain-resume");
    let token = app.root_token();

    let mut ws = app.ws_subscribed(&token, &[&topic], None).await;
    for i in 1..=3 {
        app.publish(&topic, json!(i)).await;
    }
    let mut got = Vec::new();
    for _ in 1..=3 {
        got.push(seq(&ws.next_event().await));
    }

    sigterm(&app);
    // Published while the node drains: accepted, maybe delivered before the close.
    for i in 4..=6 {
        app.publish(&topic, json!(i)).await;
    }
    let (frames, code) = ws.until_closed(WAIT).await;
    assert_eq!(code, Some(1012));
    got.extend(frames.iter().filter(|f| f["op"] == "event").map(seq));
    let cursor = format!("{topic}:{}", got.last().expect("events were delivered"));

    let status = wait_for_exit(&mut app, Duration::from_secs(drain_secs + 5));
    assert_eq!(status.code(), Some(0));
    app.restart()
        .await
        .expect("herald restarts on the same database");

    let mut ws = app.ws_subscribed(&token, &[&topic], Some(&cursor)).await;
    for i in 7..=8 {
        app.publish(&topic, json!(i)).await;
    }
    while got.last() != Some(&8) {
        match ws.next_within(WAIT).await {
            Some(WsEvent::Json(frame)) if frame["op"] == "event" => got.push(seq(&frame)),
            Some(WsEvent::Json(_) | WsEvent::Ping) => {}
            other => panic!("expected the rest of the events, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(
        got,
        (1..=8).collect::<Vec<u64>>(),
        "every event exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_drain_exits_at_once() {
    let drain_secs = 20;
    let mut app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_DRAIN_SECS", drain_secs)).await;
    let topic = unique_topic("drain-twice");
    let token = app.root_token();
    // Two connections: the second is told half-way through the period, so
    // the drain is still going when the second signal arrives.
    let _first = app.ws_subscribed(&token, &[&topic], None).await;
    let _second = app.ws_subscribed(&token, &[&topic], None).await;

    sigterm(&app);
    let signalled = Instant::now();
    readyz_once_draining(&app, Duration::from_secs(5)).await;

    let status =
        tokio::task::block_in_place(|| app.signal_and_wait("TERM", Duration::from_secs(5)))
            .expect("herald exits at the second signal");
    assert_eq!(status.code(), Some(130), "a cut-short drain exits 130");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited well before the {drain_secs} s drain period: {:?}",
        signalled.elapsed()
    );
}

/// Asks `/readyz` until it answers `503` (the node took the signal), at most
/// for `within`; its body.
async fn readyz_once_draining(app: &TestApp, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let ready = app
            .http
            .get(format!("{}/readyz", app.base_url))
            .send()
            .await
            .expect("readyz answers while draining");
        if ready.status() == 503 {
            return ready.json().await.expect("readyz answers JSON");
        }
        assert!(
            Instant::now() < deadline,
            "readyz still answers {} {within:?} after the signal",
            ready.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
