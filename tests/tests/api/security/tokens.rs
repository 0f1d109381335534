//! Tokens, credentials and the HTTP handlers that check them: how long a
//! token may live against how long its revocation is kept, which claims and
//! headers a token must (not) carry, what is checked before a request's
//! body, tickets per subject, the same-origin rule, the development token,
//! and methods a path does not serve. Each test failed on the binary the
//! findings were made on.

use herald::auth::{Claims, HeraldClaims};
use herald_tests::app::{
    Backend, Options, SECRET, TestApp, now_secs, spawn_app, spawn_with, token_with, unique_topic,
};
use serde_json::{Value, json};

/// Claims of `sub` that may publish and subscribe everywhere, issued now and
/// valid for `ttl_secs`.
fn claims(sub: &str, ttl_secs: i64) -> Claims {
    let now = now_secs();
    Claims {
        sub: sub.into(),
        exp: (now + ttl_secs) as u64,
        iat: Some(now as u64),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: false,
        },
        ..Claims::default()
    }
}

/// Publishes one event with `token`: (status, body).
async fn publish(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app
        .publish_as(
            token,
            &json!({"topic": unique_topic("tokens"), "data": {"n": 1}}),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts that `token` is refused `401 unauthorized` with a detail that
/// names `reason`.
async fn assert_refused(app: &TestApp, token: &str, reason: &str, what: &str) {
    let (status, body) = publish(app, token).await;
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["code"], "unauthorized", "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(reason),
        "{what}: {detail:?} names {reason:?}"
    );
}

/// `POST /v1/admin/revoke` with `body`; panics unless `200`.
async fn revoke(app: &TestApp, body: Value) {
    let response = app
        .http
        .post(format!("{}/v1/admin/revoke", app.base_url))
        .bearer_auth(app.admin_token())
        .json(&body)
        .send()
        .await
        .expect("the revoke request is answered");
    assert_eq!(response.status(), 200, "revoking {body}");
}

// Finding: a token whose iat is in the future escaped revoke-by-sub.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_in_the_future_is_refused_and_cannot_outlast_a_subject_revocation() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_JWT_LEEWAY_SECS", 30)).await;
    let issued_at = |sub: &str, offset_secs: i64| {
        let now = now_secs();
        token_with(Claims {
            iat: Some((now + offset_secs) as u64),
            exp: (now + offset_secs + 3600) as u64,
            ..claims(sub, 0)
        })
    };
    // Within the leeway: a clock slightly ahead is tolerated.
    let skewed = issued_at("skewed", 20);
    assert_eq!(
        publish(&app, &skewed).await.0,
        201,
        "iat 20 s ahead, leeway 30"
    );
    let future = issued_at("victim", 3600);
    assert_refused(&app, &future, "iat", "iat an hour ahead").await;
    revoke(&app, json!({"sub": "victim"})).await;
    let (status, body) = publish(&app, &future).await;
    assert_eq!(status, 401, "after revoking its subject: {body}");
}

// Finding: tokens without sub were accepted as "".

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_a_subject_is_refused() {
    let app = spawn_app().await;
    let mut fields = serde_json::to_value(claims("x", 3600)).expect("claims serialize");
    fields
        .as_object_mut()
        .expect("claims are an object")
        .remove("sub");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let without = jsonwebtoken::encode(&header, &fields, &key).expect("HS256 signs");
    assert_refused(&app, &without, "sub", "no sub claim").await;
    let empty = token_with(claims("", 3600));
    assert_refused(&app, &empty, "sub", "an empty sub").await;
    // Every credential goes through the same verifier: no ticket for it either.
    let response = app
        .http
        .post(format!("{}/v1/tickets", app.base_url))
        .bearer_auth(&without)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 401);
}

// Finding: an unknown `crit` JOSE header was accepted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_critical_header_herald_does_not_understand_is_refused() {
    let app = spawn_app().await;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let critical = jsonwebtoken::encode(&header, &claims("crit", 3600), &key).expect("signs");
    assert_refused(&app, &critical, "crit", "crit naming a registered claim").await;
    header.crit = Some(vec!["urn:example:must-understand".into()]);
    let critical = jsonwebtoken::encode(&header, &claims("crit", 3600), &key).expect("signs");
    assert_refused(&app, &critical, "crit", "crit naming an extension").await;
    // The same token without `crit` is accepted.
    header.crit = None;
    let plain = jsonwebtoken::encode(&header, &claims("crit", 3600), &key).expect("signs");
    assert_eq!(publish(&app, &plain).await.0, 201);
}
