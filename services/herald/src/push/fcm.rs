//! FCM HTTP v1: `POST {endpoint}/v1/projects/{project}/messages:send` with
//! an OAuth2 access token. The token comes from the service account's
//! `token_uri`: a JWT signed with the account's RSA key (RS256) is
//! exchanged for it (the JWT bearer grant), and it is kept until a minute
//! before it expires (or until FCM answers `401`).
//!
//! Answers: `200` sent; an `UNREGISTERED` error code (a `404`) means the
//! app was uninstalled or the token expired: the device is deleted; `429`
//! and `5xx` are retried (with `Retry-After`); `401` drops the access
//! token and is retried; other `4xx` are refused for good.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Message, Outcome, Platform, Provider, PushArgs, Target};

/// The OAuth2 scope of FCM sends.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, when the credentials name none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// An access token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a service-account JSON file that sending needs.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct GrantClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The FCM provider.
pub struct Fcm {
    http: reqwest::Client,
    send_url: String,
    token_uri: String,
    client_email: String,
    key: EncodingKey,
    key_id: Option<String>,
    ttl_secs: u64,
    /// The access token and when it stops being used.
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    /// A provider for the service account in `credentials`.
    pub fn new(settings: &PushArgs, credentials: &Path) -> anyhow::Result<Fcm> {
        let text = std::fs::read(credentials).with_context(|| {
            format!(
                "reading HERALD_FCM_CREDENTIALS file {}",
                credentials.display()
            )
        })?;
        let account: ServiceAccount = serde_json::from_slice(&text).with_context(|| {
            format!(
                "HERALD_FCM_CREDENTIALS {} is not a service-account JSON file \
                 (project_id, client_email, private_key)",
                credentials.display()
            )
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .context("the service account's private_key is not an RSA PEM key")?;
        let token_uri = account
            .token_uri
            .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned());
        reqwest::Url::parse(&token_uri).context("the service account's token_uri is not a URL")?;
        Ok(Fcm {
            http: super::http_client(settings, false)?,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                settings.fcm_endpoint.trim_end_matches('/'),
                account.project_id
            ),
            token_uri,
            client_email: account.client_email,
            key,
            key_id: account.private_key_id,
            ttl_secs: settings.push_ttl_secs,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token: the kept one, or a new one from the token
    /// endpoint (one request at a time).
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut kept = self.token.lock().await;
        if let Some((token, until)) = kept.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = crate::auth::token::now_secs();
        let claims = GrantClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| Outcome::Failed(format!("signing the FCM token request: {e}")))?;
        let answer = self
            .http
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Outcome::Retry {
                after: None,
                reason: format!("the OAuth token endpoint did not answer: {e}"),
            })?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            // A refused grant is a credentials problem; it is retried, as
            // the operator may fix it.
            return Err(Outcome::Retry {
                after: super::retry_after(&headers),
                reason: format!(
                    "the OAuth token endpoint answered {status}: {}",
                    super::truncate(text.trim(), 300)
                ),
            });
        }
        let token: TokenAnswer = serde_json::from_str(&text).map_err(|e| Outcome::Retry {
            after: None,
            reason: format!("the OAuth token endpoint's answer has no access_token: {e}"),
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        *kept = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    /// The `messages:send` body.
    fn body(&self, token: &str, message: &Message) -> serde_json::Value {
        let mut data = serde_json::Map::new();
        if let serde_json::Value::Object(pointer) = message.pointer() {
            for (key, value) in pointer {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                data.insert(key, json!(text));
            }
        }
        let mut body = json!({
            "token": token,
            "data": data,
            "android": {
                "collapse_key": message.collapse_id,
                "ttl": format!("{}s", self.ttl_secs),
            },
            "apns": {
                "headers": {"apns-collapse-id": message.collapse_id},
                "payload": {"aps": {"badge": message.badge}},
            },
        });
        if message.title.is_some() || message.body.is_some() {
            let mut notification = serde_json::Map::new();
            if let Some(title) = &message.title {
                notification.insert("title".into(), json!(title));
            }
            if let Some(text) = &message.body {
                notification.insert("body".into(), json!(text));
            }
            body["notification"] = serde_json::Value::Object(notification);
            body["android"]["notification"] =
                json!({"tag": message.collapse_id, "notification_count": message.badge});
        }
        json!({ "message": body })
    }
}

/// Whether an FCM error answer names `UNREGISTERED`.
fn unregistered(text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let error = &value["error"];
    error["details"]
        .as_array()
        .is_some_and(|details| details.iter().any(|d| d["errorCode"] == "UNREGISTERED"))
        || error["status"] == "UNREGISTERED"
}

#[async_trait]
impl Provider for Fcm {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    async fn send(&self, target: Target<'_>, message: &Message) -> Outcome {
        let access = match self.access_token().await {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let answer = self
            .http
            .post(&self.send_url)
            .bearer_auth(access)
            .json(&self.body(target.address, message))
            .send()
            .await;
        let super::Refusal {
            status,
            headers,
            text,
        } = match super::read_answer(answer, "FCM").await {
            Ok(refusal) => refusal,
            Err(outcome) => return outcome,
        };
        if unregistered(&text) {
            return Outcome::Gone(format!("{status}: UNREGISTERED"));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            *self.token.lock().await = None;
        }
        super::classify(status, &headers, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistered_is_read_from_the_error_details() {
        let gone = r#"{"error":{"code":404,"status":"NOT_FOUND","details":[
            {"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(unregistered(gone));
        let bad = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[
            {"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
        assert!(!unregistered(bad));
        assert!(!unregistered("not json"));
    }
}
