//! `POST /v1/publish`: seqs, idempotency, batches, and every error code.

use std::collections::BTreeSet;

use herald::auth::{Claims, HeraldClaims};
use herald_tests::app::{
    Backend, Options, TestApp, now_secs, spawn_with, token_with, unique_topic,
};
use serde_json::{Value, json};

crate::on_both_stores!(
    a_publish_is_answered_201_with_seq_id_and_time,
    seq_stays_gapless_under_32_concurrent_publishers,
    a_repeated_id_is_answered_200_with_the_original_seq_and_stored_once,
    a_batch_is_stored_in_input_order_and_answers_in_order,
    a_batch_with_one_bad_event_stores_nothing,
    every_publish_error_has_its_code_and_leaves_the_server_healthy,
);

async fn a_publish_is_answered_201_with_seq_id_and_time(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("orders");
    let first = app.publish(&topic, json!({"n": 1})).await;
    let second = app.publish(&topic, json!(null)).await;
    assert_eq!(first["topic"], topic.as_str());
    assert_eq!(first["seq"], 1);
    assert_eq!(second["seq"], 2);
    assert!(first["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_ne!(first["id"], second["id"], "server-made ids are unique");
    let time = first["time"].as_str().expect("time is a string");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok()
            && time.ends_with('Z')
            && time.len() == 24,
        "time is RFC 3339 UTC with milliseconds: {time}"
    );
    assert!(
        first.get("duplicate").is_none(),
        "new events carry no duplicate field"
    );
}

async fn seq_stays_gapless_under_32_concurrent_publishers(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("gapless");
    let token = app.root_token();
    const PUBLISHERS: usize = 32;
    const EACH: usize = 25;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (http, url, token, topic) = (
            app.http.clone(),
            format!("{}/v1/publish", app.base_url),
            token.clone(),
            topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"topic": topic, "data": {"p": p, "i": i}}))
                    .send()
                    .await
                    .expect("publish answered");
                assert_eq!(r.status(), 201);
                let body: Value = r.json().await.expect("json");
                seqs.push(body["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("publisher task");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one publisher's seqs grow: {seqs:?}"
        );
        all.extend(seqs);
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no seq was given twice");
    let expected: BTreeSet<u64> = (1..=(PUBLISHERS * EACH) as u64).collect();
    assert_eq!(
        unique,
        expected,
        "seqs are exactly 1..={}",
        PUBLISHERS * EACH
    );
}

async fn a_repeated_id_is_answered_200_with_the_original_seq_and_stored_once(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("idem");
    let token = app.root_token();
    let first = app
        .publish_as(&token, &json!({"topic": topic, "id": "ord-1", "data": 1}))
        .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    let again = app
        .publish_as(
            &token,
            &json!({"topic": topic, "id": "ord-1", "data": "different"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(
        again["time"], first["time"],
        "a repeat answers the original time"
    );
    assert_eq!(again["duplicate"], true);
    // The same id on another topic is another event.
    let other = app
        .publish_as(
            &token,
            &json!({"topic": format!("{topic}.x"), "id": "ord-1", "data": 1}),
        )
        .await;
    assert_eq!(other.status(), 201);
    // Nothing was stored twice: the next event takes seq 2.
    let next = app.publish(&topic, json!(2)).await;
    assert_eq!(next["seq"], 2);
}

async fn a_batch_is_stored_in_input_order_and_answers_in_order(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let (a, b) = (unique_topic("batch"), unique_topic("batch"));
    let token = app.root_token();
    app.publish(&a, json!(0)).await;
    let batch = json!([
        {"topic": a, "data": 1, "id": "one", "type": "t.one"},
        {"topic": b, "data": 2},
        {"topic": a, "data": 3, "id": "one"},
        {"topic": a, "data": 4},
    ]);
    let r = app.publish_as(&token, &batch).await;
    assert_eq!(r.status(), 201);
    let answers: Vec<Value> = r.json().await.expect("json array");
    let got: Vec<(String, u64, bool)> = answers
        .iter()
        .map(|v| {
            (
                v["topic"].as_str().expect("topic").to_owned(),
                v["seq"].as_u64().expect("seq"),
                v["duplicate"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (a.clone(), 2, false),
            (b.clone(), 1, false),
            (a.clone(), 2, true),
            (a.clone(), 3, false)
        ]
    );
    // A batch of nothing but repeats stores nothing and answers 200.
    let r = app
        .publish_as(&token, &json!([{"topic": a, "data": 9, "id": "one"}]))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.publish(&a, json!(5)).await["seq"], 4);
}

async fn a_batch_with_one_bad_event_stores_nothing(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("atomic");
    let token = app.root_token();
    let r = app
        .publish_as(
            &token,
            &json!([{"topic": topic, "data": 1}, {"topic": "bad topic", "data": 2}]),
        )
        .await;
    assert_eq!(r.status(), 400);
    let forbidden = app.token("p", &[], &[&topic], 60);
    let r = app
        .publish_as(
            &forbidden,
            &json!([{"topic": topic, "data": 1}, {"topic": "elsewhere", "data": 2}]),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        app.publish(&topic, json!(1)).await["seq"],
        1,
        "nothing was stored before"
    );
}

/// (what, token, content type, body, expected status, expected code)
type Case<'a> = (
    &'a str,
    Option<String>,
    Option<&'a str>,
    String,
    u16,
    &'a str,
);

/// Sends a raw publish request and returns (status, code, content type).
async fn raw(
    app: &TestApp,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String, String) {
    let mut req = app
        .http
        .post(format!("{}/v1/publish", app.base_url))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.expect("answered");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("").to_owned(), ct)
}

async fn every_publish_error_has_its_code_and_leaves_the_server_healthy(backend: Backend) {
    let app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("errors");
    let root = app.root_token();
    let json_ct = Some("application/json");
    let ok = json!({"topic": topic, "data": 1}).to_string();

    let mut cases: Vec<Case> = vec![
        ("no token", None, json_ct, ok.clone(), 401, "unauthorized"),
        (
            "garbage token",
            Some("abc".into()),
            json_ct,
            ok.clone(),
            401,
            "unauthorized",
        ),
        (
            "bad base64",
            Some("e$$.e$$.s$$".into()),
            json_ct,
            ok.clone(),
            401,
            "unauthorized",
        ),
        (
            "expired",
            Some(app.token("x", &[], &[">"], -30)),
            json_ct,
            ok.clone(),
            401,
            "token_expired",
        ),
        (
            "oversized token",
            Some("a".repeat(10_000)),
            json_ct,
            ok.clone(),
            401,
            "unauthorized",
        ),
        (
            "body over 1 MiB",
            Some(root.clone()),
            json_ct,
            "x".repeat(1024 * 1024 + 1),
            413,
            "payload_too_large",
        ),
        (
            "credentials first",
            None,
            json_ct,
            "x".repeat(1024 * 1024 + 1),
            401,
            "unauthorized",
        ),
        (
            "wrong content type",
            Some(root.clone()),
            Some("text/plain"),
            ok.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "malformed JSON",
            Some(root.clone()),
            json_ct,
            "{\"topic\":".into(),
            400,
            "invalid_json",
        ),
        (
            "empty body",
            Some(root.clone()),
            json_ct,
            String::new(),
            400,
            "invalid_json",
        ),
        (
            "empty batch",
            Some(root.clone()),
            json_ct,
            "[]".into(),
            400,
            "invalid_event",
        ),
        (
            "no data",
            Some(root.clone()),
            json_ct,
            json!({"topic": topic}).to_string(),
            400,
            "invalid_event",
        ),
        (
            "not an object",
            Some(root.clone()),
            json_ct,
            "[1]".into(),
            400,
            "invalid_event",
        ),
        (
            "forbidden",
            Some(app.token("x", &[], &["other.>"], 60)),
            json_ct,
            ok.clone(),
            403,
            "forbidden",
        ),
        (
            "subscribe is not publish",
            Some(app.token("x", &[">"], &[], 60)),
            json_ct,
            ok.clone(),
            403,
            "forbidden",
        ),
    ];
    let long = "a".repeat(256);
    for bad in [
        "a..b",
        "a b",
        "a:b",
        "a,b",
        "",
        ".a",
        "a.",
        "ü",
        long.as_str(),
    ] {
        cases.push((
            "invalid topic",
            Some(root.clone()),
            json_ct,
            json!({"topic": bad, "data": 1}).to_string(),
            400,
            "invalid_topic",
        ));
    }
    let big_data = json!({"topic": topic, "data": "x".repeat(64 * 1024)}).to_string();
    cases.push((
        "data over 64 KiB",
        Some(root.clone()),
        json_ct,
        big_data,
        413,
        "payload_too_large",
    ));
    let many = json!(
        (0..1001)
            .map(|i| json!({"topic": topic, "data": i}))
            .collect::<Vec<_>>()
    )
    .to_string();
    cases.push((
        "batch over 1000",
        Some(root.clone()),
        json_ct,
        many,
        413,
        "payload_too_large",
    ));
    // alg none, and an algorithm that is not configured (HS384 with the right secret).
    let claims = Claims {
        sub: "x".into(),
        exp: (now_secs() + 60) as u64,
        iat: Some(now_secs() as u64),
        herald: HeraldClaims {
            publish: vec![">".into()],
            ..HeraldClaims::default()
        },
        ..Claims::default()
    };
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(serde_json::to_string(&claims)
            .expect("claims serialize")
            .as_bytes())
    );
    cases.push((
        "alg none",
        Some(none),
        json_ct,
        ok.clone(),
        401,
        "unauthorized",
    ));
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(herald_tests::app::SECRET.as_bytes()),
    )
    .expect("sign");
    cases.push((
        "unconfigured algorithm",
        Some(hs384),
        json_ct,
        ok.clone(),
        401,
        "unauthorized",
    ));
    let other_key = herald::auth::Minter::hs256(b"another key")
        .mint(&claims)
        .expect("sign");
    cases.push((
        "signed with another key",
        Some(other_key),
        json_ct,
        ok.clone(),
        401,
        "unauthorized",
    ));
    // A sanity check that the signed claims above are otherwise acceptable.
    assert_eq!(
        raw(&app, Some(&token_with(claims.clone())), json_ct, ok.clone())
            .await
            .0,
        201
    );

    for (what, token, ct, body, status, code) in cases {
        let (got_status, got_code, got_ct) = raw(&app, token.as_deref(), ct, body).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{what}");
        assert_eq!(got_ct, "application/problem+json", "{what}");
    }
    // Still healthy, and none of the refused requests stored anything.
    let health = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);
    assert_eq!(app.publish(&topic, json!("after")).await["seq"], 2);
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
