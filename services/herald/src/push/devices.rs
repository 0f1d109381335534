//! Devices: what `POST /v1/devices` takes, checked whole before anything
//! is stored, and the operations on a subject's devices.
//!
//! A registration names its platform, the platform's address for the
//! device (a Web Push subscription, an FCM registration token, an APNs
//! device token) and the topics or patterns that reach it, each within
//! the registering token's subscribe grants.

use serde::Deserialize;
use sha2::Digest as _;

use super::filter::{Filter, FilterError, MAX_DEVICE_TOPICS};
use super::{Platform, Push};
use crate::auth::Principal;
use crate::store::{DeviceRecord, Registered, Registration, StoreError};

/// Longest Web Push endpoint, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2_048;
/// Longest FCM or APNs token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4_096;

/// Why a device operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The body is not a registration (bad JSON, an unknown platform, a
    /// malformed subscription or token), or the platform is off here.
    #[error("{0}")]
    Invalid(String),
    /// A topic or pattern is not one.
    #[error("{0}")]
    InvalidTopic(String),
    /// More topics than a device may follow.
    #[error("a device follows at most {MAX_DEVICE_TOPICS} topics or patterns; this one names {0}")]
    TooManyTopics(usize),
    /// A topic or pattern reaches beyond the token's subscribe grants.
    #[error("{0}")]
    Forbidden(String),
    /// The subject holds as many devices as allowed.
    #[error(
        "this subject has {held} devices registered, the most allowed \
         (HERALD_PUSH_MAX_DEVICES = {max}); delete one first"
    )]
    TooMany { held: usize, max: usize },
    /// No such device (of this subject).
    #[error("no device {0} of this subject")]
    NotFound(String),
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
}

/// A Web Push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Deserialize)]
struct Subscription {
    endpoint: String,
    keys: SubscriptionKeys,
}

#[derive(Debug, Deserialize)]
struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

/// The body of `POST /v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    platform: String,
    #[serde(default)]
    subscription: Option<serde_json::Value>,
    #[serde(default)]
    token: Option<String>,
    topics: Vec<String>,
}

/// A registration, checked: everything but the store's say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub platform: Platform,
    pub address: String,
    pub keys: Option<String>,
    pub filters: Vec<Filter>,
}

fn invalid(message: impl Into<String>) -> DeviceError {
    DeviceError::Invalid(message.into())
}

/// Checks a Web Push subscription: an `https` endpoint (`http` only with
/// `allow_http`), a P-256 public key and a 16-byte secret (base64url).
fn web_push_address(
    subscription: Option<serde_json::Value>,
    allow_http: bool,
) -> Result<(String, String), DeviceError> {
    let value = subscription.ok_or_else(|| {
        invalid(
            r#"a webpush device needs "subscription": {"endpoint", "keys": {"p256dh", "auth"}}"#,
        )
    })?;
    let sub: Subscription = serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            r#"the subscription is {{"endpoint", "keys": {{"p256dh", "auth"}}}}: {e}"#
        ))
    })?;
    if sub.endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(invalid(format!(
            "the subscription endpoint is at most {MAX_ENDPOINT_BYTES} bytes"
        )));
    }
    let url = reqwest::Url::parse(&sub.endpoint)
        .map_err(|e| invalid(format!("the subscription endpoint is not a URL: {e}")))?;
    let scheme_ok = url.scheme() == "https" || (allow_http && url.scheme() == "http");
    if !scheme_ok || url.host_str().is_none() {
        return Err(invalid("the subscription endpoint is an https:// URL"));
    }
    super::webpush::check_keys(&sub.keys.p256dh, &sub.keys.auth).map_err(invalid)?;
    let keys = serde_json::json!({"p256dh": sub.keys.p256dh, "auth": sub.keys.auth}).to_string();
    Ok((sub.endpoint, keys))
}

/// Checks an FCM or APNs token.
fn token_address(platform: Platform, token: Option<String>) -> Result<String, DeviceError> {
    let token = token.ok_or_else(|| {
        invalid(format!(
            r#"an {} device needs "token": its device token"#,
            platform.as_str()
        ))
    })?;
    let ok = match platform {
        // 32 bytes today, in hex; Apple may make them longer.
        Platform::Apns => {
            (64..=200).contains(&token.len())
                && token.len() % 2 == 0
                && token.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => {
            !token.is_empty()
                && token.len() <= MAX_TOKEN_BYTES
                && token.bytes().all(|b| b.is_ascii_graphic())
        }
    };
    if ok {
        Ok(token)
    } else {
        Err(invalid(match platform {
            Platform::Apns => "an APNs device token is 64 to 200 hex digits",
            _ => "an FCM registration token is 1 to 4096 printable ASCII characters",
        }))
    }
}

/// Parses and checks a registration body for `principal`, in the order:
/// JSON shape and platform, the platform's address, the topics (shape,
/// count, then grants).
pub fn check(body: &[u8], principal: &Principal, push: &Push) -> Result<Checked, DeviceError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            r#"the body is {{"platform", "subscription" or "token", "topics"}}: {e}"#
        ))
    })?;
    let platform = Platform::parse(&body.platform).ok_or_else(|| {
        invalid(format!(
            "unknown platform {:?}: webpush, fcm or apns",
            super::truncate(&body.platform, 32)
        ))
    })?;
    if !push.serves(platform) {
        return Err(invalid(format!(
            "this server sends no {} pushes (it has no credentials for it)",
            platform.as_str()
        )));
    }
    let (address, keys) = match platform {
        Platform::WebPush => {
            if body.token.is_some() {
                return Err(invalid(
                    r#"a webpush device has a "subscription", not a "token""#,
                ));
            }
            let (address, keys) =
                web_push_address(body.subscription, push.settings.webpush_allow_http)?;
            (address, Some(keys))
        }
        _ => {
            if body.subscription.is_some() {
                return Err(invalid(
                    r#"an fcm or apns device has a "token", not a "subscription""#,
                ));
            }
            (token_address(platform, body.token)?, None)
        }
    };
    if body.topics.is_empty() {
        return Err(DeviceError::InvalidTopic(
            "name at least one topic or pattern in \"topics\"".into(),
        ));
    }
    if body.topics.len() > MAX_DEVICE_TOPICS {
        return Err(DeviceError::TooManyTopics(body.topics.len()));
    }
    let mut filters: Vec<Filter> = Vec::with_capacity(body.topics.len());
    let mut forbidden = Vec::new();
    for text in &body.topics {
        match Filter::parse(text, principal) {
            Ok(f) => {
                if !filters.contains(&f) {
                    filters.push(f);
                }
            }
            Err(FilterError::Invalid(_)) => {
                return Err(DeviceError::InvalidTopic(format!(
                    "{:?} is neither a topic nor a pattern",
                    super::truncate(text, 64)
                )));
            }
            Err(FilterError::Forbidden(topics)) => forbidden.extend(topics),
        }
    }
    if !forbidden.is_empty() {
        return Err(DeviceError::Forbidden(format!(
            "the token may not subscribe to every topic of {}",
            forbidden.join(", ")
        )));
    }
    Ok(Checked {
        platform,
        address,
        keys,
        filters,
    })
}

/// A new device id: `d-` and 32 hex digits (128 random bits).
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("d-{hex}")
}

impl Push {
    /// Registers `checked` for `principal`'s subject: `Ok((device, true))`
    /// when it is new.
    pub async fn register(
        &self,
        principal: &Principal,
        checked: Checked,
    ) -> Result<(DeviceRecord, bool), DeviceError> {
        let digest = sha2::Sha256::digest(checked.address.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let registration = Registration {
            new_id: new_id(),
            sub: principal.sub.to_string(),
            platform: checked.platform.as_str().to_owned(),
            address_key: format!("{}:{hex}", checked.platform.as_str()),
            address: checked.address,
            keys: checked.keys,
            filters: checked
                .filters
                .into_iter()
                .map(|f| (f.text, f.prefix))
                .collect(),
            now_ms: crate::event::now_ms(),
            max_devices: self.settings.push_max_devices,
        };
        match self.store.register_device(&registration).await? {
            Registered::Created(device) => Ok((device, true)),
            Registered::Updated(device) => Ok((device, false)),
            Registered::TooMany(held) => Err(DeviceError::TooMany {
                held,
                max: self.settings.push_max_devices,
            }),
        }
    }

    /// `sub`'s devices.
    pub async fn devices(&self, sub: &str) -> Result<Vec<DeviceRecord>, DeviceError> {
        Ok(self.store.devices_of(sub).await?)
    }

    /// Deletes device `id` of `principal` (of anyone, for an admin).
    pub async fn delete(&self, principal: &Principal, id: &str) -> Result<String, DeviceError> {
        let owner = (!principal.admin).then_some(&*principal.sub);
        self.store
            .delete_device(id, owner)
            .await?
            .ok_or_else(|| DeviceError::NotFound(super::truncate(id, 64)))
    }

    /// Deletes every device of `sub` (an admin's request).
    pub async fn delete_all(&self, sub: &str) -> Result<u64, DeviceError> {
        Ok(self.store.delete_devices_of(sub).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_tokens_are_hex_and_fcm_tokens_printable() {
        let hex = "ab".repeat(32);
        assert!(token_address(Platform::Apns, Some(hex)).is_ok());
        assert!(token_address(Platform::Apns, Some("zz".repeat(32))).is_err());
        assert!(token_address(Platform::Apns, Some("ab".into())).is_err());
        assert!(token_address(Platform::Fcm, Some("fcm:token-1".into())).is_ok());
        assert!(token_address(Platform::Fcm, Some("with space".into())).is_err());
        assert!(token_address(Platform::Fcm, None).is_err());
    }

    #[test]
    fn web_push_endpoints_are_https_unless_allowed() {
        let (p256dh, auth) = super::super::webpush::tests::subscription_keys();
        let sub = |endpoint: &str| {
            Some(
                serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}),
            )
        };
        assert!(web_push_address(sub("https://push.example/x"), false).is_ok());
        assert!(web_push_address(sub("http://127.0.0.1:1/x"), false).is_err());
        assert!(web_push_address(sub("http://127.0.0.1:1/x"), true).is_ok());
        assert!(web_push_address(sub("not a url"), true).is_err());
        let bad_keys = Some(
            serde_json::json!({"endpoint": "https://p.example/", "keys": {"p256dh": "AAAA", "auth": auth}}),
        );
        assert!(web_push_address(bad_keys, false).is_err());
    }
}
