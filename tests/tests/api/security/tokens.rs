//! Tokens, credentials and the HTTP handlers that check them: how long a
//! token may live against how long its revocation is kept, which claims and
//! headers a token must (not) carry, what is checked before a request's
//! body, tickets per subject, the same-origin rule, the development token,
//! and methods a path does not serve. Each test failed on the binary the
//! findings were made on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald::auth::{Claims, HeraldClaims};
use herald_tests::app::{
    Backend, Options, SECRET, TestApp, binary, now_secs, spawn_app, spawn_with, token_with,
    unique_topic,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::raw::{WAIT, assert_healthy, connect, read_until, whole_answer};

/// How long a server that should refuse its settings may take to exit.
const START_LIMIT: Duration = Duration::from_secs(20);

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

/// `POST /v1/admin/revoke` with `body`, as an administrator whose token
/// lives 3 s (within every lifetime bound the tests set); panics unless
/// `200`.
async fn revoke(app: &TestApp, body: Value) {
    let admin = token_with(Claims {
        herald: HeraldClaims {
            admin: true,
            ..HeraldClaims::default()
        },
        ..claims("admin", 3)
    });
    let response = app
        .http
        .post(format!("{}/v1/admin/revoke", app.base_url))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .expect("the revoke request is answered");
    assert_eq!(response.status(), 200, "revoking {body}");
}

/// Sends `request` on a new connection and reads one whole answer (head
/// and `Content-Length` body) within `WAIT`.
async fn raw_exchange(app: &TestApp, request: &str) -> String {
    let mut stream = connect(app).await;
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let (got, _) = read_until(&mut stream, whole_answer).await;
    String::from_utf8(got).expect("a textual answer")
}

/// The value of header `name` in a raw answer's head.
fn header_value<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = &answer[..answer.find("\r\n\r\n").unwrap_or(answer.len())];
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

fn body_of(answer: &str) -> Value {
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

// Finding: revocations were pruned after HERALD_REVOCATION_TTL_SECS while
// the tokens they revoke lived longer.

#[test]
fn a_revocation_ttl_shorter_than_the_longest_token_stops_the_server_at_start_up() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("HERALD_JWT_SECRET", SECRET)
        .env("HERALD_REVOCATION_TTL_SECS", "3")
        .env(
            "HERALD_DATABASE_URL",
            format!("sqlite://{}/herald.db", dir.path().display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald serve runs");
    let deadline = Instant::now() + START_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started with a revocation TTL of 3 s and 30-day tokens");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the server refused to start");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr is piped"), &mut stderr)
        .expect("stderr reads");
    assert!(
        stderr.contains("HERALD_REVOCATION_TTL_SECS")
            && stderr.contains("HERALD_JWT_MAX_LIFETIME_SECS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_by_jti_is_never_accepted_again_after_its_revocation_is_pruned() {
    const TTL_SECS: u64 = 5;
    const HEARTBEAT_SECS: u64 = 1;
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_REVOCATION_TTL_SECS", TTL_SECS)
            .env("HERALD_JWT_MAX_LIFETIME_SECS", 4)
            .env("HERALD_HEARTBEAT_SECS", HEARTBEAT_SECS),
    )
    .await;
    let with_jti = |ttl_secs: i64, jti: &str| {
        token_with(Claims {
            jti: Some(jti.into()),
            ..claims("holder", ttl_secs)
        })
    };
    // A token that lives longer than any revocation is kept: refused outright.
    let hour = with_jti(3600, "an-hour");
    assert_refused(
        &app,
        &hour,
        "HERALD_JWT_MAX_LIFETIME_SECS",
        "a 1-hour token",
    )
    .await;
    // A token within the bound is accepted until revoked.
    let short = with_jti(4, "four-seconds");
    assert_eq!(publish(&app, &short).await.0, 201, "a 4-second token");
    revoke(&app, json!({"jti": "an-hour"})).await;
    revoke(&app, json!({"jti": "four-seconds"})).await;
    // Past the revocations' pruning (the TTL and a few heartbeats), neither
    // token is ever accepted again.
    let until = Instant::now() + Duration::from_secs(TTL_SECS + 3 * HEARTBEAT_SECS);
    while Instant::now() < until {
        for (what, token) in [("the 1-hour token", &hour), ("the 4-second token", &short)] {
            let (status, body) = publish(&app, token).await;
            assert_eq!(status, 401, "{what} after its revocation: {body}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_accept_a_thirty_day_token_and_refuse_one_without_iat() {
    let app = spawn_app().await;
    let month = token_with(claims("month", 30 * 86_400));
    let (status, body) = publish(&app, &month).await;
    assert_eq!(status, 201, "a 30-day token: {body}");
    let longer = token_with(claims("longer", 30 * 86_400 + 1));
    assert_refused(
        &app,
        &longer,
        "HERALD_JWT_MAX_LIFETIME_SECS",
        "30 days and a second",
    )
    .await;
    let ageless = token_with(Claims {
        iat: None,
        ..claims("ageless", 60)
    });
    assert_refused(&app, &ageless, "iat", "a token without iat").await;
}

// Finding: publish permission was checked only after the body was read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_the_publish_grant_are_refused_before_a_body_that_never_comes() {
    // A body timeout far beyond the wait: only the early check can answer.
    let app =
        spawn_with(Options::new(Backend::Sqlite).env("HERALD_REQUEST_BODY_TIMEOUT_SECS", 120))
            .await;
    let subscriber = app.token("reader", &[">"], &[], 3600);
    let head = |path: &str, credentials: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: herald\r\n{credentials}Content-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n"
        )
    };
    let bearer = format!("Authorization: Bearer {subscriber}\r\n");
    let cases = [
        ("/v1/publish", bearer.as_str(), "403", "forbidden"),
        ("/v1/publish", "", "401", "unauthorized"),
        (
            "/v1/publish",
            "Authorization: Bearer nonsense\r\n",
            "401",
            "unauthorized",
        ),
        ("/v1/ack", "", "401", "unauthorized"),
        (
            "/v1/ack",
            "Authorization: Bearer nonsense\r\n",
            "401",
            "unauthorized",
        ),
    ];
    for (path, credentials, status, code) in cases {
        let started = Instant::now();
        let answer = raw_exchange(&app, &head(path, credentials)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path} {credentials:?}: {answer}"
        );
        assert_eq!(
            header_value(&answer, "content-type"),
            Some("application/problem+json"),
            "{answer}"
        );
        assert_eq!(body_of(&answer)["code"], code, "{path}: {answer}");
        assert!(
            started.elapsed() < WAIT,
            "{path}: answered without waiting for the body"
        );
    }
    assert_healthy(&app).await;
    // A token that may publish still gets its events stored.
    assert_eq!(publish(&app, &app.root_token()).await.0, 201);
}

// Finding: HERALD_MAX_TICKETS was one pool per node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subject_cannot_take_every_ticket_of_a_node() {
    let app = spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_MAX_TICKETS_PER_SUBJECT", 3)
            .env("HERALD_MAX_TICKETS", 10),
    )
    .await;
    let mint = |token: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .post(format!("{}/v1/tickets", app.base_url))
                .bearer_auth(token)
                .send()
                .await
                .expect("the ticket request is answered");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (
                status,
                retry_after,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let greedy = app.token("greedy", &[">"], &[], 3600);
    for n in 1..=3 {
        let (status, _, body) = mint(greedy.clone()).await;
        assert_eq!(status, 200, "ticket {n} of the subject: {body}");
    }
    let (status, retry_after, body) = mint(greedy.clone()).await;
    assert_eq!(status, 429, "a fourth ticket of one subject: {body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(
        retry_after.is_some_and(|secs| (1..=30).contains(&secs)),
        "Retry-After says when one of its tickets expires: {retry_after:?}"
    );
    // Another token of the same subject shares its bound; another subject
    // does not.
    let same_subject = app.token("greedy", &["x"], &[], 600);
    assert_eq!(mint(same_subject).await.0, 429);
    let other = app.token("patient", &[">"], &[], 3600);
    let (status, _, body) = mint(other).await;
    assert_eq!(status, 200, "another subject still gets tickets: {body}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("herald_tickets_refused_total") && l.contains("subject"))
        .unwrap_or_else(|| panic!("herald_tickets_refused_total by subject in:\n{metrics}"));
    assert!(refused.ends_with(" 2"), "two refusals counted: {refused}");
}

// Finding: the same-origin check ignored the scheme.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_origin_rule_compares_the_scheme_the_server_is_reached_by() {
    let app = spawn_app().await;
    let token = app.token("page", &[">"], &[], 3600);
    let host = format!("127.0.0.1:{}", app.port);
    let poll = |origin: String, forwarded_proto: Option<&'static str>| {
        let mut request = app
            .http
            .get(format!(
                "{}/v1/poll?topic={}&since=x:0",
                app.base_url,
                unique_topic("origin")
            ))
            .bearer_auth(&token)
            .header("Origin", origin);
        if let Some(proto) = forwarded_proto {
            request = request.header("X-Forwarded-Proto", proto);
        }
        async move {
            let response = request.send().await.expect("the poll is answered");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let allowed = [
        (format!("http://{host}"), None),
        (format!("HTTP://{host}"), None),
        (format!("https://{host}"), Some("https")),
        (format!("https://{host}"), Some("https, http")),
    ];
    for (origin, proto) in allowed {
        let (status, body) = poll(origin.clone(), proto).await;
        assert_eq!(status, 200, "{origin} via {proto:?}: {body}");
    }
    let refused = [
        (format!("chrome-extension://{host}"), None),
        (format!("ws://{host}"), None),
        (format!("https://{host}"), None),
        (format!("http://{host}"), Some("https")),
        (format!("chrome-extension://{host}"), Some("https")),
    ];
    for (origin, proto) in refused {
        let (status, body) = poll(origin.clone(), proto).await;
        assert_eq!(status, 403, "{origin} via {proto:?}: {body}");
        assert_eq!(body["code"], "origin_not_allowed", "{body}");
    }
    // The WebSocket upgrade applies the same rule before upgrading.
    let answer = raw_exchange(
        &app,
        &format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: chrome-extension://{host}\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert_eq!(body_of(&answer)["code"], "origin_not_allowed");
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

// Finding: /v1/dev/token answered any Host under --dev (DNS rebinding).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_token_is_offered_to_loopback_hosts_only() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_DEV", "true")).await;
    let port = app.port;
    let ask = |host: String| {
        let app = &app;
        async move {
            raw_exchange(
                app,
                &format!("GET /v1/dev/token HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await
        }
    };
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        "LOCALHOST".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.8.9.10".to_owned(),
        format!("[::1]:{port}"),
        "[::1]".to_owned(),
    ] {
        let answer = ask(host.clone()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "Host {host}: {answer}");
        assert!(body_of(&answer)["token"].is_string(), "{answer}");
    }
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_owned(),
        "localhost.attacker.example".to_owned(),
        "127.0.0.1.attacker.example".to_owned(),
        format!("10.0.0.1:{port}"),
        "[::2]".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "128.0.0.1".to_owned(),
    ] {
        let answer = ask(host.clone()).await;
        assert!(answer.starts_with("HTTP/1.1 403 "), "Host {host}: {answer}");
        assert_eq!(body_of(&answer)["code"], "forbidden", "{answer}");
        assert!(!answer.contains("\"token\""), "{answer}");
    }
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

// Finding: unsupported methods on known paths answered 404.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_serve_is_answered_405_with_allow() {
    let app = spawn_app().await;
    let cases = [
        ("GET", "/v1/publish", "POST"),
        ("PUT", "/v1/publish", "POST"),
        ("DELETE", "/v1/ws", "GET"),
        ("POST", "/v1/sse", "GET"),
        ("PATCH", "/v1/poll", "GET"),
        ("GET", "/v1/tickets", "POST"),
        ("GET", "/v1/ack", "POST"),
        ("POST", "/v1/acks", "GET"),
        ("GET", "/v1/admin/acks", "DELETE"),
        ("GET", "/v1/admin/revoke", "POST"),
        ("DELETE", "/v1/admin/stats", "GET"),
        ("POST", "/healthz", "GET"),
        ("POST", "/readyz", "GET"),
        ("POST", "/metrics", "GET"),
        ("PUT", "/openapi.json", "GET"),
        ("POST", "/v1/dev/token", "GET"),
        ("POST", "/client.js", "GET"),
        ("DELETE", "/", "GET"),
        ("PUT", "/v1/devices", "GET, POST"),
        ("GET", "/v1/devices/some-device", "DELETE"),
        ("POST", "/v1/admin/devices", "DELETE"),
        ("POST", "/v1/push/vapid", "GET"),
        ("POST", "/push-sw.js", "GET"),
    ];
    for (method, path, allow) in cases {
        let answer = raw_exchange(
            &app,
            &format!("{method} {path} HTTP/1.1\r\nHost: herald\r\nContent-Length: 0\r\n\r\n"),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 405 "),
            "{method} {path}: {answer}"
        );
        assert_eq!(
            header_value(&answer, "allow"),
            Some(allow),
            "{method} {path}: {answer}"
        );
        assert_eq!(
            header_value(&answer, "content-type"),
            Some("application/problem+json"),
            "{answer}"
        );
        assert_eq!(body_of(&answer)["code"], "method_not_allowed", "{answer}");
    }
    // A path that does not exist is still 404.
    let answer = raw_exchange(
        &app,
        "DELETE /v1/nothing-here HTTP/1.1\r\nHost: herald\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    assert_healthy(&app).await;
}
