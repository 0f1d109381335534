//! Tokens over the life of a long connection: expiry, the `expiring` notice,
//! in-band refresh (and narrowing), RS256/ES256 keys, and that no token is logged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::auth::{Claims, HeraldClaims};
use herald_tests::app::{Backend, Options, TestApp, binary, now_secs, spawn_with};
use herald_tests::clients::{SseClient, WsEvent};
use serde_json::{Value, json};

/// The heartbeat every server here runs with.
const HEARTBEAT_SECS: f64 = 1.0;

async fn spawn_fast_heartbeat() -> TestApp {
    spawn_with(Options::new(Backend::Sqlite).env("HERALD_HEARTBEAT_SECS", 1)).await
}

/// Seconds since the epoch, with a fraction.
fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// The `exp` claim of a (well-formed) JWT.
fn exp_of(token: &str) -> u64 {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the payload is base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("the payload is JSON");
    claims["exp"].as_u64().expect("the token has an exp")
}

/// Asserts that the server's log contains none of `tokens`, whole or their signatures.
fn assert_no_token_logged(logs: &str, tokens: &[&str]) {
    assert!(!logs.is_empty(), "the server logged nothing at all");
    for token in tokens {
        assert!(!logs.contains(token), "a whole token was logged: {token}");
        let signature = token.rsplit('.').next().unwrap_or_default();
        if signature.len() >= 16 {
            assert!(
                !logs.contains(signature),
                "a token's signature was logged: {signature}"
            );
        }
    }
}

/// Reads WebSocket frames (pings skipped) until one with `op`, within `timeout`.
async fn ws_until_op(
    ws: &mut herald_tests::clients::WsClient,
    op: &str,
    timeout: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            Some(WsEvent::Json(v)) if v["op"] == op => return v,
            Some(WsEvent::Json(v)) => panic!("expected `{op}`, got {v}"),
            Some(WsEvent::Ping) => continue,
            other => panic!("expected `{op}` within {timeout:?}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_websocket_is_warned_then_closed_4001_within_a_heartbeat() {
    let app = spawn_fast_heartbeat().await;
    let token = app.token("u1", &[">"], &[], 3);
    let exp = exp_of(&token) as f64;
    let mut ws = app.ws_subscribed(&token, &["life.a"], None).await;

    let expiring = ws_until_op(&mut ws, "expiring", Duration::from_secs(6)).await;
    let left = expiring["in"].as_u64().expect("`in` is a whole number");
    assert!(left < 2, "`in` is under two heartbeats: {expiring}");
    assert!(now_f64() < exp + 0.5, "the warning came before the expiry");

    let (frames, code) = ws.until_closed(Duration::from_secs(6)).await;
    let closed_at = now_f64();
    assert_eq!(code, Some(4001), "closed 4001 (frames before: {frames:?})");
    assert!(frames.is_empty(), "nothing after `expiring`: {frames:?}");
    assert!(
        closed_at >= exp - 0.2,
        "not closed before exp: closed {:.2}s before",
        exp - closed_at
    );
    assert!(
        closed_at <= exp + HEARTBEAT_SECS + 1.0,
        "closed {:.2}s after exp, more than heartbeat + 1 s",
        closed_at - exp
    );
    assert_no_token_logged(&app.logs(), &[&token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_sse_stream_ends_with_token_expired_within_a_heartbeat() {
    let app = spawn_fast_heartbeat().await;
    let token = app.token("u1", &[">"], &[], 3);
    let exp = exp_of(&token) as f64;
    let mut sse: SseClient = app
        .sse(&format!("topic=life.sse&access_token={token}"), None)
        .await;

    // The first message of this quiet stream is the error.
    let error = match sse.next_within(Duration::from_secs(7)).await {
        Ok(Some(m)) if m.event == "error" => m,
        Ok(Some(m)) => panic!("expected only `event: error`, got {m:?}"),
        Ok(None) => panic!("the stream ended without `event: error`"),
        Err(()) => panic!("no `event: error` within 7 s"),
    };
    let ended_at = now_f64();
    assert_eq!(error.json()["code"], "token_expired", "{error:?}");
    assert!(
        ended_at >= exp - 0.2,
        "not ended before exp: {:.2}s before",
        exp - ended_at
    );
    assert!(
        ended_at <= exp + HEARTBEAT_SECS + 1.0,
        "ended {:.2}s after exp, more than heartbeat + 1 s",
        ended_at - exp
    );
    assert_eq!(
        sse.next_within(Duration::from_secs(3)).await,
        Ok(None),
        "the stream ends after `event: error`"
    );
    assert_no_token_logged(&app.logs(), &[&token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_band_refresh_keeps_the_websocket_past_the_old_expiry() {
    let app = spawn_fast_heartbeat().await;
    let old = app.token("u1", &[">"], &[], 3);
    let old_exp = exp_of(&old);
    let mut ws = app.ws_subscribed(&old, &["life.r"], None).await;
    ws_until_op(&mut ws, "expiring", Duration::from_secs(6)).await;

    let fresh = app.token("u1", &[">"], &[], 60);
    ws.send_json(json!({"op": "auth", "token": fresh})).await;
    let authenticated = ws_until_op(&mut ws, "authenticated", Duration::from_secs(5)).await;
    assert_eq!(authenticated["exp"], exp_of(&fresh), "{authenticated}");

    // Three seconds past the old expiry the connection is still delivering.
    let until = old_exp as f64 + 3.0 - now_f64();
    if until > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(until)).await;
    }
    app.publish("life.r", json!("after")).await;
    let event = ws_until_op(&mut ws, "event", Duration::from_secs(5)).await;
    assert_eq!(event["data"], "after", "{event}");

    // A bad refresh is refused in-band and the connection keeps its token.
    let bad = "not-a.jwt.at-all";
    ws.send_json(json!({"op": "auth", "token": bad})).await;
    let error = ws_until_op(&mut ws, "error", Duration::from_secs(5)).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    ws.send_json(json!({"op": "ping"})).await;
    ws_until_op(&mut ws, "pong", Duration::from_secs(5)).await;
    app.publish("life.r", json!("still")).await;
    let event = ws_until_op(&mut ws, "event", Duration::from_secs(5)).await;
    assert_eq!(event["data"], "still", "{event}");

    assert_no_token_logged(&app.logs(), &[&old, &fresh]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrower_refresh_drops_topics_and_closes_4003_when_none_remain() {
    let app = spawn_fast_heartbeat().await;
    let wide = app.token("u1", &[">"], &[], 60);
    let mut ws = app.ws_subscribed(&wide, &["a.x", "b.x"], None).await;

    let only_a = app.token("u1", &["a.>"], &[], 60);
    ws.send_json(json!({"op": "auth", "token": only_a})).await;
    let authenticated = ws_until_op(&mut ws, "authenticated", Duration::from_secs(5)).await;
    assert_eq!(authenticated["exp"], exp_of(&only_a), "{authenticated}");
    let error = ws_until_op(&mut ws, "error", Duration::from_secs(5)).await;
    assert_eq!(error["code"], "forbidden", "{error}");
    assert_eq!(error["topics"], json!(["b.x"]), "{error}");

    app.publish("b.x", json!("b")).await;
    app.publish("a.x", json!("a")).await;
    let event = ws_until_op(&mut ws, "event", Duration::from_secs(5)).await;
    assert_eq!(event["topic"], "a.x", "only a.x is delivered: {event}");
    assert_eq!(event["data"], "a", "{event}");
    // Nothing from b.x trails behind.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = quiet_until.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await {
            None => break,
            Some(WsEvent::Ping) => continue,
            other => panic!("nothing more expected, got {other:?}"),
        }
    }

    let neither = app.token("u1", &["c.>"], &[], 60);
    ws.send_json(json!({"op": "auth", "token": neither})).await;
    let (frames, code) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(code, Some(4003), "frames before the close: {frames:?}");
    // The contract promises only the close code here; any frames before it
    // (the server means to send `authenticated` and `forbidden`) are not checked.

    assert_no_token_logged(&app.logs(), &[&wide, &only_a, &neither]);
}

/// A `herald serve` with public keys only (no HS256 secret), killed on drop.
struct KeyServer {
    base_url: String,
    child: Child,
    log: PathBuf,
    http: reqwest::Client,
}

impl KeyServer {
    async fn start(dir: &Path, public_keys: &str) -> KeyServer {
        use std::io::{BufRead, BufReader};
        let log = dir.join("herald.log");
        let mut child = Command::new(binary())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env(
                "HERALD_DATABASE_URL",
                format!("sqlite://{}/h.db", dir.display()),
            )
            .env("HERALD_JWT_PUBLIC_KEY", public_keys)
            .env("HERALD_HEARTBEAT_SECS", "1")
            .env("HERALD_WORKERS", "2")
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("the log file can be made"),
            ))
            .spawn()
            .expect("herald spawns");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("the waiting thread finishes");
        let Ok(base_url) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "herald did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        KeyServer {
            base_url,
            child,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client builds"),
        }
    }

    /// Publishes as `token`: (status, problem code).
    async fn publish_as(&self, token: &str, topic: &str) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}/v1/publish", self.base_url))
            .bearer_auth(token)
            .json(&json!({"topic": topic, "data": "x"}))
            .send()
            .await
            .expect("the publish is answered");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    }

    /// Opens an SSE stream as `token`.
    async fn sse_status(&self, token: &str) -> (u16, Option<SseClient>) {
        let response = self
            .http
            .get(format!(
                "{}/v1/sse?topic=keys.sse&access_token={token}",
                self.base_url
            ))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("the SSE request is answered");
        let status = response.status().as_u16();
        if status == 200 {
            (status, Some(SseClient::new(response)))
        } else {
            (status, None)
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Mints a token with `herald token --private-key ...`.
fn mint_with_cli(dir: &Path, extra: &[&str]) -> String {
    let output = Command::new(binary())
        .arg("token")
        .args(["--publish", ">", "--subscribe", ">"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir)
        .output()
        .expect("herald token runs");
    assert!(
        output.status.success(),
        "herald token {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a token is text")
        .trim()
        .to_owned()
}

fn root_claims() -> Claims {
    Claims {
        sub: "attacker".into(),
        exp: (now_secs() + 600) as u64,
        iat: Some(now_secs() as u64),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: true,
        },
        ..Claims::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_keys_are_accepted_and_only_their_algorithms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    openssl(d, &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);

    let server = KeyServer::start(
        d,
        &format!(
            "{},kid2={}",
            d.join("rsa.pub").display(),
            d.join("ec.pub").display()
        ),
    )
    .await;

    let rs = mint_with_cli(d, &["--private-key", "rsa.pem"]);
    let es = mint_with_cli(d, &["--private-key", "ec.pem", "--kid", "kid2"]);
    for (name, token) in [("RS256", &rs), ("ES256", &es)] {
        assert_eq!(
            server.publish_as(token, "keys.pub").await,
            (201, String::new()),
            "{name} publishes"
        );
        let (status, sse) = server.sse_status(token).await;
        assert_eq!(status, 200, "{name} opens an SSE stream");
        drop(sse);
    }

    // Key confusion: HS256 with the RSA public key's PEM as the HMAC secret.
    let rsa_pub = std::fs::read(d.join("rsa.pub")).expect("the public key is readable");
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &root_claims(),
        &jsonwebtoken::EncodingKey::from_secret(&rsa_pub),
    )
    .expect("HS256 signing works");
    // Any HS256 token, when no secret is configured.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &root_claims(),
        &jsonwebtoken::EncodingKey::from_secret(herald_tests::app::SECRET.as_bytes()),
    )
    .expect("HS256 signing works");
    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&root_claims()).expect("claims serialize"))
    );
    for (name, token) in [
        ("key confusion", &confused),
        ("HS256", &hs),
        ("none", &none),
    ] {
        assert_eq!(
            server.publish_as(token, "keys.pub").await,
            (401, "unauthorized".to_owned()),
            "{name} is refused"
        );
        assert_eq!(server.sse_status(token).await.0, 401, "{name} SSE refused");
    }

    assert_no_token_logged(&server.logs(), &[&rs, &es, &confused, &hs]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_logged_over_a_connection_life() {
    let app = spawn_fast_heartbeat().await;
    let short = app.token("logcheck", &[">"], &[">"], 3);
    let fresh = app.token("logcheck", &["log.>"], &[">"], 60);
    let narrow = app.token("logcheck", &["none.>"], &[], 60);
    let sse_token = app.token("logcheck", &[">"], &[], 2);
    let expired = app.token("logcheck", &[">"], &[">"], -30);

    // A publish, refused tokens on every door, an expiring SSE stream, and a
    // WebSocket that is warned, refreshed, narrowed and closed.
    assert_eq!(
        app.publish_as(&short, &json!({"topic": "log.a", "data": 1}))
            .await
            .status(),
        201
    );
    assert_eq!(
        app.publish_as(&expired, &json!({"topic": "log.a", "data": 1}))
            .await
            .status(),
        401
    );
    assert_eq!(
        app.sse_response(&format!("topic=log.a&access_token={expired}"), None)
            .await
            .status(),
        401
    );
    assert_eq!(app.try_ws(Some(&expired)).await.err(), Some(401));
    let mut sse = app
        .sse(&format!("topic=log.a&access_token={sse_token}"), None)
        .await;
    let mut ws = app.ws_subscribed(&short, &["log.a", "other.b"], None).await;
    ws_until_op(&mut ws, "expiring", Duration::from_secs(6)).await;
    ws.send_json(json!({"op": "auth", "token": expired})).await;
    assert_eq!(
        ws_until_op(&mut ws, "error", Duration::from_secs(5)).await["op"],
        "error"
    );
    ws.send_json(json!({"op": "auth", "token": fresh})).await;
    ws_until_op(&mut ws, "authenticated", Duration::from_secs(5)).await;
    ws_until_op(&mut ws, "error", Duration::from_secs(5)).await;
    ws.send_json(json!({"op": "auth", "token": narrow})).await;
    let (_, code) = ws.until_closed(Duration::from_secs(5)).await;
    assert_eq!(code, Some(4003));
    let mut ended = false;
    for _ in 0..10 {
        match sse.next_within(Duration::from_secs(5)).await {
            Ok(Some(m)) if m.event == "error" => {
                ended = true;
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(()) => break,
        }
    }
    assert!(ended, "the SSE stream ended with `event: error`");
    // Every connection has written its last line: its `connection closed`.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let logs = app.logs();
        let (opened, closed) = (
            logs.matches("connection opened").count(),
            logs.matches("connection closed").count(),
        );
        if opened >= 2 && closed == opened {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{closed} of {opened} connections logged their close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_no_token_logged(
        &app.logs(),
        &[&short, &fresh, &narrow, &sse_token, &expired],
    );
}
