//! Bad input on the subscribing side: malformed and refused WebSocket frames,
//! SSE and poll requests with invalid topics, cursors, parameters and
//! credentials, the connection limit, and a storm of connects and
//! disconnects. Each refusal must carry the contract's status or close code
//! and its machine-readable `code`, and must leave the server serving.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::auth::{Claims, HeraldClaims, Minter};
use herald_tests::app::{
    Backend, Options, TestApp, now_secs, spawn_app, spawn_with, token_with, unique_topic,
};
use herald_tests::clients::{SseClient, WAIT, WsClient, WsEvent};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// How long a test waits for a refused slot to come free.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// A server on SQLite with extra settings.
async fn spawn_with_env(env: &[(&str, &str)]) -> TestApp {
    let mut options = Options::new(Backend::Sqlite);
    for (key, value) in env {
        options = options.env(key, value);
    }
    spawn_with(options).await
}

/// A WebSocket authenticated in the upgrade, its `authenticated` frame read.
async fn ws_authenticated(app: &TestApp, token: &str) -> WsClient {
    let mut ws = app.ws(Some(token)).await;
    let frame = ws.next_json().await;
    assert_eq!(frame["op"], "authenticated", "{frame}");
    ws
}

/// Sends `{"op":"ping"}` and expects `{"op":"pong"}` as the next frame:
/// the connection is still open and still reading frames.
async fn assert_still_usable(ws: &mut WsClient) {
    ws.send_json(json!({"op": "ping"})).await;
    let frame = ws.next_json().await;
    assert_eq!(frame, json!({"op": "pong"}), "the connection answers pings");
}

/// The next frame, which must be an `error` with `code`.
async fn expect_error(ws: &mut WsClient, code: &str) -> Value {
    let frame = ws.next_json().await;
    assert_eq!(
        (frame["op"].as_str(), frame["code"].as_str()),
        (Some("error"), Some(code)),
        "{frame}"
    );
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error frame says why: {frame}"
    );
    frame
}

/// The next `count` JSON frames, pings skipped.
async fn next_frames(ws: &mut WsClient, count: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        frames.push(ws.next_json().await);
    }
    frames
}

/// The one frame of `frames` whose `op` is `op`.
fn only_op<'a>(frames: &'a [Value], op: &str) -> &'a Value {
    let found: Vec<&Value> = frames.iter().filter(|f| f["op"] == op).collect();
    assert_eq!(found.len(), 1, "exactly one {op} frame in {frames:?}");
    found[0]
}

/// The next thing from the server, pings aside, must be a close with `code`:
/// no frame before it.
async fn expect_close(ws: &mut WsClient, code: u16, what: &str) {
    loop {
        match ws.next_within(WAIT).await {
            Some(WsEvent::Ping) => continue,
            Some(WsEvent::Closed(got, _)) => {
                assert_eq!(got, code, "close code after {what}");
                return;
            }
            other => panic!("expected a close with {code} after {what}, got {other:?}"),
        }
    }
}

/// What a refused HTTP request answered: status, content type and `code`.
#[derive(Debug, PartialEq)]
struct Refusal {
    status: u16,
    content_type: String,
    code: String,
}

/// GETs `path?query` with `headers`. A `200` is not read (an SSE stream
/// would not end), so its `code` is empty.
async fn get(app: &TestApp, path: &str, query: &str, headers: &[(&str, String)]) -> Refusal {
    let mut req = app
        .http
        .get(format!("{}{path}?{query}", app.base_url))
        .timeout(WAIT);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let response = req.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let code = if status == 200 {
        String::new()
    } else {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["code"].as_str().unwrap_or("").to_owned()
    };
    Refusal {
        status,
        content_type,
        code,
    }
}

/// A WebSocket upgrade request for `/v1/ws` sent as plain HTTP, so that a
/// refusal's problem document can be read (a WebSocket client only reports
/// the status).
async fn ws_upgrade(app: &TestApp, bearer: Option<&str>) -> Refusal {
    let mut headers = vec![
        ("connection", "Upgrade".to_owned()),
        ("upgrade", "websocket".to_owned()),
        ("sec-websocket-version", "13".to_owned()),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
    ];
    if let Some(token) = bearer {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    get(app, "/v1/ws", "", &headers).await
}

/// `application/problem+json` with `status` and `code`.
fn problem(status: u16, code: &str) -> Refusal {
    Refusal {
        status,
        content_type: "application/problem+json".into(),
        code: code.into(),
    }
}

// WebSocket: refused frames keep the connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_text_frame_gets_invalid_frame_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    for text in ["hello", "{", "", "[1,2]", r#"{"topics":["a"]}"#] {
        ws.send_text(text).await;
        expect_error(&mut ws, "invalid_frame").await;
        assert_still_usable(&mut ws).await;
    }
    // A frame that names an op but has the wrong shape is refused too.
    ws.send_json(json!({"op": "subscribe", "topics": "not-a-list"}))
        .await;
    let frame = ws.next_json().await;
    assert_eq!(frame["op"], "error", "{frame}");
    assert_still_usable(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_op_gets_unknown_op_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    for op in ["publish", "PING", ""] {
        ws.send_json(json!({"op": op})).await;
        expect_error(&mut ws, "unknown_op").await;
        assert_still_usable(&mut ws).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_max_frame_bytes_closes_with_1009() {
    let app = spawn_with_env(&[("HERALD_MAX_FRAME_BYTES", "4096")]).await;
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    // Just under the limit is an ordinary frame.
    let under = json!({"op": "ping", "pad": "x".repeat(4000)}).to_string();
    assert!(under.len() < 4096);
    ws.send_text(&under).await;
    assert_eq!(ws.next_json().await, json!({"op": "pong"}));
    let over = json!({"op": "ping", "pad": "x".repeat(5000)}).to_string();
    ws.send_text(&over).await;
    expect_close(&mut ws, 1009, "a frame over the limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_larger_than_max_frame_bytes_closes_with_1009() {
    let app = spawn_with_env(&[("HERALD_MAX_FRAME_BYTES", "4096")]).await;
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    // One JSON text message of 6000 bytes, in two frames of 3000.
    let message = json!({"op": "ping", "pad": "x".repeat(6000 - 22)}).to_string();
    assert_eq!(message.len(), 6000);
    let (first, rest) = message.split_at(3000);
    for (part, opcode, is_final) in [
        (first, OpCode::Data(Data::Text), false),
        (rest, OpCode::Data(Data::Continue), true),
    ] {
        ws.stream
            .send(Message::Frame(Frame::message(
                part.as_bytes().to_vec(),
                opcode,
                is_final,
            )))
            .await
            .expect("the fragment is sent");
    }
    expect_close(&mut ws, 1009, "a fragmented message over the limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topic_gets_invalid_topic_while_the_valid_topics_of_the_frame_are_subscribed() {
    let app = spawn_app().await;
    let topic = unique_topic("valid");
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    ws.subscribe(&["a..b", &topic], None).await;
    let frames = next_frames(&mut ws, 2).await;
    let error = only_op(&frames, "error");
    assert_eq!(error["code"], "invalid_topic", "{error}");
    assert_eq!(
        error["topics"],
        json!(["a..b"]),
        "the error names the topic"
    );
    let subscribed = only_op(&frames, "subscribed");
    assert_eq!(subscribed["topics"], json!([topic]), "{subscribed}");
    let published = app.publish(&topic, json!("after")).await;
    let event = ws.next_event().await;
    assert_eq!(event["topic"], topic.as_str());
    assert_eq!(event["seq"], published["seq"]);
    assert_eq!(event["data"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_since_cursor_gets_invalid_cursor_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let topic = unique_topic("cursor");
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    for since in [
        "garbage".to_owned(),
        format!("{topic}:abc"),
        format!("{topic}:-1"),
        format!("{topic}:"),
        "a..b:1".to_owned(),
        format!("{topic}:1,{topic}:2"),
    ] {
        ws.subscribe(&[&topic], Some(&since)).await;
        expect_error(&mut ws, "invalid_cursor").await;
        assert_still_usable(&mut ws).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_topic_gets_forbidden_while_the_allowed_topics_are_subscribed_and_receive_events()
 {
    let app = spawn_app().await;
    let (allowed, refused) = (unique_topic("allowed"), unique_topic("refused"));
    let token = app.token("u", &["allowed.>"], &[], 3600);
    let mut ws = ws_authenticated(&app, &token).await;
    ws.subscribe(&[&allowed, &refused], None).await;
    let frames = next_frames(&mut ws, 2).await;
    let error = only_op(&frames, "error");
    assert_eq!(error["code"], "forbidden", "{error}");
    assert_eq!(error["topics"], json!([refused]), "{error}");
    let subscribed = only_op(&frames, "subscribed");
    assert_eq!(subscribed["topics"], json!([allowed]), "{subscribed}");
    // The refused topic's event is published first: it must not arrive.
    app.publish(&refused, json!("secret")).await;
    app.publish(&allowed, json!("visible")).await;
    let event = ws.next_event().await;
    assert_eq!(
        (event["topic"].as_str(), &event["data"]),
        (Some(allowed.as_str()), &json!("visible"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_topics_than_max_topics_per_connection_get_too_many_topics() {
    let app = spawn_with_env(&[("HERALD_MAX_TOPICS_PER_CONNECTION", "3")]).await;
    let topics: Vec<String> = (0..4).map(|_| unique_topic("many")).collect();
    let [a, b, c, d] = [&topics[0], &topics[1], &topics[2], &topics[3]];
    let mut ws = ws_authenticated(&app, &app.root_token()).await;
    // Four at once.
    ws.subscribe(&[a, b, c, d], None).await;
    expect_error(&mut ws, "too_many_topics").await;
    assert_still_usable(&mut ws).await;
    // Three fit; one more does not.
    ws.subscribe(&[a, b, c], None).await;
    let subscribed = ws.next_json().await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    ws.subscribe(&[d], None).await;
    expect_error(&mut ws, "too_many_topics").await;
    // The refused topic was not subscribed; the others still deliver.
    app.publish(d, json!("refused")).await;
    app.publish(a, json!("kept")).await;
    let event = ws.next_event().await;
    assert_eq!(
        (event["topic"].as_str(), &event["data"]),
        (Some(a.as_str()), &json!("kept"))
    );
}

// WebSocket: authentication.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_a_first_frame_other_than_auth_closes_with_4001() {
    // A long auth timeout, so that only the frame can cause the close.
    let app = spawn_with_env(&[("HERALD_AUTH_TIMEOUT_SECS", "60")]).await;
    let topic = unique_topic("unauth");
    let frames = [
        json!({"op": "ping"}).to_string(),
        json!({"op": "subscribe", "topics": [topic]}).to_string(),
        json!({"op": "nonsense"}).to_string(),
        "not json".to_owned(),
    ];
    for frame in frames {
        let mut ws = app.ws(None).await;
        ws.send_text(&frame).await;
        expect_close(&mut ws, 4001, &frame).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_a_binary_first_frame_closes_with_4001() {
    // A long auth timeout, so that only the frame can cause the close.
    let app = spawn_with_env(&[("HERALD_AUTH_TIMEOUT_SECS", "60")]).await;
    let mut ws = app.ws(None).await;
    ws.stream
        .send(Message::binary(br#"{"op":"ping"}"#.to_vec()))
        .await
        .expect("the frame is sent");
    expect_close(&mut ws, 4001, "a binary first frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_frame_with_a_bad_token_closes_an_unauthenticated_connection_with_4001() {
    // A long auth timeout, so that only the frame can cause the close.
    let app = spawn_with_env(&[("HERALD_AUTH_TIMEOUT_SECS", "60")]).await;
    let other_key = Minter::hs256(b"not the server's key")
        .mint(&Claims {
            sub: "u".into(),
            exp: (now_secs() + 3600) as u64,
            herald: HeraldClaims {
                subscribe: vec![">".into()],
                ..HeraldClaims::default()
            },
            ..Claims::default()
        })
        .expect("HS256 signing cannot fail");
    let cases = [
        ("garbage", json!({"op": "auth", "token": "abc"})),
        (
            "expired",
            json!({"op": "auth", "token": app.token("u", &[">"], &[], -30)}),
        ),
        ("another key", json!({"op": "auth", "token": other_key})),
        ("empty", json!({"op": "auth", "token": ""})),
        ("no token", json!({"op": "auth"})),
    ];
    for (what, frame) in cases {
        let mut ws = app.ws(None).await;
        ws.send_json(frame).await;
        expect_close(&mut ws, 4001, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_frame_within_the_auth_timeout_closes_with_4001() {
    let app = spawn_with_env(&[("HERALD_AUTH_TIMEOUT_SECS", "1")]).await;
    let opened = Instant::now();
    let mut ws = app.ws(None).await;
    let (frames, code) = ws.until_closed(WAIT).await;
    assert_eq!((frames, code), (vec![], Some(4001)));
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed by the 1 s auth timeout, not before nor long after: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_first_auth_frame_is_answered_authenticated_and_then_subscribe_works() {
    let app = spawn_with_env(&[("HERALD_AUTH_TIMEOUT_SECS", "1")]).await;
    let topic = unique_topic("authed");
    let exp = (now_secs() + 3600) as u64;
    let token = token_with(Claims {
        sub: "u".into(),
        exp,
        iat: Some(now_secs() as u64),
        herald: HeraldClaims {
            subscribe: vec!["authed.>".into()],
            ..HeraldClaims::default()
        },
        ..Claims::default()
    });
    let mut ws = app.ws(None).await;
    ws.send_json(json!({"op": "auth", "token": token})).await;
    assert_eq!(
        ws.next_json().await,
        json!({"op": "authenticated", "exp": exp})
    );
    ws.subscribe(&[&topic], None).await;
    let subscribed = ws.next_json().await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["topics"], json!([topic]));
    // Past the auth timeout, an authenticated connection stays open.
    match ws.next_within(Duration::from_secs(2)).await {
        None | Some(WsEvent::Ping) => {}
        other => panic!("nothing expected past the auth timeout, got {other:?}"),
    }
    app.publish(&topic, json!("hello")).await;
    let event = ws.next_event().await;
    assert_eq!(
        (event["topic"].as_str(), &event["data"]),
        (Some(topic.as_str()), &json!("hello"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_credential_in_the_upgrade_is_refused_401_before_any_upgrade() {
    let app = spawn_app().await;
    let expired = app.token("u", &[">"], &[], -30);
    for (what, token, code) in [
        ("garbage", "garbage", "unauthorized"),
        ("malformed JWT", "a.b.c", "unauthorized"),
        ("expired", expired.as_str(), "token_expired"),
    ] {
        assert_eq!(app.try_ws(Some(token)).await.err(), Some(401), "{what}");
        assert_eq!(
            ws_upgrade(&app, Some(token)).await,
            problem(401, code),
            "{what}"
        );
    }
    // A bad access_token in the URL is refused the same way.
    let url = format!(
        "{}/v1/ws?access_token=garbage",
        app.base_url.replace("http://", "ws://")
    );
    match herald_tests::clients::open_ws(&url, &[], WAIT).await {
        Err(herald_tests::clients::WsRefusal::Http(status, _)) => assert_eq!(status, 401),
        Err(e) => panic!("expected an HTTP refusal, got {e:?}"),
        Ok(_) => panic!("a garbage access_token was upgraded"),
    }
    // And a good credential is upgraded.
    ws_authenticated(&app, &app.root_token()).await;
}

// SSE and polling.

/// (what, query, extra headers, expected status, expected code) for both
/// `/v1/sse` and `/v1/poll`.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

/// The refusals both SSE and polling make the same way. `topic` is allowed
/// by `token`; the server holds at most 3 topics per connection.
fn shared_cases(app: &TestApp, topic: &str, token: &str) -> Vec<Case> {
    let auth = format!("access_token={token}");
    let many: Vec<String> = (0..4).map(|i| format!("topic={topic}.{i}")).collect();
    let long = "a".repeat(256);
    let mut cases: Vec<Case> = Vec::new();
    for bad in ["a..b", "a%20b", ".a", "a.", "a:b", "%C3%BC", long.as_str()] {
        cases.push((
            "invalid topic",
            format!("topic={bad}&{auth}"),
            vec![],
            400,
            "invalid_topic",
        ));
    }
    cases.push((
        "an invalid topic next to a valid one",
        format!("topic={topic}&topic=a..b&{auth}"),
        vec![],
        400,
        "invalid_topic",
    ));
    cases.push(("no topic", auth.clone(), vec![], 400, "invalid_topic"));
    cases.push((
        "an empty topic",
        format!("topic=&{auth}"),
        vec![],
        400,
        "invalid_topic",
    ));
    for since in [
        "garbage".to_owned(),
        format!("{topic}:abc"),
        format!("{topic}:-1"),
        format!("{topic}:"),
        "a..b:1".to_owned(),
        format!("{topic}:1,{topic}:2"),
    ] {
        cases.push((
            "malformed since",
            format!("topic={topic}&since={since}&{auth}"),
            vec![],
            400,
            "invalid_cursor",
        ));
    }
    cases.push((
        "more topics than the limit",
        format!("{}&{auth}", many.join("&")),
        vec![],
        400,
        "too_many_topics",
    ));
    cases.push((
        "a forbidden topic",
        format!("topic=refused.x&{auth}"),
        vec![],
        403,
        "forbidden",
    ));
    cases.push((
        "a forbidden topic next to an allowed one",
        format!("topic={topic}&topic=refused.x&{auth}"),
        vec![],
        403,
        "forbidden",
    ));
    cases.push((
        "a forbidden topic, token in the header",
        "topic=refused.x".to_owned(),
        vec![("authorization", format!("Bearer {token}"))],
        403,
        "forbidden",
    ));
    cases.push((
        "no credentials",
        format!("topic={topic}"),
        vec![],
        401,
        "unauthorized",
    ));
    cases.push((
        "a garbage access_token",
        format!("topic={topic}&access_token=garbage"),
        vec![],
        401,
        "unauthorized",
    ));
    cases.push((
        "a garbage bearer",
        format!("topic={topic}"),
        vec![("authorization", "Bearer garbage".to_owned())],
        401,
        "unauthorized",
    ));
    let expired = app.token("u", &["ok.>"], &[], -30);
    cases.push((
        "an expired access_token",
        format!("topic={topic}&access_token={expired}"),
        vec![],
        401,
        "token_expired",
    ));
    cases
}

/// Runs `cases` against `path` and checks each answer.
async fn check_cases(app: &TestApp, path: &str, cases: Vec<Case>) {
    for (what, query, headers, status, code) in cases {
        assert_eq!(
            get(app, path, &query, &headers).await,
            problem(status, code),
            "{path} {what}: ?{query}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refuses_bad_input_with_the_status_and_code_of_the_contract() {
    let app = spawn_with_env(&[("HERALD_MAX_TOPICS_PER_CONNECTION", "3")]).await;
    let topic = unique_topic("ok");
    let token = app.token("u", &["ok.>"], &[], 3600);
    let mut cases = shared_cases(&app, &topic, &token);
    for last_event_id in ["garbage", "a..b:1", &format!("{topic}:x")] {
        cases.push((
            "malformed Last-Event-ID",
            format!("topic={topic}&access_token={token}"),
            vec![("last-event-id", last_event_id.to_owned())],
            400,
            "invalid_cursor",
        ));
    }
    check_cases(&app, "/v1/sse", cases).await;
    // The same request without the bad part opens a stream.
    let ok = get(
        &app,
        "/v1/sse",
        &format!("topic={topic}&since={topic}:0&access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(
        (ok.status, ok.content_type.as_str()),
        (200, "text/event-stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_refuses_bad_input_with_the_status_and_code_of_the_contract() {
    let app = spawn_with_env(&[("HERALD_MAX_TOPICS_PER_CONNECTION", "3")]).await;
    let topic = unique_topic("ok");
    let token = app.token("u", &["ok.>"], &[], 3600);
    let auth = format!("topic={topic}&access_token={token}");
    let mut cases = shared_cases(&app, &topic, &token);
    for param in [
        "wait=61",
        "wait=-1",
        "wait=abc",
        "wait=",
        "wait=1.5",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
    ] {
        cases.push((
            "parameter out of range",
            format!("{auth}&{param}"),
            vec![],
            400,
            "invalid_parameter",
        ));
    }
    check_cases(&app, "/v1/poll", cases).await;
    // The edges of the ranges are accepted. An event after the cursor lets
    // wait=60 answer at once.
    app.publish(&topic, json!(1)).await;
    for param in ["wait=0", "wait=60", "limit=1", "limit=1000"] {
        let (status, body) = app.poll(&format!("{auth}&since={topic}:0&{param}")).await;
        assert_eq!(status, 200, "{param}: {body}");
        assert_eq!(body["events"][0]["seq"], 1, "{param}: {body}");
    }
}

// The protocol version a client speaks (`?protocol=`).

/// `POST /v1/tickets` with `token`: the ticket.
async fn ticket(app: &TestApp, token: &str) -> String {
    let body: Value = app
        .http
        .post(format!("{}/v1/tickets", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("a ticket is minted")
        .json()
        .await
        .expect("the ticket answer is JSON");
    body["ticket"]
        .as_str()
        .expect("the answer has a ticket")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_the_server_does_not_speak_is_refused_on_every_transport_and_the_server_keeps_serving()
 {
    let app = spawn_app().await;
    let topic = unique_topic("ok");
    let token = app.token("u", &["ok.>"], &[], 3600);
    for protocol in ["2", "0", "v1", ""] {
        let query = format!("protocol={protocol}&topic={topic}&access_token={token}");
        for path in ["/v1/sse", "/v1/poll"] {
            assert_eq!(
                get(&app, path, &query, &[]).await,
                problem(400, "unsupported_protocol"),
                "{path}?{query}"
            );
        }
        // Upgraded, then told: browser code never sees a refused handshake's status.
        let mut ws = app
            .try_ws_query(&format!("protocol={protocol}"), Some(&token))
            .await
            .expect("the upgrade is accepted");
        let frame = expect_error(&mut ws, "unsupported_protocol").await;
        assert!(
            frame["message"]
                .as_str()
                .is_some_and(|m| m.contains("protocol 1")),
            "the error names the version the server speaks: {frame}"
        );
        expect_close(&mut ws, 4426, "an unsupported protocol").await;
    }

    // Refused before the credentials are looked at: the ticket is still good.
    for path in ["/v1/sse", "/v1/ws"] {
        let ticket = ticket(&app, &token).await;
        if path == "/v1/ws" {
            let mut ws = app
                .try_ws_query(&format!("protocol=2&ticket={ticket}"), None)
                .await
                .expect("the upgrade is accepted");
            expect_error(&mut ws, "unsupported_protocol").await;
            expect_close(&mut ws, 4426, "an unsupported protocol").await;
            let mut ws = app
                .try_ws_query(&format!("protocol=1&ticket={ticket}"), None)
                .await
                .expect("the ticket opens a connection");
            assert_eq!(ws.next_json().await["op"], "authenticated");
        } else {
            let refused = get(
                &app,
                path,
                &format!("protocol=2&topic={topic}&ticket={ticket}"),
                &[],
            )
            .await;
            assert_eq!(refused, problem(400, "unsupported_protocol"));
            let opened = get(
                &app,
                path,
                &format!("protocol=1&topic={topic}&ticket={ticket}"),
                &[],
            )
            .await;
            assert_eq!(
                (opened.status, opened.content_type.as_str()),
                (200, "text/event-stream")
            );
        }
    }

    // Version 1, named or implied (clients older than the parameter), is served.
    for version in ["protocol=1&", ""] {
        let query = format!("{version}topic={topic}&access_token={token}");
        let sse = get(&app, "/v1/sse", &query, &[]).await;
        assert_eq!(
            (sse.status, sse.content_type.as_str()),
            (200, "text/event-stream"),
            "{query}"
        );
        let (status, body) = app.poll(&query).await;
        assert_eq!(status, 200, "{query}: {body}");
        let mut ws = app
            .try_ws_query(version.trim_end_matches('&'), Some(&token))
            .await
            .expect("the upgrade is accepted");
        assert_eq!(ws.next_json().await["op"], "authenticated");
        ws.subscribe(&[&topic], None).await;
        assert_eq!(ws.next_json().await["op"], "subscribed");
        assert_still_usable(&mut ws).await;
    }
    let health = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(health.status(), 200);
}

// Limits and robustness.

/// Opens `/v1/sse?{query}`; the answer's head must come within `WAIT`.
async fn open_sse(app: &TestApp, query: &str) -> reqwest::Response {
    tokio::time::timeout(WAIT, app.sse_response(query, None))
        .await
        .expect("the SSE request is answered in time")
}

/// Opens `/v1/sse?{query}` on a node that may be full: the stream, or
/// `None` when the node said to come back later (a finite `200` answer with
/// `event: drain` and reason `full`, which a native EventSource survives).
async fn sse_unless_full(app: &TestApp, query: &str) -> Option<SseClient> {
    let response = open_sse(app, query).await;
    assert_eq!(
        response.status(),
        200,
        "an SSE request on a full node is not failed"
    );
    if response.content_length().is_none() {
        return Some(SseClient::new(response));
    }
    let body = response.text().await.expect("a short answer");
    assert!(body.starts_with("retry: "), "{body:?}");
    assert!(
        body.ends_with("event: drain\ndata: {\"reason\":\"full\"}\n\n"),
        "{body:?}"
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_upgrades_are_refused_503_and_streams_told_to_come_back_until_one_leaves()
 {
    // The server learns that an SSE client has gone only when writing to it
    // fails, on the heartbeat's keepalive (about two heartbeats after the
    // client left): a short heartbeat keeps that wait short.
    let app = spawn_with_env(&[
        ("HERALD_MAX_CONNECTIONS", "3"),
        ("HERALD_HEARTBEAT_SECS", "1"),
    ])
    .await;
    let topic = unique_topic("full");
    let token = app.root_token();
    // From seq 0, so that each stream delivers the event below however its
    // subscription races with the publish.
    let query = format!("topic={topic}&since={topic}:0&access_token={token}");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = sse_unless_full(&app, &query).await;
        streams.push(stream.expect("a stream below the limit opens"));
    }
    assert!(
        sse_unless_full(&app, &query).await.is_none(),
        "the node is full"
    );
    assert_eq!(app.try_ws(Some(&token)).await.err(), Some(503));
    assert_eq!(
        ws_upgrade(&app, Some(&token)).await,
        problem(503, "unavailable")
    );
    // The open streams are unharmed: they still deliver.
    app.publish(&topic, json!("still here")).await;
    for stream in &mut streams {
        let message = stream.next().await.expect("the stream is open");
        assert_eq!(message.json()["data"], "still here");
    }

    // One leaves; its place is taken again within a bounded wait.
    drop(streams.pop());
    let deadline = Instant::now() + RELEASE_DEADLINE;
    let replacement = loop {
        if let Some(stream) = sse_unless_full(&app, &query).await {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "a dropped stream's place was not freed within {RELEASE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    streams.push(replacement);
    // Full again.
    assert!(sse_unless_full(&app, &query).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_rapid_connects_and_disconnects_leave_the_server_serving_and_the_count_back_at_zero()
 {
    const MAX_CONNECTIONS: usize = 50;
    const CONNECTIONS: usize = 300;
    const AT_ONCE: usize = 30;
    let app = spawn_with_env(&[("HERALD_MAX_CONNECTIONS", "50")]).await;
    let topic = unique_topic("churn");
    let token = app.root_token();

    futures_util::stream::iter(0..CONNECTIONS)
        .for_each_concurrent(AT_ONCE, |i| {
            let (app, token, topic) = (&app, &token, &topic);
            async move {
                let mut ws = match app.try_ws(Some(token)).await {
                    Ok(ws) => ws,
                    Err(status) => panic!("connection {i} refused with {status}"),
                };
                match i % 3 {
                    // Gone straight after the upgrade, without a close frame.
                    0 => {}
                    // Gone after subscribing, without a close frame.
                    1 => {
                        ws.next_json().await;
                        ws.subscribe(&[topic], None).await;
                        let subscribed = ws.next_json().await;
                        assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
                    }
                    // Subscribed, then a proper close.
                    _ => {
                        ws.subscribe(&[topic], None).await;
                        let _ = ws.stream.close(None).await;
                    }
                }
            }
        })
        .await;

    let health = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .expect("answered");
    assert_eq!(health.status(), 200);
    let mut fresh = app.ws_subscribed(&token, &[&topic], None).await;
    let published = app.publish(&topic, json!("after the storm")).await;
    let event = fresh.next_event().await;
    assert_eq!(
        (&event["seq"], &event["data"]),
        (&published["seq"], &json!("after the storm"))
    );

    // Every place is free again: the whole limit can be held at once, and
    // the limit still holds.
    let mut held = vec![fresh];
    let deadline = Instant::now() + RELEASE_DEADLINE;
    while held.len() < MAX_CONNECTIONS {
        match app.try_ws(Some(&token)).await {
            Ok(ws) => held.push(ws),
            Err(503) => {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {MAX_CONNECTIONS} connections could be held after the storm",
                    held.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("expected 101 or 503, got {status}"),
        }
    }
    assert_eq!(app.try_ws(Some(&token)).await.err(), Some(503));
}
