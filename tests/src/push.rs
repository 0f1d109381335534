//! Local stand-ins of the push services, all on 127.0.0.1:
//!
//! - [`WebPushService`]: web-push-testing (npm, `tests/push`), a push
//!   service that checks VAPID, decrypts RFC 8291 payloads and can expire
//!   a subscription (then it answers `410`).
//! - [`StandIn`]: a recording HTTP server (HTTP/1.1 and HTTP/2, optionally
//!   TLS with a certificate made for the test) whose answers a test
//!   scripts; [`Fcm`] and [`Apns`] are the FCM HTTP v1 (with its OAuth
//!   token endpoint) and APNs servers built on it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a test waits for a push.
pub const PUSH_WAIT: Duration = Duration::from_secs(20);

/// web-push-testing, run by node on a free port of 127.0.0.1.
pub struct WebPushService {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    http: reqwest::Client,
}

impl WebPushService {
    /// Starts it (its npm packages come from `scripts/setup`).
    pub async fn start() -> WebPushService {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("push");
        assert!(
            dir.join("node_modules/web-push-testing").exists(),
            "tests/push/node_modules is missing: run scripts/setup"
        );
        let mut child = Command::new("node")
            .arg(dir.join("serve.js"))
            .arg("0")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().to_owned());
                }
            }
        });
        let port = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .expect("the waiting thread ends")
            .expect("web-push-testing starts within 20 s");
        WebPushService {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("web-push-testing answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A browser's subscription for `application_server_key`:
    /// (`{"endpoint", "keys"}`, its client hash).
    pub async fn subscribe(&self, application_server_key: &str) -> (Value, String) {
        let (status, body) = self
            .post(
                "/subscribe",
                json!({"applicationServerKey": application_server_key, "userVisibleOnly": "true"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let data = &body["data"];
        let hash = data["clientHash"]
            .as_str()
            .expect("a client hash")
            .to_owned();
        (
            json!({"endpoint": data["endpoint"], "keys": data["keys"]}),
            hash,
        )
    }

    /// The decrypted payloads the subscription received, as JSON.
    pub async fn messages(&self, hash: &str) -> Vec<Value> {
        let (status, body) = self
            .post("/get-notifications", json!({ "clientHash": hash }))
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| serde_json::from_str(m.as_str().expect("text")).expect("a JSON payload"))
            .collect()
    }

    /// Waits until the subscription received `n` payloads.
    pub async fn wait_messages(&self, hash: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PUSH_WAIT;
        loop {
            let got = self.messages(hash).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} pushes arrived within {PUSH_WAIT:?}: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the push service answer `410` for the subscription.
    pub async fn expire(&self, hash: &str) {
        let r = self
            .http
            .post(format!("{}/expire-subscription/{hash}", self.base))
            .send()
            .await
            .expect("web-push-testing answers");
        assert_eq!(r.status(), 200);
    }
}

impl Drop for WebPushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request a stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An answer a stand-in gives.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl ToString) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// A certificate authority and a server certificate for 127.0.0.1 it
/// signed, made for one test.
pub struct TestTls {
    /// The CA certificate (PEM), for `HERALD_PUSH_CA`.
    pub ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TestTls {
    /// Makes the CA and the certificate; the server speaks HTTP/2 and HTTP/1.1.
    pub fn new() -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Herald test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("a CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("a server key");
        let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("a server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("the certificate and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestTls {
            ca_pem: ca_cert.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Default for TestTls {
    fn default() -> TestTls {
        TestTls::new()
    }
}

/// A recording HTTP server on 127.0.0.1 answering with `handler`.
pub struct StandIn {
    /// `http(s)://127.0.0.1:PORT`
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Starts the server (with TLS when `tls` is given).
    pub async fn start(tls: Option<&TestTls>, handler: Handler) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds 127.0.0.1");
        let port = listener.local_addr().expect("bound").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let acceptor = tls.map(|t| t.acceptor.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, tx, handler, acceptor) =
                    (state.clone(), tx.clone(), handler.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (state, tx, handler) = (state.clone(), tx.clone(), handler.clone());
                        async move { Ok::<_, Infallible>(answer(req, &state, &tx, &handler).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        StandIn {
            url: format!("{scheme}://127.0.0.1:{port}"),
            received,
            count,
            task,
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    /// Waits until `pred` holds of the requests so far; returns them.
    pub async fn wait_until(
        &self,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let mut count = self.count.clone();
        let wait = async {
            loop {
                let now = self.received();
                if pred(&now) {
                    return now;
                }
                if count.changed().await.is_err() {
                    return now;
                }
            }
        };
        match tokio::time::timeout(PUSH_WAIT, wait).await {
            Ok(now) => now,
            Err(_) => panic!(
                "{what}: not seen within {PUSH_WAIT:?}; received {:#?}",
                self.received()
                    .iter()
                    .map(|r| (r.method.clone(), r.path.clone(), r.json()))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<Vec<Received>>,
    tx: &watch::Sender<usize>,
    handler: &Handler,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        version: parts.version,
        headers: parts.headers,
        body,
        at: std::time::Instant::now(),
    };
    let reply = handler(&received);
    let n = {
        let mut all = state.lock();
        all.push(received);
        all.len()
    };
    tx.send_replace(n);
    let mut response = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a valid response")
}

/// Answers a stand-in gives its send requests, in order; `200` once empty.
#[derive(Clone, Default)]
pub struct Script(Arc<Mutex<VecDeque<Reply>>>);

impl Script {
    /// Queues `reply` for the next send.
    pub fn then(&self, reply: Reply) -> &Script {
        self.0.lock().push_back(reply);
        self
    }

    fn next(&self) -> Option<Reply> {
        self.0.lock().pop_front()
    }
}

/// Writes `text` to `name` in `dir`; returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("the test directory is writable");
    path
}

/// The FCM HTTP v1 stand-in: `POST /token` (the OAuth JWT bearer grant,
/// whose assertion it verifies with the service account's public key) and
/// `POST /v1/projects/{project}/messages:send` (with an access token it
/// issued).
pub struct Fcm {
    pub server: StandIn,
    pub script: Script,
    /// The service-account JSON file to give Herald.
    pub credentials: PathBuf,
    pub project: &'static str,
}

/// The FCM stand-in's project id.
pub const FCM_PROJECT: &str = "herald-test";

impl Fcm {
    /// Starts it; the service-account file goes into `dir`.
    pub async fn start(dir: &Path) -> Fcm {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA key");
        let public = jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes())
            .expect("the RSA public key");
        let script = Script::default();
        let issued = Arc::new(Mutex::new(Vec::<String>::new()));
        let token_uri = Arc::new(Mutex::new(String::new()));
        let handler: Handler = {
            let (script, issued, token_uri) = (script.clone(), issued.clone(), token_uri.clone());
            Arc::new(move |req: &Received| {
                if req.path == "/token" {
                    return grant(req, &public, &token_uri.lock(), &issued);
                }
                let send_path = format!("/v1/projects/{FCM_PROJECT}/messages:send");
                if req.path != send_path || req.method != "POST" {
                    return Reply::json(
                        404,
                        json!({"error": {"code": 404, "status": "NOT_FOUND"}}),
                    );
                }
                let bearer = req
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if !issued.lock().iter().any(|t| t == bearer) {
                    return Reply::json(
                        401,
                        json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
                    );
                }
                let body = req.json();
                if body["message"]["token"].as_str().is_none() {
                    return Reply::json(
                        400,
                        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
                    );
                }
                script.next().unwrap_or_else(|| {
                    Reply::json(
                        200,
                        json!({"name": format!("projects/{FCM_PROJECT}/messages/1")}),
                    )
                })
            })
        };
        let server = StandIn::start(None, handler).await;
        *token_uri.lock() = format!("{}/token", server.url);
        let credentials = write_file(
            dir,
            "fcm-service-account.json",
            &json!({
                "type": "service_account",
                "project_id": FCM_PROJECT,
                "private_key_id": "test-key-1",
                "private_key": key.serialize_pem(),
                "client_email": "herald@herald-test.iam.gserviceaccount.com",
                "token_uri": format!("{}/token", server.url),
            })
            .to_string(),
        );
        Fcm {
            server,
            script,
            credentials,
            project: FCM_PROJECT,
        }
    }

    /// The send requests so far.
    pub fn sends(&self) -> Vec<Received> {
        self.server
            .received()
            .into_iter()
            .filter(|r| r.path.ends_with("messages:send"))
            .collect()
    }

    /// The token requests so far.
    pub fn grants(&self) -> Vec<Received> {
        self.server
            .received()
            .into_iter()
            .filter(|r| r.path == "/token")
            .collect()
    }

    /// Waits until `n` send requests arrived.
    pub async fn wait_sends(&self, n: usize) -> Vec<Received> {
        self.server
            .wait_until(&format!("{n} FCM sends"), |all| {
                all.iter()
                    .filter(|r| r.path.ends_with("messages:send"))
                    .count()
                    >= n
            })
            .await;
        self.sends()
    }

    /// Herald's settings for this stand-in.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "HERALD_FCM_CREDENTIALS",
                self.credentials.display().to_string(),
            ),
            ("HERALD_FCM_ENDPOINT", self.server.url.clone()),
        ]
    }
}

#[derive(serde::Deserialize)]
struct GrantClaims {
    iss: String,
    scope: String,
}

/// The OAuth token endpoint: a valid JWT bearer grant gets a new token.
fn grant(
    req: &Received,
    public: &jsonwebtoken::DecodingKey,
    audience: &str,
    issued: &Mutex<Vec<String>>,
) -> Reply {
    let form: Vec<(String, String)> = form_pairs(&req.body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if field("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return Reply::json(400, json!({"error": "unsupported_grant_type"}));
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    match jsonwebtoken::decode::<GrantClaims>(&field("assertion"), public, &validation) {
        Ok(data)
            if data.claims.scope == "https://www.googleapis.com/auth/firebase.messaging"
                && data.claims.iss.ends_with("iam.gserviceaccount.com") =>
        {
            let mut issued = issued.lock();
            let token = format!("ya29.test-{}", issued.len() + 1);
            issued.push(token.clone());
            Reply::json(
                200,
                json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
            )
        }
        _ => Reply::json(400, json!({"error": "invalid_grant"})),
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(hex), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The APNs stand-in: HTTP/2 over TLS (a test CA), `POST
/// /3/device/{token}` with a provider token it verifies (ES256, the key
/// id, the team id).
pub struct Apns {
    pub server: StandIn,
    pub script: Script,
    pub tls: TestTls,
    /// The `.p8` key file and the CA file to give Herald.
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// The APNs stand-in's key id, team id and bundle id.
pub const APNS_KEY_ID: &str = "KEY1234567";
pub const APNS_TEAM_ID: &str = "TEAM123456";
pub const APNS_TOPIC: &str = "com.example.herald";

#[derive(serde::Deserialize)]
struct ProviderClaims {
    iss: String,
}

impl Apns {
    /// Starts it; the key and CA files go into `dir`.
    pub async fn start(dir: &Path) -> Apns {
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        let public = jsonwebtoken::DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
            .expect("the EC public key");
        let script = Script::default();
        let handler: Handler = {
            let script = script.clone();
            Arc::new(move |req: &Received| {
                let reply = |status: u16, reason: &str| {
                    Reply::json(status, json!({ "reason": reason }))
                        .with("apns-id", "00000000-0000-0000-0000-000000000001")
                };
                let Some(token) = req.path.strip_prefix("/3/device/") else {
                    return reply(404, "BadPath");
                };
                if req.method != "POST" {
                    return reply(405, "MethodNotAllowed");
                }
                let Some(jwt) = req
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("bearer "))
                else {
                    return reply(403, "MissingProviderToken");
                };
                let header_ok = jsonwebtoken::decode_header(jwt)
                    .is_ok_and(|h| h.kid.as_deref() == Some(APNS_KEY_ID));
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                let claims_ok = jsonwebtoken::decode::<ProviderClaims>(jwt, &public, &validation)
                    .is_ok_and(|d| d.claims.iss == APNS_TEAM_ID);
                if !header_ok || !claims_ok {
                    return reply(403, "InvalidProviderToken");
                }
                if req.header("apns-topic") != Some(APNS_TOPIC) {
                    return reply(400, "DeviceTokenNotForTopic");
                }
                if !matches!(req.header("apns-push-type"), Some("alert" | "background")) {
                    return reply(400, "InvalidPushType");
                }
                if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return reply(400, "BadDeviceToken");
                }
                if req.json()["aps"].is_null() {
                    return reply(400, "PayloadEmpty");
                }
                script.next().unwrap_or_else(|| Reply {
                    status: 200,
                    headers: vec![("apns-id", "00000000-0000-0000-0000-000000000002".into())],
                    body: String::new(),
                })
            })
        };
        let tls = TestTls::new();
        let server = StandIn::start(Some(&tls), handler).await;
        let key_file = write_file(dir, "AuthKey.p8", &key.serialize_pem());
        let ca_file = write_file(dir, "push-ca.pem", &tls.ca_pem);
        Apns {
            server,
            script,
            tls,
            key_file,
            ca_file,
        }
    }

    /// Waits until `n` pushes arrived.
    pub async fn wait_pushes(&self, n: usize) -> Vec<Received> {
        self.server
            .wait_until(&format!("{n} APNs pushes"), |all| all.len() >= n)
            .await
    }

    /// Herald's settings for this stand-in.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HERALD_APNS_KEY", self.key_file.display().to_string()),
            ("HERALD_APNS_KEY_ID", APNS_KEY_ID.into()),
            ("HERALD_APNS_TEAM_ID", APNS_TEAM_ID.into()),
            ("HERALD_APNS_TOPIC", APNS_TOPIC.into()),
            ("HERALD_APNS_ENDPOINT", self.server.url.clone()),
            ("HERALD_PUSH_CA", self.ca_file.display().to_string()),
        ]
    }
}
