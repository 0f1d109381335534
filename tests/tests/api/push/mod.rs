//! Push to offline devices, end to end against local stand-ins of the push
//! services: the devices API ([`devices`]), Web Push against
//! web-push-testing ([`webpush`]), FCM ([`fcm`]) and APNs ([`apns`])
//! against servers written here, and the outbox across a killed node and
//! two nodes ([`durable`]).

mod apns;
mod devices;
mod durable;
mod fcm;
mod webpush;

use herald_tests::app::{Backend, Options, TestApp};
use serde_json::{Value, json};

/// Push settings for fast tests: a one-second delay, a scheduler every
/// 50 ms, no quiet period, short backoffs.
pub fn options(backend: Backend, extra: &[(&str, String)]) -> Options {
    let mut options = Options::new(backend)
        .env("HERALD_PUSH_DELAY_SECS", 1)
        .env("HERALD_PUSH_POLL_MS", 50)
        .env("HERALD_PUSH_QUIET_SECS", 0)
        .env("HERALD_PUSH_BACKOFF_MS", 100)
        .env("HERALD_WEBPUSH_ALLOW_HTTP", "true");
    for (key, value) in extra {
        options = options.env(key, value);
    }
    options
}

/// `POST /v1/devices` with `token` and `body`: (status, body).
pub async fn register(app: &TestApp, token: &str, body: &Value) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}/v1/devices", app.base_url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the registration is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /v1/devices` with `token`: (status, body).
pub async fn devices(app: &TestApp, token: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}/v1/devices", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("the list is answered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /v1/ack` with `token`; panics unless `200`.
pub async fn ack(app: &TestApp, token: &str, cursor: &str) {
    let r = app
        .http
        .post(format!("{}/v1/ack", app.base_url))
        .bearer_auth(token)
        .json(&json!({ "cursor": cursor }))
        .send()
        .await
        .expect("the ack is answered");
    assert_eq!(r.status(), 200);
}

/// A token device `token` of `sub` registers with `topics`.
pub fn fcm_device(token: &str, topics: &[&str]) -> Value {
    json!({"platform": "fcm", "token": token, "topics": topics})
}

/// A counter of `/metrics`, 0 while absent.
pub async fn counter(app: &TestApp, series: &str) -> f64 {
    app.metrics().await.value(series).unwrap_or(0.0)
}
