//! The outbox is durable and cluster-safe: pushes due when a node is
//! SIGKILLed are sent once after it restarts; two nodes on one Postgres
//! send each push once between them.

use std::collections::HashMap;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::push::{Fcm, PUSH_WAIT};
use serde_json::json;

use super::{counter, fcm_device, options, register};
use crate::on_both_stores;

/// Each (device token, topic) pair the stand-in received, with its count.
fn pairs(fcm: &Fcm) -> HashMap<(String, String), usize> {
    let mut seen = HashMap::new();
    for send in fcm.sends() {
        let body = send.json();
        let key = (
            body["message"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body["message"]["data"]["topic"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

on_both_stores!(pushes_due_when_a_node_is_killed_are_sent_exactly_once_after_it_restarts);

async fn pushes_due_when_a_node_is_killed_are_sent_exactly_once_after_it_restarts(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fcm = Fcm::start(dir.path()).await;
    let mut settings = fcm.settings();
    // Long enough that nothing is sent before the kill.
    settings.push(("HERALD_PUSH_DELAY_SECS", "4".into()));
    let mut app = spawn_with(options(backend, &settings)).await;
    let token = app.token("gina", &["k.{sub}.>"], &[], 3600);
    register(&app, &token, &fcm_device("fcm-killed", &["k.gina.>"])).await;
    let topics: Vec<String> = (0..5).map(|_| unique_topic("k.gina")).collect();
    for topic in &topics {
        app.publish(topic, json!({"n": 1})).await;
    }
    app.wait_for_metric("herald_push_due_total", 5.0, PUSH_WAIT)
        .await;
    app.kill();
    assert!(
        fcm.sends().is_empty(),
        "sent before the kill: the delay is too short"
    );

    app.restart().await.expect("herald restarts");
    fcm.wait_sends(5).await;
    app.wait_for_metric("herald_push_sent_total{platform=\"fcm\"}", 5.0, PUSH_WAIT)
        .await;
    let seen = pairs(&fcm);
    assert_eq!(seen.len(), 5, "{seen:?}");
    for topic in &topics {
        assert_eq!(
            seen.get(&("fcm-killed".to_owned(), topic.clone())),
            Some(&1),
            "{topic}: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_send_each_push_exactly_once_between_them() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fcm = Fcm::start(dir.path()).await;
    let settings = fcm.settings();
    let first = spawn_with(options(Backend::Postgres, &settings)).await;
    let second_options: Options = options(Backend::Url(first.database_url.clone()), &settings);
    let second = spawn_with(second_options).await;
    let nodes: [&TestApp; 2] = [&first, &second];

    const DEVICES: usize = 24;
    let shared = unique_topic("crowd");
    let other = unique_topic("crowd");
    for i in 0..DEVICES {
        let node = nodes[i % 2];
        let token = node.token(&format!("member-{i}"), &["crowd.>"], &[], 3600);
        let (status, body) = register(
            node,
            &token,
            &fcm_device(&format!("fcm-member-{i}"), &["crowd.>"]),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    first.publish(&shared, json!({"n": 1})).await;
    second.publish(&other, json!({"n": 1})).await;

    let expected = 2 * DEVICES;
    fcm.wait_sends(expected).await;
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let series = "herald_push_sent_total{platform=\"fcm\"}";
    loop {
        let sent = counter(&first, series).await + counter(&second, series).await;
        if sent >= expected as f64 {
            assert_eq!(sent, expected as f64);
            eprintln!(
                "pushes sent by each node: {} and {}",
                counter(&first, series).await,
                counter(&second, series).await
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} of {expected} sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = pairs(&fcm);
    assert_eq!(seen.len(), expected, "{seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "a push was sent twice: {seen:?}"
    );
    assert_eq!(fcm.sends().len(), expected);
}
