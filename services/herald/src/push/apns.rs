//! APNs: `POST {endpoint}/3/device/{token}` over HTTP/2, with token-based
//! authentication: an ES256 JWT (`iss` the team id, `kid` the key id)
//! signed with the `.p8` key, renewed every 40 minutes (Apple accepts a
//! token for an hour and refuses one renewed more often than every 20).
//!
//! Headers: `apns-topic` (the bundle id), `apns-push-type: alert`,
//! `apns-priority` (10 with a title or body, else 5), `apns-expiration`,
//! `apns-collapse-id`. Answers: `200` sent; `410 Unregistered`, and `400`
//! `BadDeviceToken` or `DeviceTokenNotForTopic`, delete the device; `403`
//! `ExpiredProviderToken` or `InvalidProviderToken` renew the token and
//! retry; `429` and `5xx` are retried; other answers are refused for good.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use super::{Message, Outcome, Platform, Provider, PushArgs, Target};

/// How long a provider token is used before a new one is signed.
const TOKEN_LIFETIME: Duration = Duration::from_secs(40 * 60);

#[derive(Serialize)]
struct TokenClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The APNs provider.
pub struct Apns {
    http: reqwest::Client,
    endpoint: String,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    ttl_secs: u64,
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    /// A provider signing with the `.p8` key at `key_path`.
    pub fn new(settings: &PushArgs, key_path: &Path) -> anyhow::Result<Apns> {
        let pem = std::fs::read(key_path)
            .with_context(|| format!("reading HERALD_APNS_KEY file {}", key_path.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).with_context(|| {
            format!(
                "HERALD_APNS_KEY {} is not an ES256 (P-256) PEM private key",
                key_path.display()
            )
        })?;
        Ok(Apns {
            http: super::http_client(settings, true)?,
            endpoint: settings.apns_endpoint.trim_end_matches('/').to_owned(),
            key,
            key_id: settings.apns_key_id.clone(),
            team_id: settings.apns_team_id.clone(),
            topic: settings.apns_topic.clone(),
            ttl_secs: settings.push_ttl_secs,
            token: Mutex::new(None),
        })
    }

    /// The provider token: the kept one while it is young enough, else a
    /// newly signed one.
    fn provider_token(&self) -> Result<String, Outcome> {
        let mut kept = self.token.lock();
        if let Some((token, signed)) = kept.as_ref()
            && signed.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = TokenClaims {
            iss: &self.team_id,
            iat: crate::auth::token::now_secs(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("signing the APNs provider token: {e}")))?;
        *kept = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// The notification's JSON: `aps` (alert, badge, content-available)
    /// and Herald's pointer.
    fn payload(message: &Message) -> serde_json::Value {
        let mut aps = json!({"badge": message.badge, "content-available": 1});
        if message.title.is_some() || message.body.is_some() {
            let mut alert = serde_json::Map::new();
            if let Some(title) = &message.title {
                alert.insert("title".into(), json!(title));
            }
            if let Some(body) = &message.body {
                alert.insert("body".into(), json!(body));
            }
            aps["alert"] = serde_json::Value::Object(alert);
        }
        json!({"aps": aps, "herald": message.pointer()})
    }
}

/// The `reason` of an APNs error answer.
fn reason(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[async_trait]
impl Provider for Apns {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    async fn send(&self, target: Target<'_>, message: &Message) -> Outcome {
        let token = match self.provider_token() {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let alert = message.title.is_some() || message.body.is_some();
        let expiration = crate::auth::token::now_secs() + self.ttl_secs;
        let answer = self
            .http
            .post(format!("{}/3/device/{}", self.endpoint, target.address))
            .header(reqwest::header::AUTHORIZATION, format!("bearer {token}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", if alert { "10" } else { "5" })
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", &message.collapse_id)
            .json(&Self::payload(message))
            .send()
            .await;
        let super::Refusal {
            status,
            headers,
            text,
        } = match super::read_answer(answer, "APNs").await {
            Ok(refusal) => refusal,
            Err(outcome) => return outcome,
        };
        let why = reason(&text);
        if status == reqwest::StatusCode::GONE
            || matches!(
                why.as_str(),
                "BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered"
            )
        {
            return Outcome::Gone(format!("{status} {why}"));
        }
        if matches!(
            why.as_str(),
            "ExpiredProviderToken" | "InvalidProviderToken"
        ) {
            *self.token.lock() = None;
        }
        super::classify(status, &headers, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_carries_an_alert_only_with_a_title_or_body() {
        let mut message = Message {
            topic: "t".into(),
            seq: 3,
            kind: None,
            title: None,
            body: None,
            badge: 2,
            events: 1,
            collapse_id: super::super::collapse_id("t"),
        };
        let silent = Apns::payload(&message);
        assert!(silent["aps"].get("alert").is_none());
        assert_eq!(silent["aps"]["badge"], 2);
        assert_eq!(silent["herald"]["seq"], 3);
        message.title = Some("Hi".into());
        assert_eq!(Apns::payload(&message)["aps"]["alert"]["title"], "Hi");
        assert_eq!(
            reason(r#"{"reason":"Unregistered","timestamp":1}"#),
            "Unregistered"
        );
    }
}
