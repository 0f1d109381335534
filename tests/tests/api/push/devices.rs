//! The devices API on both stores: register, list, replace and delete
//! one's own devices, an admin deleting anyone's, and bad registrations
//! refused whole.

use base64::Engine as _;
use herald_tests::app::{Backend, TestApp, spawn_with};
use serde_json::{Value, json};

use super::{devices, options, register};
use crate::on_both_stores;

/// A node with Web Push on (nothing is ever sent: no event is published).
async fn node(backend: Backend) -> TestApp {
    let (private, _) = herald::push::webpush::generate_keys();
    spawn_with(options(
        backend,
        &[
            ("HERALD_VAPID_PRIVATE_KEY", private),
            ("HERALD_PUSH_MAX_DEVICES", "2".into()),
        ],
    ))
    .await
}

/// A browser subscription with valid keys at `endpoint`.
fn subscription(endpoint: &str) -> Value {
    let (_, p256dh) = herald::push::webpush::generate_keys();
    let auth = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([5u8; 16]);
    json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}})
}

fn webpush(endpoint: &str, topics: &[&str]) -> Value {
    json!({"platform": "webpush", "subscription": subscription(endpoint), "topics": topics})
}

async fn delete(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let r = app
        .http
        .delete(format!("{}/v1/devices/{id}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("the delete is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

on_both_stores!(
    devices_are_registered_listed_replaced_and_deleted_by_their_owner_or_an_admin,
    bad_registrations_are_refused_with_a_problem_and_store_nothing,
);

async fn devices_are_registered_listed_replaced_and_deleted_by_their_owner_or_an_admin(
    backend: Backend,
) {
    let app = node(backend).await;
    let alice = app.token("alice", &["user.{sub}.>", "news.*"], &[], 3600);
    let bob = app.token("bob", &["user.{sub}.>"], &[], 3600);

    let (status, first) = register(
        &app,
        &alice,
        &webpush("https://push.example.test/a", &["user.{sub}.>", "news.*"]),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("d-"), "{first}");
    assert_eq!(first["platform"], "webpush");
    assert_eq!(first["topics"], json!(["user.alice.>", "news.*"]));

    // The same subscription again replaces its topics and keeps its id.
    let (status, again) = register(
        &app,
        &alice,
        &webpush("https://push.example.test/a", &["news.*"]),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    let (status, listed) = devices(&app, &alice).await;
    assert_eq!(status, 200);
    assert_eq!(listed["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["devices"][0]["topics"], json!(["news.*"]));
    assert!(
        !listed.to_string().contains("push.example.test"),
        "addresses are never listed: {listed}"
    );

    // Bob cannot see or delete it.
    let (_, bobs) = devices(&app, &bob).await;
    assert_eq!(bobs["devices"], json!([]));
    let (status, refused) = delete(&app, &bob, &id).await;
    assert_eq!((status, refused["code"].as_str()), (404, Some("not_found")));

    // The owner deletes it.
    let (status, deleted) = delete(&app, &alice, &id).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["deleted"], id.as_str());
    let (_, listed) = devices(&app, &alice).await;
    assert_eq!(listed["devices"], json!([]));

    // An admin deletes anyone's, one or all.
    let (_, one) = register(
        &app,
        &bob,
        &webpush("https://push.example.test/b1", &["user.bob.x"]),
    )
    .await;
    register(
        &app,
        &bob,
        &webpush("https://push.example.test/b2", &["user.bob.y"]),
    )
    .await;
    let admin = app.admin_token();
    let (status, _) = delete(&app, &admin, one["id"].as_str().expect("an id")).await;
    assert_eq!(status, 200);
    let r = app
        .http
        .delete(format!("{}/v1/admin/devices?sub=bob", app.base_url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body, json!({"sub": "bob", "deleted": 1}));
    let (_, bobs) = devices(&app, &bob).await;
    assert_eq!(bobs["devices"], json!([]));
    // Only admins may.
    let r = app
        .http
        .delete(format!("{}/v1/admin/devices?sub=alice", app.base_url))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 403);

    // A subscription registered by another subject moves to that subject.
    register(
        &app,
        &alice,
        &webpush("https://push.example.test/shared", &["news.*"]),
    )
    .await;
    let (status, moved) = register(
        &app,
        &bob,
        &webpush("https://push.example.test/shared", &["user.bob.z"]),
    )
    .await;
    assert_eq!(status, 201, "{moved}");
    let (_, listed) = devices(&app, &alice).await;
    assert_eq!(listed["devices"], json!([]));
}

async fn bad_registrations_are_refused_with_a_problem_and_store_nothing(backend: Backend) {
    let app = node(backend).await;
    let alice = app.token("alice", &["user.{sub}.>"], &[], 3600);
    let ok_topics = ["user.alice.inbox"];
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"platform": "carrier-pigeon", "token": "x", "topics": ok_topics}),
            400,
            "invalid_device",
        ),
        (
            json!({"platform": "webpush", "subscription": {"endpoint": "https://p.example/"}, "topics": ok_topics}),
            400,
            "invalid_device",
        ),
        (
            json!({"platform": "webpush", "subscription": {"endpoint": "https://p.example/",
                   "keys": {"p256dh": "AAAA", "auth": "AAAA"}}, "topics": ok_topics}),
            400,
            "invalid_device",
        ),
        (
            webpush("ftp://p.example/x", &ok_topics),
            400,
            "invalid_device",
        ),
        (
            json!({"platform": "fcm", "token": "abc", "topics": ok_topics}),
            400,
            "invalid_device",
        ),
        (json!({"platform": "webpush"}), 400, "invalid_device"),
        (
            webpush("https://p.example/x", &["user.alice..x"]),
            400,
            "invalid_topic",
        ),
        (webpush("https://p.example/x", &[]), 400, "invalid_topic"),
        (
            webpush("https://p.example/x", &["user.bob.inbox"]),
            403,
            "forbidden",
        ),
        (
            webpush("https://p.example/x", &["user.>"]),
            403,
            "forbidden",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = register(&app, &alice, &body).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{body} -> {problem}"
        );
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("user.alice.t{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let (status, problem) = register(&app, &alice, &webpush("https://p.example/x", &refs)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("too_many_topics"))
    );
    let r = app
        .http
        .post(format!("{}/v1/devices", app.base_url))
        .json(&webpush("https://p.example/x", &ok_topics))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
    let (_, listed) = devices(&app, &alice).await;
    assert_eq!(listed["devices"], json!([]), "nothing was stored");

    // The bound: two devices (HERALD_PUSH_MAX_DEVICES=2), then 409.
    for n in 0..2 {
        let (status, body) = register(
            &app,
            &alice,
            &webpush(&format!("https://p.example/{n}"), &ok_topics),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, problem) =
        register(&app, &alice, &webpush("https://p.example/9", &ok_topics)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("too_many_devices"))
    );
    assert_eq!(
        problem["type"], "urn:herald:problem:too_many_devices",
        "{problem}"
    );
    let (_, listed) = devices(&app, &alice).await;
    assert_eq!(listed["devices"].as_array().map(Vec::len), Some(2));
    // Re-registering a held device is not a new one.
    let (status, _) = register(&app, &alice, &webpush("https://p.example/0", &ok_topics)).await;
    assert_eq!(status, 200);
}
