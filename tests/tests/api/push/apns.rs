//! APNs against a local stand-in over HTTP/2 with TLS (a certificate
//! authority made by the test, trusted through `HERALD_PUSH_CA`), which
//! verifies the ES256 provider token; including its error answers.

use herald_tests::app::{Backend, TestApp, spawn_with, unique_topic};
use herald_tests::push::{APNS_TOPIC, Apns, PUSH_WAIT, Reply};
use serde_json::json;

use super::{counter, devices, options, register};

async fn node(apns: &Apns) -> TestApp {
    spawn_with(options(Backend::Sqlite, &apns.settings())).await
}

fn device(token: &str, topics: &[&str]) -> serde_json::Value {
    json!({"platform": "apns", "token": token, "topics": topics})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_gets_an_http2_push_with_a_signed_provider_token_and_a_collapse_id() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let apns = Apns::start(dir.path()).await;
    let app = node(&apns).await;
    let token = app.token("erin", &["ios.{sub}.>"], &[], 3600);
    let device_token = "a1".repeat(32);
    let (status, body) = register(&app, &token, &device(&device_token, &["ios.erin.>"])).await;
    assert_eq!(status, 201, "{body}");

    let topic = unique_topic("ios.erin");
    app.publish_as(
        &app.root_token(),
        &json!({"topic": topic, "data": {"push": {"title": "Ship it", "body": "Build 42 passed"}}}),
    )
    .await;
    app.publish(&topic, json!({"n": 2})).await;
    let pushes = apns.wait_pushes(1).await;
    let push = &pushes[0];
    assert_eq!(push.version, hyper::Version::HTTP_2);
    assert_eq!(push.path, format!("/3/device/{device_token}"));
    assert_eq!(push.header("apns-topic"), Some(APNS_TOPIC));
    assert_eq!(push.header("apns-push-type"), Some("alert"));
    assert_eq!(
        push.header("apns-collapse-id").map(str::len),
        Some(32),
        "{:?}",
        push.headers
    );
    let body = push.json();
    assert_eq!(body["aps"]["badge"], 2, "{body}");
    assert_eq!(body["herald"]["topic"], topic.as_str());
    assert_eq!(body["herald"]["seq"], 2);
    // The newest event has no title: the alert is the badge alone.
    assert!(body["aps"].get("alert").is_none(), "{body}");
    app.wait_for_metric("herald_push_sent_total{platform=\"apns\"}", 1.0, PUSH_WAIT)
        .await;
    assert_eq!(apns.server.received().len(), 1);

    // A title on the newest event makes an alert.
    let titled = unique_topic("ios.erin");
    app.publish_as(
        &app.root_token(),
        &json!({"topic": titled, "data": {"push": {"title": "Ship it"}}}),
    )
    .await;
    let pushes = apns.wait_pushes(2).await;
    let body = pushes[1].json();
    assert_eq!(body["aps"]["alert"], json!({"title": "Ship it"}), "{body}");
    assert_eq!(pushes[1].header("apns-priority"), Some("10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_server_errors_are_retried_and_410_unregistered_deletes_the_device() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let apns = Apns::start(dir.path()).await;
    let app = node(&apns).await;
    let token = app.token("frank", &["ios.{sub}.>"], &[], 3600);
    register(&app, &token, &device(&"b2".repeat(32), &["ios.frank.>"])).await;

    apns.script
        .then(Reply::json(500, json!({"reason": "InternalServerError"})))
        .then(Reply::json(429, json!({"reason": "TooManyRequests"})));
    app.publish(&unique_topic("ios.frank"), json!({"n": 1}))
        .await;
    apns.wait_pushes(3).await;
    app.wait_for_metric("herald_push_sent_total{platform=\"apns\"}", 1.0, PUSH_WAIT)
        .await;
    assert_eq!(
        counter(&app, "herald_push_failed_total{platform=\"apns\"}").await,
        2.0
    );

    apns.script.then(Reply::json(
        410,
        json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
    ));
    app.publish(&unique_topic("ios.frank"), json!({"n": 1}))
        .await;
    app.wait_for_metric(
        "herald_push_devices_pruned_total{platform=\"apns\"}",
        1.0,
        PUSH_WAIT,
    )
    .await;
    let (_, listed) = devices(&app, &token).await;
    assert_eq!(listed["devices"], json!([]));
}
