//! JWT verification and minting: which keys and algorithms are accepted, and
//! what a verified token grants.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::pattern::PatternSet;
use crate::topic::Topic;

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims Herald reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    /// Subject: substituted for `{sub}` in patterns, and the unit of
    /// revocation and of acknowledgments. Required: a token without one (or
    /// with an empty one) is refused.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Token id, for revocation of one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Audience, checked when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Issuer, checked when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Herald's own claims.
    #[serde(default)]
    pub herald: HeraldClaims,
}

/// The `herald` claim: what the bearer may do.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HeraldClaims {
    /// Patterns of topics the bearer may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns of topics the bearer may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Whether the bearer may call the admin endpoints.
    #[serde(default)]
    pub admin: bool,
}

/// A verified token: who it is and what it allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// The `sub` claim.
    pub sub: Arc<str>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch, if the token says.
    pub iat: Option<u64>,
    /// The `jti` claim, if any.
    pub jti: Option<Arc<str>>,
    /// Topics the bearer may subscribe to.
    pub subscribe: Arc<PatternSet>,
    /// Topics the bearer may publish to.
    pub publish: Arc<PatternSet>,
    /// Whether the bearer is an administrator.
    pub admin: bool,
}

impl Principal {
    fn from_claims(claims: Claims) -> Principal {
        let (subscribe, _) = PatternSet::compile(
            claims.herald.subscribe.iter().map(String::as_str),
            &claims.sub,
        );
        let (publish, _) = PatternSet::compile(
            claims.herald.publish.iter().map(String::as_str),
            &claims.sub,
        );
        Principal {
            sub: Arc::from(claims.sub),
            exp: claims.exp,
            iat: claims.iat,
            jti: claims.jti.map(Arc::from),
            subscribe: Arc::new(subscribe),
            publish: Arc::new(publish),
            admin: claims.herald.admin,
        }
    }

    /// Whether the bearer may subscribe to `topic`.
    pub fn may_subscribe(&self, topic: &Topic) -> bool {
        self.subscribe.allows(topic)
    }

    /// Whether the bearer may publish to `topic`.
    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish.allows(topic)
    }

    /// Whether the token has expired at `now_secs`, allowing `leeway_secs`.
    /// An `exp` near the end of time (any u64 a signed token may carry) is
    /// simply far away.
    pub fn expired(&self, leeway_secs: u64, now_secs: u64) -> bool {
        self.exp.saturating_add(leeway_secs) <= now_secs
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token has been revoked")]
    Revoked,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// One verification key.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verification settings.
#[derive(Clone)]
pub struct VerifierSettings {
    /// HS256 shared secret.
    pub secret: Option<Vec<u8>>,
    /// PEM public keys (RS256 or ES256), each with an optional key id.
    pub public_keys_pem: Vec<(Option<String>, Vec<u8>)>,
    /// Clock leeway for `exp`, `nbf` and a future `iat`, in seconds.
    pub leeway_secs: u64,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted issuers; empty means `iss` is not checked.
    pub issuer: Vec<String>,
    /// Longest lifetime (`exp - iat`) accepted, in seconds: revocations are
    /// kept at least this long, so no revoked token outlives its revocation.
    pub max_lifetime_secs: u64,
}

impl Default for VerifierSettings {
    /// No key, no leeway, no audience or issuer, the default lifetime bound.
    fn default() -> VerifierSettings {
        VerifierSettings {
            secret: None,
            public_keys_pem: Vec::new(),
            leeway_secs: 0,
            audience: Vec::new(),
            issuer: Vec::new(),
            max_lifetime_secs: crate::config::DEFAULT_JWT_MAX_LIFETIME_SECS,
        }
    }
}

/// Why verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public key {index}: not an RSA or EC (P-256) public key in PEM form")]
    UnreadablePem { index: usize },
    #[error("no verification key is configured")]
    NoKey,
}

/// Verifies tokens against the configured keys. Only the algorithms of
/// configured keys are accepted; `none` never is.
pub struct Verifier {
    keys: Vec<Key>,
    leeway_secs: u64,
    max_lifetime_secs: u64,
    audience: Vec<String>,
    issuer: Vec<String>,
}

impl Verifier {
    /// Loads the keys named by `settings`.
    pub fn new(settings: &VerifierSettings) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.secret {
            keys.push(Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        for (index, (kid, pem)) in settings.public_keys_pem.iter().enumerate() {
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(KeyError::UnreadablePem { index });
            };
            keys.push(Key {
                kid: kid.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(Verifier {
            keys,
            leeway_secs: settings.leeway_secs,
            max_lifetime_secs: settings.max_lifetime_secs,
            audience: settings.audience.clone(),
            issuer: settings.issuer.clone(),
        })
    }

    /// The clock leeway, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Verifies `token` and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid("token too large"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token"))?;
        // RFC 7515 section 4.1.11: a recipient that does not understand every
        // header parameter `crit` lists must refuse the token. Herald
        // understands no extension, and `crit` may not list registered
        // names (nor be empty), so any `crit` makes the token invalid.
        if header.crit.is_some() {
            return Err(TokenError::Invalid(
                "the token's header has a crit parameter Herald does not understand",
            ));
        }
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    _ => true,
                }
        });
        let mut last = TokenError::Invalid("algorithm not accepted");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => {
                    self.check_claims(&data.claims)?;
                    return Ok(Principal::from_claims(data.claims));
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => {
                            return Err(TokenError::Invalid("token not yet valid"));
                        }
                        ErrorKind::InvalidAudience => {
                            return Err(TokenError::Invalid("wrong audience"));
                        }
                        ErrorKind::InvalidIssuer => {
                            return Err(TokenError::Invalid("wrong issuer"));
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            return Err(TokenError::Invalid("missing required claim"));
                        }
                        ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                        ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
                            return Err(TokenError::Invalid("malformed claims"));
                        }
                        _ => TokenError::Invalid("malformed token"),
                    }
                }
            }
        }
        Err(last)
    }

    /// Herald's rules for the claims of a token whose signature, `exp`,
    /// `nbf`, `aud` and `iss` have been checked.
    fn check_claims(&self, claims: &Claims) -> Result<(), TokenError> {
        // The subject is what `{sub}` patterns, revocation by subject and
        // acknowledgments are keyed on: without one, tokens of unrelated
        // callers would share all three.
        if claims.sub.is_empty() {
            return Err(TokenError::Invalid(
                "the token has no subject (a non-empty sub claim)",
            ));
        }
        // A revocation is kept for a bounded time, so a token must not live
        // longer than that: its lifetime is counted from `iat`, which must
        // be there.
        let Some(iat) = claims.iat else {
            return Err(TokenError::Invalid(
                "the token has no iat claim; Herald bounds every token's lifetime from it",
            ));
        };
        // A token dated after now would escape every revocation by subject
        // made before that date (they cover tokens issued before them).
        if iat > now_secs().saturating_add(self.leeway_secs) {
            return Err(TokenError::Invalid(
                "the token's iat (issued at) is in the future",
            ));
        }
        if claims.exp.saturating_sub(iat) > self.max_lifetime_secs {
            return Err(TokenError::Invalid(
                "the token lives longer (exp - iat) than HERALD_JWT_MAX_LIFETIME_SECS allows",
            ));
        }
        Ok(())
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.leeway = self.leeway_secs;
        v.validate_nbf = true;
        v.validate_aud = !self.audience.is_empty();
        if !self.audience.is_empty() {
            v.set_audience(&self.audience);
            v.set_required_spec_claims(&["exp", "aud"]);
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&self.issuer);
        }
        v
    }
}

/// Signs tokens: for `herald token`, `--dev` and tests.
pub struct Minter {
    algorithm: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

/// Why a signing key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("not an RSA or EC (P-256) private key in PEM form")]
    UnreadablePem,
    #[error("signing failed: {0}")]
    Sign(String),
}

impl Minter {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Minter {
        Minter {
            algorithm: Algorithm::HS256,
            kid: None,
            key: EncodingKey::from_secret(secret),
        }
    }

    /// RS256 or ES256 from a PEM private key (the kind is detected).
    pub fn from_private_pem(pem: &[u8], kid: Option<String>) -> Result<Minter, MintError> {
        let (algorithm, key) = if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else {
            return Err(MintError::UnreadablePem);
        };
        Ok(Minter {
            algorithm,
            kid,
            key,
        })
    }

    /// Signs `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, MintError> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| MintError::Sign(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "7".into(),
            exp,
            iat: Some(now_secs()),
            herald: HeraldClaims {
                publish: vec!["orders.>".into()],
                subscribe: vec!["user.{sub}.>".into()],
                admin: false,
            },
            ..Claims::default()
        }
    }

    fn verifier(secret: &[u8]) -> Verifier {
        Verifier::new(&VerifierSettings {
            secret: Some(secret.to_vec()),
            ..VerifierSettings::default()
        })
        .expect("a secret is a key")
    }

    #[test]
    fn an_exp_at_the_end_of_time_with_leeway_is_far_away_not_an_overflow() {
        let secret = b"s3cret";
        let token = Minter::hs256(secret)
            .mint(&claims(u64::MAX))
            .expect("minting works");
        let v = Verifier::new(&VerifierSettings {
            secret: Some(secret.to_vec()),
            leeway_secs: 60,
            max_lifetime_secs: u64::MAX,
            ..VerifierSettings::default()
        })
        .expect("a secret is a key");
        let principal = v.verify(&token).expect("not expired");
        assert!(!principal.expired(60, now_secs()));
        assert!(!principal.expired(u64::MAX, u64::MAX - 1));
        let short = v
            .verify(
                &Minter::hs256(secret)
                    .mint(&claims(now_secs() + 5))
                    .expect("mint"),
            )
            .expect("valid");
        assert!(short.expired(0, now_secs() + 5));
        assert!(!short.expired(60, now_secs() + 5));
    }

    #[test]
    fn a_valid_hs256_token_grants_its_patterns() {
        let token = Minter::hs256(b"k")
            .mint(&claims(now_secs() + 60))
            .expect("mint");
        let p = verifier(b"k").verify(&token).expect("valid token");
        assert!(p.may_publish(&Topic::parse("orders.1").expect("valid")));
        assert!(!p.may_publish(&Topic::parse("user.7.x").expect("valid")));
        assert!(p.may_subscribe(&Topic::parse("user.7.x").expect("valid")));
    }

    #[test]
    fn audience_issuer_and_not_before_are_checked_when_configured() {
        let v = Verifier::new(&VerifierSettings {
            secret: Some(b"k".to_vec()),
            audience: vec!["herald".into()],
            issuer: vec!["https://issuer.example".into()],
            ..VerifierSettings::default()
        })
        .expect("a secret is a key");
        let minter = Minter::hs256(b"k");
        let with = |aud: Option<&str>, iss: Option<&str>, nbf: Option<u64>| {
            let mut c = claims(now_secs() + 60);
            c.aud = aud.map(|a| serde_json::Value::String(a.into()));
            c.iss = iss.map(str::to_owned);
            c.nbf = nbf;
            minter.mint(&c).expect("mint")
        };
        let iss = Some("https://issuer.example");
        assert!(v.verify(&with(Some("herald"), iss, None)).is_ok());
        assert_eq!(
            v.verify(&with(Some("other"), iss, None)).err(),
            Some(TokenError::Invalid("wrong audience"))
        );
        assert!(
            v.verify(&with(None, iss, None)).is_err(),
            "aud is required once configured"
        );
        assert_eq!(
            v.verify(&with(Some("herald"), Some("someone else"), None))
                .err(),
            Some(TokenError::Invalid("wrong issuer"))
        );
        assert_eq!(
            v.verify(&with(Some("herald"), iss, Some(now_secs() + 600)))
                .err(),
            Some(TokenError::Invalid("token not yet valid"))
        );
        // Without an audience configured, a token's aud is not held against it.
        assert!(
            verifier(b"k")
                .verify(&with(Some("anything"), None, None))
                .is_ok()
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let v = verifier(b"k");
        let mut expired = claims(now_secs() - 10);
        expired.iat = Some(now_secs() - 20);
        let expired = Minter::hs256(b"k").mint(&expired).expect("mint");
        assert_eq!(v.verify(&expired).err(), Some(TokenError::Expired));
        let other = Minter::hs256(b"other")
            .mint(&claims(now_secs() + 60))
            .expect("mint");
        assert_eq!(
            v.verify(&other).err(),
            Some(TokenError::Invalid("bad signature"))
        );
        assert!(v.verify("not.a.token").is_err());
        assert!(v.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        // alg none: header {"alg":"none","typ":"JWT"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI3IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(v.verify(none).is_err());
    }

    #[test]
    fn a_token_needs_a_subject() {
        let minter = Minter::hs256(b"k");
        let mut no_sub = claims(now_secs() + 60);
        no_sub.sub = String::new();
        let refused = verifier(b"k").verify(&minter.mint(&no_sub).expect("mint"));
        assert!(matches!(refused, Err(TokenError::Invalid(m)) if m.contains("sub")));
        // Absent altogether (Claims serializes its sub even when empty).
        let mut fields = serde_json::to_value(claims(now_secs() + 60)).expect("serializes");
        fields.as_object_mut().expect("an object").remove("sub");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &fields,
            &EncodingKey::from_secret(b"k"),
        )
        .expect("signs");
        let refused = verifier(b"k").verify(&token);
        assert!(matches!(refused, Err(TokenError::Invalid(m)) if m.contains("sub")));
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
        let minter = Minter::hs256(b"k");
        let issued = |offset: u64| {
            let mut c = claims(now_secs() + offset + 60);
            c.iat = Some(now_secs() + offset);
            minter.mint(&c).expect("mint")
        };
        let lenient = Verifier::new(&VerifierSettings {
            secret: Some(b"k".to_vec()),
            leeway_secs: 30,
            ..VerifierSettings::default()
        })
        .expect("a secret is a key");
        assert!(lenient.verify(&issued(0)).is_ok());
        assert!(lenient.verify(&issued(20)).is_ok(), "within the leeway");
        let refused = lenient.verify(&issued(600));
        assert!(matches!(refused, Err(TokenError::Invalid(m)) if m.contains("iat")));
        assert!(verifier(b"k").verify(&issued(600)).is_err());
    }

    #[test]
    fn a_token_must_say_when_it_was_issued_and_live_no_longer_than_the_bound() {
        let v = Verifier::new(&VerifierSettings {
            secret: Some(b"k".to_vec()),
            max_lifetime_secs: 600,
            ..VerifierSettings::default()
        })
        .expect("a secret is a key");
        let minter = Minter::hs256(b"k");
        let lasting = |secs: u64| minter.mint(&claims(now_secs() + secs)).expect("mint");
        assert!(v.verify(&lasting(600)).is_ok(), "exactly the bound");
        let refused = v.verify(&lasting(601));
        assert!(
            matches!(refused, Err(TokenError::Invalid(m)) if m.contains("HERALD_JWT_MAX_LIFETIME_SECS"))
        );
        // Issued long ago: its lifetime counts from iat, not from now.
        let mut old = claims(now_secs() + 60);
        old.iat = Some(now_secs() - 3600);
        assert!(v.verify(&minter.mint(&old).expect("mint")).is_err());
        let mut ageless = claims(now_secs() + 60);
        ageless.iat = None;
        let refused = v.verify(&minter.mint(&ageless).expect("mint"));
        assert!(matches!(refused, Err(TokenError::Invalid(m)) if m.contains("iat")));
    }

    #[test]
    fn a_critical_header_parameter_is_never_understood() {
        let key = EncodingKey::from_secret(b"k");
        let mut header = Header::new(Algorithm::HS256);
        for crit in [vec![], vec!["exp".to_owned()], vec!["b64".to_owned()]] {
            header.crit = Some(crit);
            let token =
                jsonwebtoken::encode(&header, &claims(now_secs() + 60), &key).expect("signs");
            assert!(
                matches!(verifier(b"k").verify(&token), Err(TokenError::Invalid(m)) if m.contains("crit")),
                "{:?}",
                header.crit
            );
        }
    }
}
