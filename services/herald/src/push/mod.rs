//! Push to offline devices: a phone with the app in the background or a
//! browser with the tab closed hears of an event its subject has not
//! acknowledged on any device within a delay.
//!
//! - [`devices`]: registering, listing and deleting devices (the HTTP
//!   routes are `http/devices.rs`), their topics ([`filter`]).
//! - [`outbox`]: the scheduler: commits become due pushes (the store's
//!   feed and outbox, `store::outbox`), due pushes are claimed by one node,
//!   checked against acknowledgments, sent, retried or given up.
//! - Providers, one per platform behind [`Provider`]: [`webpush`] (RFC
//!   8030/8291/8292), [`fcm`] (FCM HTTP v1), [`apns`] (HTTP/2, token auth).
//! - [`settings`]: the `HERALD_PUSH_*`, `HERALD_VAPID_*`, `HERALD_FCM_*`
//!   and `HERALD_APNS_*` settings.

pub mod apns;
pub mod devices;
pub mod fcm;
pub mod filter;
pub mod outbox;
pub mod settings;
pub mod webpush;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::json;

use crate::ack::Acks;
use crate::store::Store;
pub use settings::PushArgs;

/// A push platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    WebPush,
    Fcm,
    Apns,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 3] = [Platform::WebPush, Platform::Fcm, Platform::Apns];

    /// Its name in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::WebPush => "webpush",
            Platform::Fcm => "fcm",
            Platform::Apns => "apns",
        }
    }

    /// The platform named `name`.
    pub fn parse(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// Longest title a push carries, in bytes.
pub const MAX_TITLE_BYTES: usize = 128;
/// Longest body a push carries, in bytes.
pub const MAX_BODY_BYTES: usize = 512;

/// What a push says: a pointer to the newest event it stands for (the app
/// fetches events itself), a title and body if the publisher gave them
/// (`data.push.title`, `data.push.body`), and the subject's unread count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// The newest event's seq.
    pub seq: u64,
    /// The newest event's type.
    pub kind: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    /// The subject's unread count over its pushed topics.
    pub badge: u64,
    /// Unacknowledged events of the topic this push stands for.
    pub events: u64,
    /// The same for every push of one topic to one device: a push service
    /// or device that still holds an older one replaces it.
    pub collapse_id: String,
}

impl Message {
    /// The payload every platform carries (Web Push: the whole body; FCM
    /// and APNs: the same fields in their own envelopes).
    pub fn pointer(&self) -> serde_json::Value {
        let mut value = json!({
            "topic": self.topic,
            "seq": self.seq,
            "badge": self.badge,
            "events": self.events,
        });
        for (key, field) in [
            ("type", &self.kind),
            ("title", &self.title),
            ("body", &self.body),
        ] {
            if let Some(text) = field {
                value[key] = json!(text);
            }
        }
        value
    }
}

/// The collapse id of `topic`'s pushes: 32 hex digits of its SHA-256 (fits
/// Web Push's `Topic` header, `apns-collapse-id` and FCM's `collapse_key`).
pub fn collapse_id(topic: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(topic.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Where a push goes: a device's address and (Web Push) keys.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub address: &'a str,
    pub keys: Option<&'a str>,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The push service accepted it.
    Sent,
    /// The push service says the device is gone (Web Push `404`/`410`,
    /// FCM `UNREGISTERED`, APNs `410 Unregistered` or `BadDeviceToken`).
    Gone(String),
    /// Try again later (`429`, `5xx`, a network error), not before `after`
    /// when the service said (`Retry-After`).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (a malformed request): retrying cannot help.
    Failed(String),
}

impl Outcome {
    /// The label of the send's span.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Gone(_) => "gone",
            Outcome::Retry { .. } => "retry",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// A push service.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The platform it serves.
    fn platform(&self) -> Platform;

    /// Sends `message` to `target`.
    async fn send(&self, target: Target<'_>, message: &Message) -> Outcome;
}

/// The `Retry-After` of an answer (seconds, or an HTTP date), at most an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
            let ms = at.timestamp_millis() - crate::event::now_ms();
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        }
    };
    Some(wait.min(Duration::from_secs(3_600)))
}

/// A provider's refusal of a push: its status, headers and body.
pub struct Refusal {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

/// Reads what `service` answered a push: the outcome when nothing is left
/// to decide (no answer: retried; a success: sent), else the refusal, for
/// the provider to tell a gone device from a retry.
pub async fn read_answer(
    answer: reqwest::Result<reqwest::Response>,
    service: &str,
) -> Result<Refusal, Outcome> {
    let answer = answer.map_err(|e| Outcome::Retry {
        after: None,
        reason: format!("{service} did not answer: {e}"),
    })?;
    let status = answer.status();
    if status.is_success() {
        return Err(Outcome::Sent);
    }
    let headers = answer.headers().clone();
    let text = answer.text().await.unwrap_or_default();
    Ok(Refusal {
        status,
        headers,
        text,
    })
}

/// The outcome of an answer that is not a success and not a platform's own
/// "gone": `429` and `5xx` are retried, honouring `Retry-After`; `401` and
/// `403` too (credentials may be renewed or fixed); anything else is refused
/// for good.
pub fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Outcome {
    let reason = format!("{status}: {}", truncate(body.trim(), 300));
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == reqwest::StatusCode::UNAUTHORIZED
        || status == reqwest::StatusCode::FORBIDDEN
    {
        Outcome::Retry {
            after: retry_after(headers),
            reason,
        }
    } else {
        Outcome::Failed(reason)
    }
}

/// The HTTP client of the push providers: timeouts, and the extra CA of
/// `HERALD_PUSH_CA` when set. `http2` forces HTTP/2 (APNs).
pub fn http_client(settings: &PushArgs, http2: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60));
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(path) = &settings.push_ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading HERALD_PUSH_CA file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!("HERALD_PUSH_CA {} holds no PEM certificate", path.display())
        })? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// Push on one node: its settings, providers and what the scheduler reads.
pub struct Push {
    pub settings: PushArgs,
    store: Arc<dyn Store>,
    acks: Arc<Acks>,
    providers: HashMap<Platform, Arc<dyn Provider>>,
    vapid_public_key: Option<String>,
}

impl Push {
    /// Builds the configured providers (reading their key files). With at
    /// least one, commits start writing the push feed.
    pub fn build(
        settings: &PushArgs,
        store: Arc<dyn Store>,
        acks: Arc<Acks>,
    ) -> anyhow::Result<Arc<Push>> {
        let mut providers: HashMap<Platform, Arc<dyn Provider>> = HashMap::new();
        let mut vapid_public_key = None;
        if let Some(key) = &settings.vapid_private_key {
            let provider = webpush::WebPush::new(settings, key)?;
            vapid_public_key = Some(provider.public_key().to_owned());
            providers.insert(Platform::WebPush, Arc::new(provider));
        }
        if let Some(path) = &settings.fcm_credentials {
            providers.insert(Platform::Fcm, Arc::new(fcm::Fcm::new(settings, path)?));
        }
        if let Some(path) = &settings.apns_key {
            providers.insert(Platform::Apns, Arc::new(apns::Apns::new(settings, path)?));
        }
        store.set_push_feed(!providers.is_empty());
        Ok(Arc::new(Push {
            settings: settings.clone(),
            store,
            acks,
            providers,
            vapid_public_key,
        }))
    }

    /// Whether any provider is on (the scheduler runs).
    pub fn enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    /// Whether `platform` is configured.
    pub fn serves(&self, platform: Platform) -> bool {
        self.providers.contains_key(&platform)
    }

    /// The VAPID public key (base64url), when Web Push is on.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.vapid_public_key.as_deref()
    }
}
