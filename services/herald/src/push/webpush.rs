//! Web Push: RFC 8030 delivery to a browser's push service, the payload
//! encrypted as RFC 8291 says (`aes128gcm`, with `web-push-native`), the
//! server identified by RFC 8292 VAPID (an ES256 JWT for the endpoint's
//! origin, with the public key).
//!
//! A VAPID key pair is one P-256 key: the private key (32 bytes, base64url)
//! is `HERALD_VAPID_PRIVATE_KEY`; the public key (65 bytes, base64url) is
//! what pages pass to `pushManager.subscribe` as `applicationServerKey`
//! (`GET /v1/push/vapid`). `herald keys vapid` makes a pair.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::Deserialize;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;
use web_push_native::p256::pkcs8::EncodePrivateKey as _;

use super::{Message, Outcome, Platform, Provider, PushArgs, Target};
use crate::config::Secret;

/// How long a VAPID token is valid (RFC 8292 allows up to 24 hours).
const VAPID_VALID: Duration = Duration::from_secs(12 * 3600);
/// A cached VAPID token is renewed when less than this is left.
const VAPID_RENEW: Duration = Duration::from_secs(3600);

/// Decodes base64url, with or without padding.
fn b64(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .ok()
}

/// Checks a subscription's `p256dh` (a P-256 point) and `auth` (16 bytes).
pub fn check_keys(p256dh: &str, auth: &str) -> Result<(p256::PublicKey, [u8; 16]), String> {
    let point = b64(p256dh).ok_or("keys.p256dh is not base64url")?;
    let public = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| "keys.p256dh is not a P-256 public key")?;
    let auth: [u8; 16] = b64(auth)
        .and_then(|a| a.try_into().ok())
        .ok_or("keys.auth is 16 bytes in base64url")?;
    Ok((public, auth))
}

/// A new VAPID key pair: (private, public), base64url.
pub fn generate_keys() -> (String, String) {
    loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            return (URL_SAFE_NO_PAD.encode(bytes), public_of(&secret));
        }
    }
}

fn public_of(secret: &p256::SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes())
}

/// The keys of a stored subscription.
#[derive(Deserialize)]
struct Keys {
    p256dh: String,
    auth: String,
}

#[derive(serde::Serialize)]
struct VapidClaims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

/// The Web Push provider.
pub struct WebPush {
    http: reqwest::Client,
    key: EncodingKey,
    public_key: String,
    subject: String,
    ttl_secs: u64,
    /// Signed tokens per audience (origin), with their expiry.
    tokens: Mutex<HashMap<String, (String, u64)>>,
}

impl WebPush {
    /// A provider signing with the private key `secret`.
    pub fn new(settings: &PushArgs, secret: &Secret) -> anyhow::Result<WebPush> {
        let text = std::str::from_utf8(secret.expose()).unwrap_or_default();
        let secret = b64(text)
            .and_then(|bytes| p256::SecretKey::from_slice(&bytes).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "HERALD_VAPID_PRIVATE_KEY is not a P-256 private key in base64url \
                     (32 bytes; `herald keys vapid` makes one)"
                )
            })?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding the VAPID key: {e}"))?;
        Ok(WebPush {
            http: super::http_client(settings, false)?,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public_key: public_of(&secret),
            subject: settings.vapid_subject.clone(),
            ttl_secs: settings.push_ttl_secs,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The public key (base64url), for `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header for `endpoint`: a VAPID token for its
    /// origin (scheme, host and port), reused while it has an hour left.
    fn authorization(&self, endpoint: &reqwest::Url) -> Result<String, String> {
        let audience = endpoint.origin().ascii_serialization();
        let now = crate::auth::token::now_secs();
        let mut tokens = self.tokens.lock();
        let token = match tokens.get(&audience) {
            Some((token, exp)) if *exp > now + VAPID_RENEW.as_secs() => token.clone(),
            _ => {
                let exp = now + VAPID_VALID.as_secs();
                let claims = VapidClaims {
                    aud: &audience,
                    exp,
                    sub: &self.subject,
                };
                let token =
                    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
                        .map_err(|e| format!("signing the VAPID token: {e}"))?;
                // Few origins exist (one per push service): the map stays small.
                tokens.insert(audience, (token.clone(), exp));
                token
            }
        };
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }
}

#[async_trait]
impl Provider for WebPush {
    fn platform(&self) -> Platform {
        Platform::WebPush
    }

    async fn send(&self, target: Target<'_>, message: &Message) -> Outcome {
        let Some(keys) = target
            .keys
            .and_then(|k| serde_json::from_str::<Keys>(k).ok())
        else {
            return Outcome::Failed("the stored subscription has no keys".into());
        };
        let (public, auth) = match check_keys(&keys.p256dh, &keys.auth) {
            Ok(keys) => keys,
            Err(e) => return Outcome::Failed(e),
        };
        let Ok(endpoint) = reqwest::Url::parse(target.address) else {
            return Outcome::Failed("the stored endpoint is not a URL".into());
        };
        let body = message.pointer().to_string().into_bytes();
        let auth = web_push_native::Auth::from(auth);
        let encrypted = match web_push_native::encrypt(body, &public, &auth) {
            Ok(bytes) => bytes,
            Err(e) => return Outcome::Failed(format!("encrypting the payload: {e}")),
        };
        let authorization = match self.authorization(&endpoint) {
            Ok(value) => value,
            Err(e) => return Outcome::Failed(e),
        };
        let answer = self
            .http
            .post(endpoint)
            .header("TTL", self.ttl_secs.to_string())
            .header("Urgency", "normal")
            .header("Topic", &message.collapse_id)
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::AUTHORIZATION, authorization)
            .body(encrypted)
            .send()
            .await;
        let super::Refusal {
            status,
            headers,
            text,
        } = match super::read_answer(answer, "the push service").await {
            Ok(refusal) => refusal,
            Err(outcome) => return outcome,
        };
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Outcome::Gone(format!("{status}: the subscription is gone"));
        }
        super::classify(status, &headers, &text)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A subscription's keys from a fresh key pair: (p256dh, auth).
    pub(crate) fn subscription_keys() -> (String, String) {
        let (_, public) = generate_keys();
        (public, URL_SAFE_NO_PAD.encode([7u8; 16]))
    }

    #[test]
    fn generated_keys_are_a_p256_pair_in_base64url() {
        let (private, public) = generate_keys();
        let secret = p256::SecretKey::from_slice(&b64(&private).expect("base64url"))
            .expect("a P-256 scalar");
        assert_eq!(public_of(&secret), public);
        assert_eq!(b64(&public).expect("base64url").len(), 65);
    }

    #[test]
    fn a_payload_encrypted_for_a_subscription_decrypts_with_its_private_key() {
        let (private, public) = generate_keys();
        let secret = p256::SecretKey::from_slice(&b64(&private).expect("base64url"))
            .expect("a P-256 scalar");
        let (ua_public, auth) =
            check_keys(&public, &URL_SAFE_NO_PAD.encode([9u8; 16])).expect("valid keys");
        let auth = web_push_native::Auth::from(auth);
        let sealed =
            web_push_native::encrypt(b"{\"seq\":1}".to_vec(), &ua_public, &auth).expect("encrypts");
        let opened = web_push_native::decrypt(sealed, &secret, &auth).expect("decrypts");
        assert_eq!(opened, b"{\"seq\":1}");
    }

    #[test]
    fn subscription_keys_are_checked() {
        let (p256dh, auth) = subscription_keys();
        assert!(check_keys(&p256dh, &auth).is_ok());
        assert!(check_keys("AAAA", &auth).is_err());
        assert!(check_keys(&p256dh, "AAAA").is_err());
        assert!(check_keys("not base64!", &auth).is_err());
    }
}
