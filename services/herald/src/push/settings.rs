//! Push settings: every one a flag of `herald serve` with a `HERALD_*`
//! twin, flattened into [`crate::config::ServeArgs`]. A provider is on when
//! its credentials are set; push is on when any provider is.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use clap::builder::RangedU64ValueParser;

use crate::auth::Pattern;
use crate::config::Secret;
use crate::topic::Topic;

/// Default delay between an event's commit and its push, in seconds.
pub const DEFAULT_PUSH_DELAY_SECS: u64 = 30;
/// Default quiet period of a device after a push, in seconds.
pub const DEFAULT_PUSH_QUIET_SECS: u64 = 5;
/// Default bound of devices per subject.
pub const DEFAULT_PUSH_MAX_DEVICES: usize = 20;
/// Default interval of the push scheduler, in milliseconds.
pub const DEFAULT_PUSH_POLL_MS: u64 = 500;
/// Default lease of a claimed push, in seconds.
pub const DEFAULT_PUSH_LEASE_SECS: u64 = 60;
/// Default number of sends of one push before it is given up.
pub const DEFAULT_PUSH_MAX_ATTEMPTS: u32 = 8;
/// Default first retry delay, in milliseconds (doubled each attempt).
pub const DEFAULT_PUSH_BACKOFF_MS: u64 = 1_000;
/// Default pushes a node sends at once.
pub const DEFAULT_PUSH_CONCURRENCY: usize = 32;
/// Default time-to-live given to the push services, in seconds.
pub const DEFAULT_PUSH_TTL_SECS: u64 = 86_400;
/// Apple's production endpoint.
pub const DEFAULT_APNS_ENDPOINT: &str = "https://api.push.apple.com";
/// Google's FCM endpoint.
pub const DEFAULT_FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// A per-topic delay: `PATTERN=SECS`.
#[derive(Debug, Clone)]
pub struct DelayOverride {
    pub pattern: Pattern,
    pub text: String,
    pub secs: u64,
}

impl FromStr for DelayOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pattern, secs) = s
            .trim()
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not PATTERN=SECS"))?;
        let pattern = pattern.trim();
        if pattern.contains(crate::auth::pattern::SUB_PLACEHOLDER) {
            return Err(format!("{pattern:?}: a delay pattern has no {{sub}}"));
        }
        let secs = secs
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?}: the delay is whole seconds"))?;
        Ok(DelayOverride {
            pattern: Pattern::compile(pattern, "").map_err(|e| e.to_string())?,
            text: pattern.to_owned(),
            secs,
        })
    }
}

/// Push to offline devices.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Seconds between an event's commit and its push to the subject's
    /// devices; an acknowledgment of the event within it cancels the push,
    /// and further events of the topic within it collapse into it.
    #[arg(long, env = "HERALD_PUSH_DELAY_SECS", default_value_t = DEFAULT_PUSH_DELAY_SECS)]
    pub push_delay_secs: u64,
    /// Per-topic delays: comma-separated `PATTERN=SECS` (`chat.>=5,digest.*=600`);
    /// the first pattern that matches a topic wins over HERALD_PUSH_DELAY_SECS.
    #[arg(long, env = "HERALD_PUSH_DELAY_TOPICS", value_delimiter = ',')]
    pub push_delay_topics: Vec<DelayOverride>,
    /// Seconds after a push during which a device gets no other push
    /// (pushes that come due wait, and keep collapsing); 0: no bound.
    #[arg(long, env = "HERALD_PUSH_QUIET_SECS", default_value_t = DEFAULT_PUSH_QUIET_SECS)]
    pub push_quiet_secs: u64,
    /// Most devices one subject may register.
    #[arg(long, env = "HERALD_PUSH_MAX_DEVICES", default_value_t = DEFAULT_PUSH_MAX_DEVICES, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub push_max_devices: usize,
    /// How often, in milliseconds, the scheduler turns commits into due
    /// pushes and sends those that are due.
    #[arg(long, env = "HERALD_PUSH_POLL_MS", default_value_t = DEFAULT_PUSH_POLL_MS, value_parser = RangedU64ValueParser::<u64>::new().range(10..=60_000))]
    pub push_poll_ms: u64,
    /// Seconds a node holds a push it claimed; a node that dies while
    /// sending leaves it to be claimed again after this.
    #[arg(long, env = "HERALD_PUSH_LEASE_SECS", default_value_t = DEFAULT_PUSH_LEASE_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub push_lease_secs: u64,
    /// Sends of one push (the first and the retries after `429` and `5xx`
    /// answers or network errors) before it is given up (a dead letter).
    #[arg(long, env = "HERALD_PUSH_MAX_ATTEMPTS", default_value_t = DEFAULT_PUSH_MAX_ATTEMPTS, value_parser = RangedU64ValueParser::<u32>::new().range(1..=100))]
    pub push_max_attempts: u32,
    /// First retry delay in milliseconds, doubled at each attempt (at most
    /// an hour); a provider's `Retry-After` wins when it is longer.
    #[arg(long, env = "HERALD_PUSH_BACKOFF_MS", default_value_t = DEFAULT_PUSH_BACKOFF_MS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub push_backoff_ms: u64,
    /// Pushes one node sends at once.
    #[arg(long, env = "HERALD_PUSH_CONCURRENCY", default_value_t = DEFAULT_PUSH_CONCURRENCY, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000))]
    pub push_concurrency: usize,
    /// How long the push services keep an undelivered push, in seconds.
    #[arg(long, env = "HERALD_PUSH_TTL_SECS", default_value_t = DEFAULT_PUSH_TTL_SECS)]
    pub push_ttl_secs: u64,
    /// A PEM file of CA certificates the push providers' servers may also
    /// be signed by (besides the system's), such as a proxy's.
    #[arg(long, env = "HERALD_PUSH_CA")]
    pub push_ca: Option<PathBuf>,
    /// Web Push: the VAPID private key (base64url, 32 bytes, as `herald keys
    /// vapid` prints it); unset: no Web Push.
    #[arg(long, env = "HERALD_VAPID_PRIVATE_KEY", hide_env_values = true)]
    pub vapid_private_key: Option<Secret>,
    /// Web Push: the VAPID contact (`mailto:` or `https:` URL) push services
    /// may reach the operator at.
    #[arg(
        long,
        env = "HERALD_VAPID_SUBJECT",
        default_value = "mailto:admin@example.com"
    )]
    pub vapid_subject: String,
    /// Web Push: accept `http://` subscription endpoints (local push
    /// services in tests); browsers only make `https://` ones.
    #[arg(long, env = "HERALD_WEBPUSH_ALLOW_HTTP")]
    pub webpush_allow_http: bool,
    /// FCM: the service-account JSON file (`project_id`, `client_email`,
    /// `private_key`, `token_uri`); unset: no FCM.
    #[arg(long, env = "HERALD_FCM_CREDENTIALS")]
    pub fcm_credentials: Option<PathBuf>,
    /// FCM: the base URL of the HTTP v1 API.
    #[arg(long, env = "HERALD_FCM_ENDPOINT", default_value = DEFAULT_FCM_ENDPOINT)]
    pub fcm_endpoint: String,
    /// APNs: the `.p8` signing key file (ES256); unset: no APNs.
    #[arg(long, env = "HERALD_APNS_KEY")]
    pub apns_key: Option<PathBuf>,
    /// APNs: the key's id.
    #[arg(long, env = "HERALD_APNS_KEY_ID", default_value = "")]
    pub apns_key_id: String,
    /// APNs: the team id.
    #[arg(long, env = "HERALD_APNS_TEAM_ID", default_value = "")]
    pub apns_team_id: String,
    /// APNs: the app's bundle id (`apns-topic`).
    #[arg(long, env = "HERALD_APNS_TOPIC", default_value = "")]
    pub apns_topic: String,
    /// APNs: the base URL (`https://api.sandbox.push.apple.com` for
    /// development builds).
    #[arg(long, env = "HERALD_APNS_ENDPOINT", default_value = DEFAULT_APNS_ENDPOINT)]
    pub apns_endpoint: String,
}

impl PushArgs {
    /// Whether any provider is configured.
    pub fn enabled(&self) -> bool {
        self.vapid_private_key.is_some()
            || self.fcm_credentials.is_some()
            || self.apns_key.is_some()
    }

    /// The delay of `topic`'s pushes.
    pub fn delay(&self, topic: &Topic) -> Duration {
        let secs = self
            .push_delay_topics
            .iter()
            .find(|o| o.pattern.matches(topic))
            .map_or(self.push_delay_secs, |o| o.secs);
        Duration::from_secs(secs)
    }

    /// Rejects settings that cannot work, before anything binds.
    pub fn validate(&self) -> Result<(), crate::config::SettingError> {
        let fail = |name: &'static str, reason: &str| {
            Err(crate::config::SettingError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.apns_key.is_some()
            && (self.apns_key_id.is_empty()
                || self.apns_team_id.is_empty()
                || self.apns_topic.is_empty())
        {
            return fail(
                "HERALD_APNS_KEY",
                "APNs also needs HERALD_APNS_KEY_ID, HERALD_APNS_TEAM_ID and HERALD_APNS_TOPIC",
            );
        }
        if self.vapid_private_key.is_some()
            && !(self.vapid_subject.starts_with("mailto:")
                || self.vapid_subject.starts_with("https://"))
        {
            return fail("HERALD_VAPID_SUBJECT", "must be a mailto: or https: URL");
        }
        for (name, url) in [
            ("HERALD_FCM_ENDPOINT", &self.fcm_endpoint),
            ("HERALD_APNS_ENDPOINT", &self.apns_endpoint),
        ] {
            if reqwest::Url::parse(url).is_err() {
                return fail(name, "must be a URL");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_override_is_a_pattern_and_whole_seconds() {
        let o: DelayOverride = "chat.>=5".parse().expect("a valid override");
        assert_eq!((o.text.as_str(), o.secs), ("chat.>", 5));
        assert!("chat.>".parse::<DelayOverride>().is_err());
        assert!("chat.>=soon".parse::<DelayOverride>().is_err());
        assert!("user.{sub}=1".parse::<DelayOverride>().is_err());
    }
}
