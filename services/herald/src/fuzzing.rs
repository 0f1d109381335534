//! Entry points for the fuzz targets (`fuzz/`) and for the test that replays
//! their corpus on the stable toolchain: one function per parser that takes
//! network input, each taking arbitrary bytes. None of them may panic; the
//! `assert!`s state properties the parsers promise.
//!
//! Not part of Herald's interface: the functions call the parsers exactly as
//! the transports do and change nothing.

use std::sync::OnceLock;

use actix_web::ResponseError as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::auth::{Pattern, Verifier, VerifierSettings};
use crate::http::SubscribeParams;
use crate::http::error::ApiError;
use crate::publish::Limits;
use crate::session::ws::{ClientOp, FrameError, decode_frame};
use crate::topic::{Cursor, MAX_TOPIC_BYTES, Topic, is_segment_char};

/// The HS256 secret of the fixed verification keys.
pub const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef";

const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnS0DxrZNsUTr96WaZd+0
kBQtGVZ7eUHZKPE6IJTmb8fP0J4C1+QaB2KjfqdNrX8k6ork4sL8tyKYVxsAGPmE
6PW0NaWK7ZK7J9UQIeyi8WFPG4mgEOq5gX+67V4zxf4sTaEoZJkpIGBUZ/39jCof
NCBWqwXaL7GpCggCdYxSyd8N0ruVIwc+7LIDQe3DojO1eSIAW9lAIYzhPKX6Qe9S
3NyfkZMsfyOMx7iEPZpOqJhldJ02X8bP4keUpRY/WXVSVG1H7m1dAh4m4RUhuF87
eB2lMqmomQ05MLyH2hLvy1UODUYS4dP6rO686ustiUYkLAO66014RPpJ4Dm7oB7l
9wIDAQAB
-----END PUBLIC KEY-----
";

const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2K2dHOIXtZiDGFLysIqoGmIU+CxZ
kMM2SZM8Nl9Lea8mwkj4MvInYXFN4tQTJkAlABykRoCEI6bBktV/CXPY6Q==
-----END PUBLIC KEY-----
";

/// Verifiers with fixed keys (HS256, RS256 and ES256): one with the
/// defaults, one that checks audience and issuer.
fn verifiers() -> &'static [Verifier; 2] {
    static VERIFIERS: OnceLock<[Verifier; 2]> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        let plain = VerifierSettings {
            secret: Some(SECRET.to_vec()),
            public_keys_pem: vec![
                (Some("rsa".into()), RSA_PUBLIC_PEM.as_bytes().to_vec()),
                (None, EC_PUBLIC_PEM.as_bytes().to_vec()),
            ],
            leeway_secs: 60,
            audience: Vec::new(),
            issuer: Vec::new(),
            max_lifetime_secs: crate::config::DEFAULT_JWT_MAX_LIFETIME_SECS,
        };
        let strict = VerifierSettings {
            audience: vec!["herald".into()],
            issuer: vec!["https://issuer.example".into()],
            leeway_secs: 0,
            ..plain.clone()
        };
        [
            Verifier::new(&plain).expect("the fixed keys load"),
            Verifier::new(&strict).expect("the fixed keys load"),
        ]
    })
}

/// Renders an error as the client would get it: status, code, problem body.
fn answer(error: &ApiError) {
    let status = error.status_code();
    assert!(
        status.is_client_error(),
        "input alone must never cause {status}"
    );
    assert!(!error.code().is_empty());
    let _ = error.error_response();
}

/// A text frame from a WebSocket client (`/v1/ws`): decoded, then its topics,
/// cursor and token parsed as the session does.
pub fn ws_frame(data: &[u8]) {
    // The decoder hands text messages over as checked UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_frame(text) {
        Ok(ClientOp::Subscribe(op)) => {
            if let Some(since) = op.since.as_deref() {
                check_cursor(since);
            }
            for topic in &op.topics {
                if Topic::parse(topic).is_err() {
                    let quoted: String = topic.chars().take(300).collect();
                    assert!(quoted.len() <= topic.len());
                }
            }
        }
        Ok(ClientOp::Unsubscribe(op)) => {
            for topic in &op.topics {
                let _ = Topic::parse(topic);
            }
        }
        Ok(ClientOp::Auth(op)) => {
            for verifier in verifiers() {
                let _ = verifier.verify(&op.token);
            }
        }
        Ok(ClientOp::Ack(op)) => check_cursor(&op.cursor),
        Ok(ClientOp::Ping) => {}
        Ok(ClientOp::Unknown(op)) => {
            let quoted: String = op.chars().take(64).collect();
            let _ = format!("unknown op {quoted:?}");
        }
        Err(FrameError::NoOp) => {}
        Err(FrameError::Body { op, error }) => {
            let _ = format!("{op}: {error}");
        }
    }
}

/// Parses `text` as a cursor; a parsed cursor prints back to itself.
fn check_cursor(text: &str) {
    match Cursor::parse(text) {
        Ok(cursor) => {
            let printed = cursor.to_string();
            assert_eq!(
                Cursor::parse(&printed).as_ref(),
                Ok(&cursor),
                "a cursor round-trips through its text"
            );
            for (topic, seq) in cursor.iter() {
                assert!(seq <= i64::MAX as u64, "{topic}:{seq} is past i64");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() < 1024, "error messages quote input briefly");
        }
    }
}

/// A cursor: the `since` of a request or subscribe frame, or an SSE
/// `Last-Event-ID` header.
pub fn cursor(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_cursor(text);
    }
    // Last-Event-ID as the SSE handler reads it.
    if let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(data)
        && let Ok(text) = value.to_str()
        && !text.trim().is_empty()
    {
        check_cursor(text);
    }
}

/// A topic name, and a token's pattern with its subject (lines of the input:
/// topic, pattern, subject).
pub fn topic_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let topic_text = lines.next().unwrap_or("");
    let pattern_text = lines.next().unwrap_or("");
    let sub = lines.next().unwrap_or("");

    let topic = Topic::parse(topic_text);
    if let Ok(topic) = &topic {
        assert_eq!(topic.as_str(), topic_text);
        assert!(topic.as_str().len() <= MAX_TOPIC_BYTES);
        assert!(
            topic
                .segments()
                .all(|s| !s.is_empty() && s.chars().all(is_segment_char))
        );
        // A topic is a pattern that matches itself.
        let literal = Pattern::compile(topic.as_str(), sub).expect("a topic is a valid pattern");
        assert!(literal.matches(topic));
    } else if let Err(e) = &topic {
        assert!(
            e.to_string().len() < 1024,
            "error messages quote input briefly"
        );
    }

    if let Ok(pattern) = Pattern::compile(pattern_text, sub)
        && let Ok(topic) = &topic
    {
        let matched = pattern.matches(topic);
        // `{sub}` alone matches exactly the topic named by the subject, so a
        // subject cannot widen what a pattern allows.
        if pattern_text == crate::auth::pattern::SUB_PLACEHOLDER {
            assert!(!matched || topic.as_str() == sub);
            if topic.as_str() == sub && !sub.contains('.') {
                assert!(matched);
            }
        }
        if pattern_text == ">" {
            assert!(matched);
        }
    }
    // The subject substituted anywhere never yields a wildcard.
    if let Ok(pattern) = Pattern::compile("{sub}", sub) {
        let wild = Topic::parse("x").expect("valid");
        assert_eq!(pattern.matches(&wild), sub == "x");
    }
}

/// A `POST /v1/publish` body, single event or batch.
pub fn publish_body(data: &[u8]) {
    let limits = Limits {
        max_data_bytes: 4096,
        max_batch_events: 16,
    };
    match crate::publish::parse(data, limits) {
        Ok((events, batch)) => {
            assert!(!events.is_empty() && events.len() <= limits.max_batch_events);
            assert!(batch || events.len() == 1);
            for event in &events {
                let data = event.data.get();
                assert!(data.len() <= limits.max_data_bytes);
                assert!(!data.contains(['\n', '\r']), "data is one line");
                serde_json::from_str::<&serde_json::value::RawValue>(data)
                    .expect("data stays valid JSON");
                assert!(!event.id.is_empty() && event.id.len() <= 255);
                assert!(!event.id.chars().any(char::is_control));
                if let Some(kind) = &event.kind {
                    assert!(!kind.is_empty() && kind.len() <= 255);
                    assert!(!kind.chars().any(char::is_control));
                }
            }
        }
        Err(e) => answer(&ApiError::from(e)),
    }
}

/// The query string of `GET /v1/sse` and `GET /v1/poll`.
pub fn subscribe_query(data: &[u8]) {
    // The query string of a request line is text.
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    const MAX_TOPICS: usize = 16;
    for poll in [false, true] {
        match SubscribeParams::parse(query, poll, MAX_TOPICS) {
            Ok(params) => {
                assert!(!params.topics.is_empty() && params.topics.len() <= MAX_TOPICS);
                for (i, topic) in params.topics.iter().enumerate() {
                    assert!(!params.topics[..i].contains(topic), "topics are distinct");
                }
                assert!(params.wait_secs <= crate::http::MAX_WAIT_SECS);
                assert!((1..=crate::http::MAX_POLL_LIMIT).contains(&params.limit));
                if !poll {
                    assert_eq!(params.wait_secs, 0);
                    assert_eq!(params.limit, crate::http::DEFAULT_POLL_LIMIT);
                }
            }
            Err(e) => answer(&e),
        }
    }
}

/// A token, verified against fixed keys. The first byte picks what the rest
/// is: 0 a whole token as sent; 1 the claims (JSON) of a token signed with
/// the HS256 key; 2 the header (JSON) of such a token; 3 an
/// `Authorization` header value.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            verify_everywhere(&text);
        }
        1 => verify_everywhere(&signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest)),
        2 => {
            let claims = br#"{"sub":"s","exp":99999999999,"herald":{"subscribe":[">"]}}"#;
            verify_everywhere(&signed(rest, claims));
        }
        _ => {
            if let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(rest) {
                let req = actix_web::test::TestRequest::default()
                    .insert_header((actix_web::http::header::AUTHORIZATION, value))
                    .to_http_request();
                if let Some(token) = crate::auth::bearer(&req) {
                    assert!(!token.is_empty() && token == token.trim());
                    verify_everywhere(token);
                }
            }
        }
    }
}

/// The bytes of a connection, as the front door decodes its request heads
/// one after another (the one parser of every path), up to a stream's
/// request, which is then built as a stream thread builds it.
pub fn request_head(data: &[u8]) {
    let _ = crate::http::front::stream_request(data);
}

/// A lean WebSocket client's bytes, as the connection decodes them: split
/// anywhere, they decode to the same messages and the same error.
pub fn ws_wire(data: &[u8]) {
    use crate::http::front::ws::Decoder;
    let decode = |parts: &[&[u8]]| {
        let mut decoder = Decoder::new(256);
        let mut out = Vec::new();
        for part in parts {
            if !decoder.decode(part, |message| out.push(format!("{message:?}"))) {
                break;
            }
        }
        out
    };
    let whole = decode(&[data]);
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    assert_eq!(whole, decode(&[&data[..cut], &data[cut..]]));
}

/// `header.claims.signature` signed with the HS256 key.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HS256 signing cannot fail");
    format!("{message}.{signature}")
}

fn verify_everywhere(token: &str) {
    for verifier in verifiers() {
        if let Ok(principal) = verifier.verify(token) {
            // What every route and every heartbeat check next.
            let _ = principal.expired(verifier.leeway_secs(), crate::auth::token::now_secs());
            let _ = crate::auth::TokenId::from(&principal);
            let _ = principal.may_subscribe(&Topic::parse("a.b").expect("valid"));
        }
    }
}
