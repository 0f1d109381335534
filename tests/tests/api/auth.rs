//! Credentials beyond the bearer header: tickets and cookies; and revocation.

use std::time::{Duration, Instant};

use herald::auth::{Claims, HeraldClaims};
use herald_tests::app::{
    Backend, Options, TestApp, now_secs, spawn_app, spawn_with, token_with, unique_topic,
};
use herald_tests::clients::{SseClient, WAIT, WsClient};
use serde_json::{Value, json};

async fn spawn_with_env(env: &[(&str, &str)]) -> TestApp {
    let mut options = Options::new(Backend::Sqlite);
    for (key, value) in env {
        options = options.env(key, value);
    }
    spawn_with(options).await
}

/// `POST /v1/tickets` with `token` (if any): (status, body).
async fn post_ticket(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    let mut req = app.http.post(format!("{}/v1/tickets", app.base_url));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let response = req.send().await.expect("the ticket request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A fresh ticket for `token`.
async fn ticket(app: &TestApp, token: &str) -> String {
    let (status, body) = post_ticket(app, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["ticket"]
        .as_str()
        .expect("the answer names a ticket")
        .to_owned()
}

/// `POST /v1/admin/revoke` with `body` as `token`: (status, body).
async fn revoke(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/v1/admin/revoke", app.base_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("the revoke request is answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn admin_token() -> String {
    claims_token("admin", None, now_secs(), true)
}

/// A token of `sub` (with `jti`) issued at `iat`, allowed every topic.
fn claims_token(sub: &str, jti: Option<&str>, iat: i64, admin: bool) -> String {
    token_with(Claims {
        sub: sub.into(),
        exp: (now_secs() + 3600) as u64,
        iat: Some(iat as u64),
        jti: jti.map(Into::into),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin,
        },
        ..Claims::default()
    })
}

/// The `code` of a problem document answer.
async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

async fn sse_code(app: &TestApp, query: &str) -> (u16, String) {
    problem_code(app.sse_response(query, None).await).await
}

async fn publish_code(app: &TestApp, token: &str, topic: &str) -> (u16, String) {
    let response = app
        .publish_as(token, &json!({"topic": topic, "data": 1}))
        .await;
    problem_code(response).await
}

async fn ws_authenticated(app: &TestApp, token: &str, topic: &str) -> WsClient {
    app.ws_subscribed(token, &[topic], None).await
}

// Tickets.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_an_sse_stream_a_websocket_and_a_poll_once_each() {
    let app = spawn_app().await;
    let topic = unique_topic("ticket");
    let token = app.token("7", &[&topic], &[], 3600);

    let (status, body) = post_ticket(&app, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 30, "{body}");
    let sse_ticket = body["ticket"].as_str().expect("a ticket").to_owned();

    let mut sse = app
        .sse(&format!("topic={topic}&ticket={sse_ticket}"), None)
        .await;
    app.publish(&topic, json!("hello")).await;
    let message = sse.next().await.expect("an event");
    assert_eq!(message.json()["data"], "hello");
    assert_eq!(
        sse_code(&app, &format!("topic={topic}&ticket={sse_ticket}")).await,
        (401, "unauthorized".into()),
        "a ticket is single use"
    );

    let ws_ticket = ticket(&app, &token).await;
    let mut ws = app
        .try_ws_query(&format!("ticket={ws_ticket}"), None)
        .await
        .expect("a ticket opens a WebSocket");
    assert_eq!(ws.next_json().await["op"], "authenticated");
    assert_eq!(
        app.try_ws_query(&format!("ticket={ws_ticket}"), None)
            .await
            .err(),
        Some(401),
        "a ticket is single use"
    );

    let poll_ticket = ticket(&app, &token).await;
    let (status, body) = app
        .poll(&format!(
            "topic={topic}&since={topic}:0&ticket={poll_ticket}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"], "hello", "{body}");
    let (status, body) = app
        .poll(&format!("topic={topic}&ticket={poll_ticket}"))
        .await;
    assert_eq!(
        (status, &body["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_authorizes_only_its_tokens_topics() {
    let app = spawn_app().await;
    let topic = unique_topic("ticket");
    let token = app.token("7", &[&topic], &[], 3600);
    let ticket = ticket(&app, &token).await;
    let other = unique_topic("other");
    assert_eq!(
        sse_code(&app, &format!("topic={other}&ticket={ticket}")).await,
        (403, "forbidden".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_is_refused() {
    let app = spawn_with_env(&[("HERALD_TICKET_SECS", "1")]).await;
    let topic = unique_topic("ticket");
    let token = app.token("7", &[&topic], &[], 3600);
    let (status, body) = post_ticket(&app, Some(&token)).await;
    assert_eq!((status, &body["expires_in"]), (200, &json!(1)), "{body}");
    let ticket = body["ticket"].as_str().expect("a ticket").to_owned();
    // The only way to let a real server's second pass.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        sse_code(&app, &format!("topic={topic}&ticket={ticket}")).await,
        (401, "unauthorized".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_need_a_bearer_token_and_never_publish() {
    let app = spawn_app().await;
    let (status, body) = post_ticket(&app, None).await;
    assert_eq!(
        (status, &body["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
    let (status, body) = post_ticket(&app, Some("garbage")).await;
    assert_eq!(
        (status, &body["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );

    let topic = unique_topic("ticket");
    let ticket = ticket(&app, &app.root_token()).await;
    assert_eq!(
        publish_code(&app, &ticket, &topic).await,
        (401, "unauthorized".into()),
        "a ticket is not a bearer token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_opens_an_sse_stream() {
    let app = spawn_app().await;
    let topic = unique_topic("cookie");
    let token = app.token("7", &[&topic], &[], 3600);
    let response = app
        .http
        .get(format!("{}/v1/sse?topic={topic}", app.base_url))
        .header("cookie", format!("herald_token={token}"))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .expect("the SSE request is answered");
    assert_eq!(response.status(), 200);
    let mut sse = SseClient::new(response);
    app.publish(&topic, json!("by cookie")).await;
    assert_eq!(
        sse.next().await.expect("an event").json()["data"],
        "by cookie"
    );
}

// Revocation.

/// Reads an SSE stream until it ends with an `error` event; returns its code.
async fn sse_error_code(sse: &mut SseClient, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sse.next_within(left).await {
            Ok(Some(m)) if m.event == "error" => {
                return m.json()["code"].as_str().unwrap_or_default().to_owned();
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error event"),
            Err(()) => panic!("no error event within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_closes_its_connections_and_refuses_its_tokens() {
    // The leeway admits the token dated 2 s ahead at the end.
    let app = spawn_with_env(&[
        ("HERALD_HEARTBEAT_SECS", "1"),
        ("HERALD_JWT_LEEWAY_SECS", "5"),
    ])
    .await;
    let topic = unique_topic("revoke");
    // Issued before the revocation's second.
    let token = claims_token("victim", None, now_secs() - 1, false);
    let bystander = claims_token("bystander", None, now_secs(), false);
    let mut ws = ws_authenticated(&app, &token, &topic).await;
    let mut sse = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;
    let mut other_ws = ws_authenticated(&app, &bystander, &topic).await;

    let (status, body) = revoke(&app, &admin_token(), json!({"sub": "victim"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], json!({"sub": "victim"}));
    assert!(
        body["at"]
            .as_i64()
            .is_some_and(|at| (at - now_secs()).abs() <= 2),
        "{body}"
    );

    let within = Duration::from_secs(2);
    let (_, code) = ws.until_closed(within).await;
    assert_eq!(code, Some(4001));
    assert_eq!(sse_error_code(&mut sse, within).await, "revoked");

    assert_eq!(app.try_ws(Some(&token)).await.err(), Some(401));
    assert_eq!(
        sse_code(&app, &format!("topic={topic}&access_token={token}")).await,
        (401, "revoked".into())
    );
    assert_eq!(
        publish_code(&app, &token, &topic).await,
        (401, "revoked".into())
    );
    let (status, body) = post_ticket(&app, Some(&token)).await;
    assert_eq!((status, &body["code"]), (401, &json!("revoked")), "{body}");

    // Another subject is untouched.
    app.publish(&topic, json!("still here")).await;
    assert_eq!(other_ws.next_event().await["data"], "still here");

    // A token of the same subject issued after the revocation's second works.
    let later = claims_token("victim", None, now_secs() + 2, false);
    let (status, body) = publish_code(&app, &later, &topic).await;
    assert_eq!(status, 201, "{body}");
    app.ws_subscribed(&later, &[&topic], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_ticket_and_auth_frame_are_refused() {
    let app = spawn_with_env(&[("HERALD_HEARTBEAT_SECS", "1")]).await;
    let topic = unique_topic("revoke");
    let token = claims_token("victim", Some("t-1"), now_secs(), false);
    let minted_before = ticket(&app, &token).await;
    let (status, _) = revoke(&app, &admin_token(), json!({"jti": "t-1"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        sse_code(&app, &format!("topic={topic}&ticket={minted_before}")).await,
        (401, "revoked".into())
    );
    let mut ws = app.ws(None).await;
    ws.send_json(json!({"op": "auth", "token": token})).await;
    let (_, code) = ws.until_closed(WAIT).await;
    assert_eq!(code, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_id_affects_only_that_token() {
    let app = spawn_with_env(&[("HERALD_HEARTBEAT_SECS", "1")]).await;
    let topic = unique_topic("revoke");
    let revoked = claims_token("u", Some("jti-revoked"), now_secs(), false);
    let kept = claims_token("u", Some("jti-kept"), now_secs(), false);
    let mut revoked_ws = ws_authenticated(&app, &revoked, &topic).await;
    let mut kept_sse = app
        .sse(&format!("topic={topic}&access_token={kept}"), None)
        .await;

    let (status, body) = revoke(&app, &admin_token(), json!({"jti": "jti-revoked"})).await;
    assert_eq!(
        (status, &body["revoked"]),
        (200, &json!({"jti": "jti-revoked"})),
        "{body}"
    );
    let (_, code) = revoked_ws.until_closed(Duration::from_secs(2)).await;
    assert_eq!(code, Some(4001));
    assert_eq!(
        publish_code(&app, &revoked, &topic).await,
        (401, "revoked".into())
    );

    let (status, body) = publish_code(&app, &kept, &topic).await;
    assert_eq!(status, 201, "{body}");
    let event = kept_sse
        .next()
        .await
        .expect("the kept token still receives");
    assert_eq!(event.event, "message", "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_needs_an_admin_token_and_exactly_one_of_sub_or_jti() {
    let app = spawn_app().await;
    let (status, body) = revoke(&app, &app.root_token(), json!({"sub": "x"})).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    let response = app
        .http
        .post(format!("{}/v1/admin/revoke", app.base_url))
        .json(&json!({"sub": "x"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(problem_code(response).await, (401, "unauthorized".into()));
    for body in [
        json!({}),
        json!({"sub": "x", "jti": "y"}),
        json!({"sub": ""}),
        json!({"sub": 7}),
        json!({"user": "x"}),
        json!(["sub"]),
    ] {
        let (status, answer) = revoke(&app, &admin_token(), body.clone()).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("invalid_parameter")),
            "{body}: {answer}"
        );
    }
}

async fn revocation_survives_a_restart(backend: Backend) {
    let mut app = spawn_with(Options::new(backend)).await;
    let topic = unique_topic("revoke");
    let token = claims_token("gone", None, now_secs() - 1, false);
    let (status, _) = revoke(&app, &admin_token(), json!({"sub": "gone"})).await;
    assert_eq!(status, 200);
    app.restart().await.expect("herald restarts");
    assert_eq!(
        sse_code(&app, &format!("topic={topic}&access_token={token}")).await,
        (401, "revoked".into())
    );
    assert_eq!(app.try_ws(Some(&token)).await.err(), Some(401));
}

crate::on_both_stores!(revocation_survives_a_restart);

/// Opens `/v1/ws?{query}` with extra request headers: the upgrade's status.
async fn ws_status(
    app: &herald_tests::app::TestApp,
    query: &str,
    headers: &[(&'static str, String)],
) -> u16 {
    let url = format!("{}/v1/ws?{query}", app.base_url.replace("http://", "ws://"));
    let headers: Vec<(&str, String)> = headers.iter().map(|(n, v)| (*n, v.clone())).collect();
    match herald_tests::clients::open_ws(&url, &headers, herald_tests::clients::WAIT).await {
        Ok(_) => 101,
        Err(herald_tests::clients::WsRefusal::Http(status, _)) => status,
        Err(e) => panic!("WebSocket connect failed: {e:?}"),
    }
}

/// (status of ws, sse, poll) with `query` and `headers`.
async fn statuses(
    app: &herald_tests::app::TestApp,
    topic: &str,
    query: &str,
    headers: &[(&'static str, String)],
) -> (u16, u16, u16) {
    let ws = ws_status(app, query, headers).await;
    let get = |path: &str| {
        let mut req = app
            .http
            .get(format!("{}/v1/{path}?topic={topic}&{query}", app.base_url));
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req
    };
    let sse = get("sse").send().await.expect("answered").status().as_u16();
    let poll = get("poll")
        .send()
        .await
        .expect("answered")
        .status()
        .as_u16();
    (ws, sse, poll)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_path_works_on_every_transport_in_the_documented_order() {
    let app = herald_tests::app::spawn_app().await;
    let topic = herald_tests::app::unique_topic("cred");
    let token = app.token("cred", &["cred.>"], &[], 60);
    let ok = (101, 200, 200);
    let bearer = vec![("authorization", format!("Bearer {token}"))];
    let cookie = vec![("cookie", format!("herald_token={token}"))];
    assert_eq!(
        statuses(&app, &topic, "", &bearer).await,
        ok,
        "Authorization header"
    );
    assert_eq!(
        statuses(&app, &topic, "", &cookie).await,
        ok,
        "session cookie"
    );
    let query = format!("access_token={token}");
    assert_eq!(
        statuses(&app, &topic, &query, &[]).await,
        ok,
        "access_token"
    );
    // A ticket per connection: each is single-use.
    let mut ticket_statuses = Vec::new();
    for _ in 0..3 {
        let r = app
            .http
            .post(format!("{}/v1/tickets", app.base_url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.expect("json");
        ticket_statuses.push(body["ticket"].as_str().expect("ticket").to_owned());
    }
    let ws = ws_status(&app, &format!("ticket={}", ticket_statuses[0]), &[]).await;
    let sse = app
        .http
        .get(format!(
            "{}/v1/sse?topic={topic}&ticket={}",
            app.base_url, ticket_statuses[1]
        ))
        .send()
        .await
        .expect("answered")
        .status();
    let poll = app
        .http
        .get(format!(
            "{}/v1/poll?topic={topic}&ticket={}",
            app.base_url, ticket_statuses[2]
        ))
        .send()
        .await
        .expect("answered")
        .status();
    assert_eq!((ws, sse.as_u16(), poll.as_u16()), ok, "ticket");

    // Order of preference: the header is used even with a bad access_token,
    // and a bad header is not rescued by a good access_token.
    assert_eq!(
        statuses(&app, &topic, "access_token=garbage", &bearer).await,
        ok
    );
    let bad_header = vec![("authorization", "Bearer garbage".to_owned())];
    assert_eq!(
        statuses(&app, &topic, &format!("access_token={token}"), &bad_header).await,
        (401, 401, 401)
    );
    // Nothing at all: 401 on SSE and polling; a WebSocket may still send `auth` first.
    assert_eq!(statuses(&app, &topic, "", &[]).await, (101, 401, 401));
}
