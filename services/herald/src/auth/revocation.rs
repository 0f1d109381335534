//! Revocation: which tokens no longer count. The store holds the truth
//! (shared by every node); each node keeps a copy in memory, updated at once
//! when the node itself revokes or hears of a revocation on the bus, and
//! every heartbeat with the revocations stored or renewed since its last
//! read (an incremental read: see `Store::revocations`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use parking_lot::RwLock;

use super::Principal;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// Every token of a subject issued before the revocation's second, or
    /// without `iat`.
    Sub,
    /// One token, by its `jti`.
    Jti,
}

impl RevocationKind {
    /// The stored name: `sub` or `jti`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Sub => "sub",
            RevocationKind::Jti => "jti",
        }
    }
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sub" => Ok(RevocationKind::Sub),
            "jti" => Ok(RevocationKind::Jti),
            other => Err(format!("unknown revocation kind {other:?}")),
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub kind: RevocationKind,
    pub value: String,
    /// When it was made, seconds since the epoch.
    pub revoked_at_secs: u64,
}

/// What identifies a token for revocation.
#[derive(Debug, Clone)]
pub struct TokenId {
    pub sub: std::sync::Arc<str>,
    pub jti: Option<std::sync::Arc<str>>,
    /// Issued at, seconds since the epoch; `None` when the token has no `iat`.
    pub iat: Option<u64>,
}

impl From<&Principal> for TokenId {
    fn from(p: &Principal) -> TokenId {
        TokenId {
            sub: p.sub.clone(),
            jti: p.jti.clone(),
            iat: p.iat,
        }
    }
}

/// This node's copy of the unexpired revocations: the second of each.
#[derive(Default)]
pub struct Revocations {
    set: RwLock<HashMap<(RevocationKind, String), u64>>,
}

impl Revocations {
    /// Whether the token `id` is revoked: its `jti` was revoked, or its
    /// subject was revoked and the token was issued (`iat`, whole seconds)
    /// before the revocation's second, or carries no `iat` (its age is
    /// unknown). A token issued in the revocation's own second is not
    /// covered: a log-in right after a log-out-everywhere must work, and
    /// `iat` cannot tell which came first within that second.
    pub fn covers(&self, id: &TokenId) -> bool {
        let set = self.set.read();
        if set.is_empty() {
            return false;
        }
        let by_sub = set
            .get(&(RevocationKind::Sub, id.sub.to_string()))
            .is_some_and(|revoked_at| id.iat.is_none_or(|iat| iat < *revoked_at));
        by_sub
            || id
                .jti
                .as_ref()
                .is_some_and(|jti| set.contains_key(&(RevocationKind::Jti, jti.to_string())))
    }

    /// Whether `principal`'s token is revoked.
    pub fn is_revoked(&self, principal: &Principal) -> bool {
        self.covers(&TokenId::from(principal))
    }

    /// Adds one revocation (keeping the later second if it is already
    /// known). Returns whether it was news.
    pub fn add(&self, revocation: Revocation) -> bool {
        let mut set = self.set.write();
        Self::insert(&mut set, revocation)
    }

    /// Adds revocations read from the store. Returns whether any was news
    /// (so that live connections are re-checked).
    pub fn merge(&self, revocations: Vec<Revocation>) -> bool {
        if revocations.is_empty() {
            return false;
        }
        let mut set = self.set.write();
        let mut learned = false;
        for revocation in revocations {
            learned |= Self::insert(&mut set, revocation);
        }
        learned
    }

    fn insert(set: &mut HashMap<(RevocationKind, String), u64>, revocation: Revocation) -> bool {
        let known = set.entry((revocation.kind, revocation.value)).or_insert(0);
        let learned = *known < revocation.revoked_at_secs;
        *known = (*known).max(revocation.revoked_at_secs);
        learned
    }

    /// Forgets the revocations made `ttl_secs` or more before `now_secs`:
    /// no token they cover is still accepted, because the verifier refuses
    /// tokens that live longer than `HERALD_JWT_MAX_LIFETIME_SECS` and
    /// start-up refuses a `ttl_secs` that does not outlast them.
    pub fn expire(&self, now_secs: u64, ttl_secs: u64) {
        self.set
            .write()
            .retain(|_, revoked_at| revoked_at.saturating_add(ttl_secs) > now_secs);
    }

    /// How many revocations this node knows.
    pub fn len(&self) -> usize {
        self.set.read().len()
    }

    /// Whether this node knows no revocation.
    pub fn is_empty(&self) -> bool {
        self.set.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str, jti: Option<&str>, iat: Option<u64>) -> TokenId {
        TokenId {
            sub: sub.into(),
            jti: jti.map(Into::into),
            iat,
        }
    }

    fn sub(value: &str, revoked_at_secs: u64) -> Revocation {
        Revocation {
            kind: RevocationKind::Sub,
            value: value.into(),
            revoked_at_secs,
        }
    }

    #[test]
    fn a_subject_revocation_covers_tokens_issued_before_its_second_or_without_iat() {
        let r = Revocations::default();
        r.add(sub("7", 100));
        assert!(r.covers(&id("7", None, Some(0))));
        assert!(r.covers(&id("7", None, Some(99))));
        assert!(r.covers(&id("7", None, None)), "age unknown: refused");
        assert!(
            !r.covers(&id("7", None, Some(100))),
            "issued in the revocation's second: a log-in right after it works"
        );
        assert!(!r.covers(&id("7", None, Some(101))));
        assert!(!r.covers(&id("8", None, Some(1))));
        assert!(!r.covers(&id("8", None, None)));
    }

    #[test]
    fn a_jti_revocation_covers_that_token_only() {
        let r = Revocations::default();
        r.add(Revocation {
            kind: RevocationKind::Jti,
            value: "a".into(),
            revoked_at_secs: 100,
        });
        assert!(r.covers(&id("7", Some("a"), Some(1_000))));
        assert!(r.covers(&id("7", Some("a"), None)));
        assert!(!r.covers(&id("7", Some("b"), Some(1))));
        assert!(!r.covers(&id("7", None, None)));
    }

    #[test]
    fn merging_tells_whether_anything_was_learned_and_keeps_the_later_second() {
        let r = Revocations::default();
        assert!(r.merge(vec![sub("7", 100)]));
        assert!(!r.merge(vec![sub("7", 100)]));
        assert!(!r.merge(Vec::new()));
        assert!(!r.merge(vec![sub("7", 50)]), "an older second is no news");
        assert!(r.covers(&id("7", None, Some(99))));
        assert!(r.merge(vec![sub("7", 200)]));
        assert!(r.covers(&id("7", None, Some(150))));
        assert!(!r.add(sub("7", 200)));
        assert!(r.add(sub("8", 1)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn revocations_older_than_their_ttl_are_forgotten() {
        let r = Revocations::default();
        r.add(sub("old", 100));
        r.add(sub("new", 500));
        r.expire(600, 400);
        assert!(!r.covers(&id("old", None, None)));
        assert!(r.covers(&id("new", None, None)));
        assert_eq!(r.len(), 1);
    }
}
