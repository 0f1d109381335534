//! What browsers need from the server: the `Origin` check (no cross-site
//! WebSocket hijacking), CORS for allowed origins, tickets that work on every
//! node once, and event streams that a native `EventSource` survives.

use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::clients::{SseClient, WAIT, WsClient, WsRefusal, open_ws};
use serde_json::{Value, json};

const ALLOWED: &str = "https://app.example.com";

async fn spawn_allowing(origins: &str, backend: Backend) -> TestApp {
    spawn_with(Options::new(backend).env("HERALD_ALLOWED_ORIGINS", origins)).await
}

/// Opens `/v1/ws` as a page on `origin` would, with the session cookie;
/// an HTTP refusal comes back as its status and body.
async fn ws_from(
    app: &TestApp,
    origin: Option<&str>,
    token: &str,
) -> Result<WsClient, (u16, Value)> {
    let url = format!("{}/v1/ws", app.base_url.replace("http://", "ws://"));
    let mut headers = vec![("cookie", format!("herald_token={token}"))];
    if let Some(origin) = origin {
        headers.push(("origin", origin.to_owned()));
    }
    match open_ws(&url, &headers, WAIT).await {
        Ok(ws) => Ok(ws),
        Err(WsRefusal::Http(status, body)) => Err((status, body)),
        Err(WsRefusal::Failed(e)) => panic!("WebSocket connect failed: {e}"),
        Err(WsRefusal::TimedOut) => panic!("WebSocket connect timed out"),
    }
}

/// A request to `path` as a page on `origin` would send it.
fn from_origin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    origin: &str,
) -> reqwest::RequestBuilder {
    app.http
        .request(method, format!("{}{path}", app.base_url))
        .header("origin", origin)
}

/// The CORS preflight a browser sends before `method` on `path` from `origin`.
async fn preflight(
    app: &TestApp,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    from_origin(app, reqwest::Method::OPTIONS, path, origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("answered")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_a_foreign_origin_is_refused_before_the_upgrade() {
    let app = spawn_allowing(ALLOWED, Backend::Sqlite).await;
    let topic = unique_topic("hijack");
    let token = app.token("7", &[&topic], &[], 600);

    let (status, problem) = ws_from(&app, Some("https://evil.example"), &token)
        .await
        .err()
        .expect("a foreign page cannot open a socket with the user's cookie");
    assert_eq!(status, 403);
    assert_eq!(problem["code"], "origin_not_allowed", "{problem}");

    // A listed origin, the server's own origin and no origin at all (not a
    // browser page) are served, and the cookie authenticates them.
    let own = app.base_url.clone();
    for origin in [Some(ALLOWED), Some(own.as_str()), None] {
        let mut ws = ws_from(&app, origin, &token)
            .await
            .unwrap_or_else(|e| panic!("{origin:?} refused: {e:?}"));
        assert_eq!(ws.next_json().await["op"], "authenticated", "{origin:?}");
        ws.subscribe(&[&topic], None).await;
        assert_eq!(ws.next_json().await["op"], "subscribed", "{origin:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_poll_and_tickets_from_a_foreign_origin_are_refused_without_cors_headers() {
    let app = spawn_allowing(ALLOWED, Backend::Sqlite).await;
    let topic = unique_topic("foreign");
    let token = app.token("7", &[&topic], &[], 600);
    let evil = "https://evil.example";
    for (method, path) in [
        (reqwest::Method::POST, "/v1/tickets".to_owned()),
        (reqwest::Method::GET, format!("/v1/sse?topic={topic}")),
        (reqwest::Method::GET, format!("/v1/poll?topic={topic}")),
    ] {
        let response = from_origin(&app, method, &path, evil)
            .bearer_auth(&token)
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{path}"
        );
        assert_eq!(
            header(&response, "content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        let problem: Value = response.json().await.expect("a problem document");
        assert_eq!(problem["code"], "origin_not_allowed", "{path}: {problem}");

        // Its preflight is refused the same way: the browser never sends the request.
        let preflight = preflight(&app, &path, evil, "GET", "authorization").await;
        assert_eq!(preflight.status(), 403, "{path}");
        assert_eq!(
            header(&preflight, "access-control-allow-origin"),
            None,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_cors_for_tickets_sse_and_polling() {
    let app = spawn_allowing(
        "https://*.example.com,http://localhost:5173",
        Backend::Sqlite,
    )
    .await;
    let topic = unique_topic("cors");
    let token = app.token("7", &[&topic], &[&topic], 600);
    for origin in [ALLOWED, "http://localhost:5173"] {
        let preflight = preflight(
            &app,
            "/v1/tickets",
            origin,
            "POST",
            "authorization,content-type",
        )
        .await;
        assert_eq!(preflight.status(), 204, "{origin}");
        assert_eq!(
            header(&preflight, "access-control-allow-origin"),
            Some(origin)
        );
        assert_eq!(
            header(&preflight, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&preflight, "access-control-max-age"), Some("600"));
        let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
        assert!(
            methods.contains("POST") && methods.contains("GET"),
            "{methods}"
        );
        let allowed = header(&preflight, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for needed in ["authorization", "content-type", "last-event-id"] {
            assert!(allowed.contains(needed), "{needed} missing from {allowed}");
        }
    }

    let ticket = from_origin(&app, reqwest::Method::POST, "/v1/tickets", ALLOWED)
        .bearer_auth(&token)
        .send()
        .await
        .expect("answered");
    assert_eq!(ticket.status(), 200);
    assert_eq!(
        header(&ticket, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    assert_eq!(
        header(&ticket, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(
        header(&ticket, "vary").is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "answers that depend on Origin say so"
    );
    let ticket: Value = ticket.json().await.expect("JSON");
    let ticket = ticket["ticket"].as_str().expect("a ticket");

    app.publish(&topic, json!(1)).await;
    let poll = from_origin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/poll?topic={topic}&since={topic}:0"),
        ALLOWED,
    )
    .bearer_auth(&token)
    .send()
    .await
    .expect("answered");
    assert_eq!(poll.status(), 200);
    assert_eq!(header(&poll, "access-control-allow-origin"), Some(ALLOWED));
    let poll: Value = poll.json().await.expect("JSON");
    assert_eq!(poll["events"][0]["data"], 1, "{poll}");

    let sse = from_origin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/sse?topic={topic}&since={topic}:0&ticket={ticket}"),
        "https://eu.app.example.com",
    )
    .send()
    .await
    .expect("answered");
    assert_eq!(sse.status(), 200);
    assert_eq!(
        header(&sse, "access-control-allow-origin"),
        Some("https://eu.app.example.com")
    );
    let mut sse = SseClient::new(sse);
    let first = sse.next().await.expect("the retained event");
    assert_eq!(first.json()["data"], 1);

    // Publishing is for servers: no CORS, whatever the origin.
    let publish = preflight(&app, "/v1/publish", ALLOWED, "POST", "authorization").await;
    assert_eq!(header(&publish, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_minted_on_one_node_opens_one_connection_on_another() {
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    let a = spawn_with(Options::new(Backend::Url(database_url.clone()))).await;
    let b = spawn_with(Options::new(Backend::Url(database_url))).await;
    let topic = unique_topic("roaming");
    let token = a.token("7", &[&topic], &[], 600);

    let mint = |node: &TestApp| {
        node.http
            .post(format!("{}/v1/tickets", node.base_url))
            .bearer_auth(&token)
            .send()
    };
    let minted: Value = mint(&a)
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let ticket = minted["ticket"].as_str().expect("a ticket").to_owned();

    // Used on B: it works there.
    let on_b = b
        .sse_response(&format!("topic={topic}&ticket={ticket}"), None)
        .await;
    assert_eq!(on_b.status(), 200, "a ticket from A opens a stream on B");
    // A second use, on either node, is refused.
    for node in [&a, &b] {
        let (status, problem) = node.poll(&format!("topic={topic}&ticket={ticket}")).await;
        assert_eq!((status, &problem["code"]), (401, &json!("unauthorized")));
    }

    // Of several uses at once, on both nodes, exactly one gets through.
    let minted: Value = mint(&b)
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let ticket = minted["ticket"].as_str().expect("a ticket").to_owned();
    let query = format!("topic={topic}&ticket={ticket}");
    let uses = (0..8).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        node.poll(&query)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(uses)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "one use only: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        7,
        "{statuses:?}"
    );
}

/// Reads an SSE answer whole (it must end by itself).
async fn whole_body(response: reqwest::Response) -> String {
    tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the stream ends by itself")
        .expect("a body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_tells_an_event_source_to_come_back_instead_of_failing_it() {
    let app = spawn_with(Options::new(Backend::Sqlite).env("HERALD_MAX_CONNECTIONS", 1)).await;
    let topic = unique_topic("full");
    let token = app.token("7", &[&topic], &[], 600);
    let _holder = app
        .sse(&format!("topic={topic}&access_token={token}"), None)
        .await;

    let response = app
        .sse_response(
            &format!("topic={topic}&access_token={token}"),
            Some(&format!("{topic}:0")),
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "a native EventSource gives up on anything else"
    );
    assert_eq!(header(&response, "content-type"), Some("text/event-stream"));
    let body = whole_body(response).await;
    let retry: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no retry: in {body:?}"));
    assert!((1_000..=5_000).contains(&retry), "{retry}");
    assert!(
        body.contains("event: drain\ndata: {\"reason\":\"full\"}\n\n"),
        "{body:?}"
    );
    assert!(
        !body.contains("id:"),
        "the client keeps its Last-Event-ID: {body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_allowed_origins_setting_stops_the_server_with_its_name() {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(herald_tests::app::binary())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .env(
                "HERALD_ALLOWED_ORIGINS",
                "https://ok.example.com,app.example.com/path",
            )
            .env("HERALD_DATABASE_URL", "sqlite::memory:")
            .output(),
    )
    .await
    .expect("the server exits at once")
    .expect("it runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("app.example.com/path") && stderr.contains("scheme://host"),
        "{stderr}"
    );
}
