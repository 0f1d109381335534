//! Web Push against web-push-testing, a real push service run locally: it
//! checks the VAPID signature, decrypts the RFC 8291 payload and answers
//! `410` for a subscription it expired.

use std::time::Duration;

use herald_tests::app::{Backend, TestApp, spawn_with, unique_topic};
use herald_tests::push::{PUSH_WAIT, WebPushService};
use serde_json::{Value, json};

use super::{ack, counter, devices, options, register};

/// A node with Web Push on, the push service, and a registered browser of
/// `alice` (topics `push.alice.>`): (app, service, client hash, token).
async fn browser() -> (TestApp, WebPushService, String, String) {
    let (private, _) = herald::push::webpush::generate_keys();
    let app = spawn_with(options(
        Backend::Sqlite,
        &[
            ("HERALD_VAPID_PRIVATE_KEY", private),
            ("HERALD_VAPID_SUBJECT", "mailto:ops@example.com".into()),
        ],
    ))
    .await;
    let service = WebPushService::start().await;
    let vapid: Value = app
        .http
        .get(format!("{}/v1/push/vapid", app.base_url))
        .send()
        .await
        .expect("the VAPID key is answered")
        .json()
        .await
        .expect("JSON");
    let public_key = vapid["public_key"].as_str().expect("a public key");
    let (subscription, hash) = service.subscribe(public_key).await;
    let token = app.token("alice", &["push.{sub}.>"], &[], 3600);
    let (status, body) = register(
        &app,
        &token,
        &json!({"platform": "webpush", "subscription": subscription, "topics": ["push.{sub}.>"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (app, service, hash, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_nobody_acknowledged_reach_the_browser_as_one_encrypted_push_per_topic() {
    let (app, service, hash, _) = browser().await;
    let topic = unique_topic("push.alice");
    // Three events inside the delay: one push, for the newest.
    app.publish(&topic, json!({"n": 1})).await;
    app.publish(&topic, json!({"n": 2})).await;
    let last = app
        .publish_as(
            &app.root_token(),
            &json!({"topic": topic, "type": "message.new",
                    "data": {"push": {"title": "Bob", "body": "Lunch at noon?"}}}),
        )
        .await;
    assert_eq!(last.status(), 201);

    let pushes = service.wait_messages(&hash, 1).await;
    let push = &pushes[0];
    assert_eq!(push["topic"], topic.as_str(), "{push}");
    assert_eq!(push["seq"], 3);
    assert_eq!(push["type"], "message.new");
    assert_eq!(push["title"], "Bob");
    assert_eq!(push["body"], "Lunch at noon?");
    assert_eq!(push["events"], 3);
    assert_eq!(push["badge"], 3, "three unread events: {push}");

    // The one push is all there is: sent once, the other two collapsed.
    app.wait_for_metric(
        "herald_push_sent_total{platform=\"webpush\"}",
        1.0,
        PUSH_WAIT,
    )
    .await;
    assert_eq!(counter(&app, "herald_push_collapsed_total").await, 2.0);
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get("herald_push_delay_seconds_count{platform=\"webpush\"}"),
        1.0
    );
    assert!(metrics.get("herald_push_delay_seconds_sum{platform=\"webpush\"}") >= 1.0);
    assert_eq!(service.messages(&hash).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acknowledged_within_the_delay_is_never_pushed_whichever_device_acknowledged() {
    let (app, service, hash, token) = browser().await;

    // Another device of alice acknowledges over HTTP.
    let topic = unique_topic("push.alice");
    app.publish(&topic, json!({"n": 1})).await;
    ack(&app, &token, &format!("{topic}:1")).await;
    app.wait_for_metric("herald_push_cancelled_total", 1.0, PUSH_WAIT)
        .await;

    // A live connection of alice receives an event and acknowledges it.
    let other = unique_topic("push.alice");
    let mut ws = app.ws_subscribed(&token, &[&other], None).await;
    app.publish(&other, json!({"n": 1})).await;
    let event = ws.next_event().await;
    assert_eq!(event["seq"], 1, "{event}");
    ws.send_json(json!({"op": "ack", "cursor": format!("{other}:1")}))
        .await;
    app.wait_for_metric("herald_push_cancelled_total", 2.0, PUSH_WAIT)
        .await;

    assert!(service.messages(&hash).await.is_empty());
    assert_eq!(
        counter(&app, "herald_push_sent_total{platform=\"webpush\"}").await,
        0.0
    );

    // An event acknowledged only up to an earlier seq is still pushed.
    let third = unique_topic("push.alice");
    app.publish(&third, json!({"n": 1})).await;
    app.publish(&third, json!({"n": 2})).await;
    ack(&app, &token, &format!("{third}:1")).await;
    let pushes = service.wait_messages(&hash, 1).await;
    assert_eq!(
        (pushes[0]["seq"].as_u64(), pushes[0]["events"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_push_service_says_is_gone_is_deleted() {
    let (app, service, hash, token) = browser().await;
    let (_, listed) = devices(&app, &token).await;
    assert_eq!(listed["devices"].as_array().map(Vec::len), Some(1));

    service.expire(&hash).await;
    app.publish(&unique_topic("push.alice"), json!({"n": 1}))
        .await;
    app.wait_for_metric(
        "herald_push_devices_pruned_total{platform=\"webpush\"}",
        1.0,
        PUSH_WAIT,
    )
    .await;
    let (status, listed) = devices(&app, &token).await;
    assert_eq!(status, 200);
    assert_eq!(listed["devices"], json!([]), "{listed}");
    assert!(service.messages(&hash).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_worker_is_served_and_is_valid_javascript() {
    let (app, _service, _, _) = browser().await;
    let r = app
        .http
        .get(format!("{}/push-sw.js", app.base_url))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/javascript"))
    );
    let text = r.text().await.expect("a body");
    assert!(text.contains("showNotification") && text.contains("notificationclick"));
    let file = app.dir().join("push-sw.js");
    std::fs::write(&file, &text).expect("writable");
    let checked = herald_tests::procs::run_with_timeout(
        std::process::Command::new("node").arg("--check").arg(&file),
        Duration::from_secs(20),
    )
    .expect("node runs");
    assert!(checked.status.success(), "{checked:?}");
}
