//! FCM HTTP v1 against a local stand-in of `messages:send` and of the
//! OAuth token endpoint, including its error answers.

use herald_tests::app::{Backend, TestApp, spawn_with, unique_topic};
use herald_tests::push::{Fcm, PUSH_WAIT, Reply};
use serde_json::json;

use super::{counter, devices, fcm_device, options, register};

async fn node(fcm: &Fcm, extra: &[(&str, String)]) -> TestApp {
    let mut settings = fcm.settings();
    settings.extend(extra.iter().cloned());
    spawn_with(options(Backend::Sqlite, &settings)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_gets_a_message_sent_with_an_access_token_fetched_once_and_reused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fcm = Fcm::start(dir.path()).await;
    let app = node(&fcm, &[]).await;
    let token = app.token("carol", &["app.{sub}.>"], &[], 3600);
    let (status, body) = register(&app, &token, &fcm_device("fcm-token-1", &["app.carol.>"])).await;
    assert_eq!(status, 201, "{body}");

    let first = unique_topic("app.carol");
    app.publish_as(
        &app.root_token(),
        &json!({"topic": first, "type": "chat", "data": {"push": {"title": "Hi", "body": "there"}}}),
    )
    .await;
    let second = unique_topic("app.carol");
    app.publish(&second, json!({"quiet": true})).await;

    let sends = fcm.wait_sends(2).await;
    let bodies: Vec<_> = sends.iter().map(|s| s.json()).collect();
    let titled = bodies
        .iter()
        .find(|b| b["message"]["data"]["topic"] == first.as_str())
        .expect("the first topic's push");
    let message = &titled["message"];
    assert_eq!(message["token"], "fcm-token-1");
    assert_eq!(message["data"]["seq"], "1");
    assert_eq!(message["data"]["type"], "chat");
    assert_eq!(
        message["notification"],
        json!({"title": "Hi", "body": "there"})
    );
    assert!(
        message["android"]["collapse_key"]
            .as_str()
            .is_some_and(|k| k.len() == 32)
    );
    let plain = bodies
        .iter()
        .find(|b| b["message"]["data"]["topic"] == second.as_str())
        .expect("the second topic's push");
    assert!(plain["message"].get("notification").is_none(), "{plain}");
    // One grant for both sends: the access token is kept.
    assert_eq!(fcm.grants().len(), 1);
    for send in &sends {
        assert_eq!(send.header("authorization"), Some("Bearer ya29.test-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_errors_are_retried_honouring_retry_after_or_given_up_and_unregistered_prunes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fcm = Fcm::start(dir.path()).await;
    let app = node(&fcm, &[("HERALD_PUSH_MAX_ATTEMPTS", "4".into())]).await;
    let token = app.token("dave", &["app.{sub}.>"], &[], 3600);
    register(&app, &token, &fcm_device("fcm-token-2", &["app.dave.>"])).await;

    // 503, then 429 with Retry-After: 1, then accepted.
    let unavailable = json!({"error": {"code": 503, "status": "UNAVAILABLE"}});
    let quota = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}});
    fcm.script
        .then(Reply::json(503, unavailable))
        .then(Reply::json(429, quota).with("retry-after", 1));
    app.publish(&unique_topic("app.dave"), json!({"n": 1}))
        .await;
    let sends = fcm.wait_sends(3).await;
    assert_eq!(sends.len(), 3);
    let waited = sends[2].at - sends[1].at;
    assert!(
        waited >= std::time::Duration::from_millis(950),
        "Retry-After: 1 was honoured ({waited:?})"
    );
    app.wait_for_metric("herald_push_sent_total{platform=\"fcm\"}", 1.0, PUSH_WAIT)
        .await;
    assert_eq!(
        counter(&app, "herald_push_failed_total{platform=\"fcm\"}").await,
        2.0
    );

    // A 400 is refused for good: a dead letter, not retried.
    fcm.script.then(Reply::json(
        400,
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
    ));
    app.publish(&unique_topic("app.dave"), json!({"n": 1}))
        .await;
    app.wait_for_metric(
        "herald_push_dead_letters_total{platform=\"fcm\"}",
        1.0,
        PUSH_WAIT,
    )
    .await;
    assert_eq!(fcm.sends().len(), 4);

    // An expired access token (401) is fetched again and the send retried.
    fcm.script.then(Reply::json(
        401,
        json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
    ));
    app.publish(&unique_topic("app.dave"), json!({"n": 1}))
        .await;
    app.wait_for_metric("herald_push_sent_total{platform=\"fcm\"}", 2.0, PUSH_WAIT)
        .await;
    assert_eq!(fcm.grants().len(), 2);

    // UNREGISTERED: the app is gone from the phone; the device is deleted.
    fcm.script.then(Reply::json(
        404,
        json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
    ));
    app.publish(&unique_topic("app.dave"), json!({"n": 1}))
        .await;
    app.wait_for_metric(
        "herald_push_devices_pruned_total{platform=\"fcm\"}",
        1.0,
        PUSH_WAIT,
    )
    .await;
    let (_, listed) = devices(&app, &token).await;
    assert_eq!(listed["devices"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gets_no_second_push_within_its_quiet_period() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fcm = Fcm::start(dir.path()).await;
    let app = node(&fcm, &[("HERALD_PUSH_QUIET_SECS", "2".into())]).await;
    let token = app.token("hal", &["app.{sub}.>"], &[], 3600);
    register(&app, &token, &fcm_device("fcm-quiet", &["app.hal.>"])).await;
    // Two topics due at once: the second push waits out the quiet period.
    app.publish(&unique_topic("app.hal"), json!({"n": 1})).await;
    app.publish(&unique_topic("app.hal"), json!({"n": 1})).await;
    let sends = fcm.wait_sends(2).await;
    let gap = sends[1].at - sends[0].at;
    assert!(
        gap >= std::time::Duration::from_millis(1_900),
        "the second push came {gap:?} after the first"
    );
    assert_ne!(
        sends[0].json()["message"]["data"]["topic"],
        sends[1].json()["message"]["data"]["topic"]
    );
}
