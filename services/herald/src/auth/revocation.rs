//! Revocation: which tokens no longer count. The store holds the truth
//! (shared by every node); each node keeps a copy in memory, refreshed every
//! heartbeat and updated at once when the node itself revokes.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use parking_lot::RwLock;

use super::Principal;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// Every token of a subject issued at or before the revocation's second.
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
    /// Issued at, seconds since the epoch.
    pub iat: u64,
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

/// This node's copy of the unexpired revocations.
#[derive(Default)]
pub struct Revocations {
    set: RwLock<HashMap<(RevocationKind, String), Known>>,
}

/// A known revocation's second, and when this node added it itself.
#[derive(Debug, Clone, Copy)]
struct Known {
    revoked_at_secs: u64,
    added_here: Option<Instant>,
}

impl Revocations {
    /// Whether the token `id` is revoked: its subject was revoked at or after
    /// its `iat`, or its `jti` was revoked.
    pub fn covers(&self, id: &TokenId) -> bool {
        let set = self.set.read();
        if set.is_empty() {
            return false;
        }
        let by_sub = set
            .get(&(RevocationKind::Sub, id.sub.to_string()))
            .is_some_and(|known| id.iat <= known.revoked_at_secs);
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

    /// Adds one revocation this node has just stored (keeping the later
    /// second if it is already known).
    pub fn add(&self, revocation: Revocation) {
        let mut set = self.set.write();
        let known = set
            .entry((revocation.kind, revocation.value))
            .or_insert(Known {
                revoked_at_secs: revocation.revoked_at_secs,
                added_here: None,
            });
        known.revoked_at_secs = known.revoked_at_secs.max(revocation.revoked_at_secs);
        known.added_here = Some(Instant::now());
    }

    /// Replaces the set with the store's, read from `read_started` on.
    /// Revocations this node added since then are kept: the read may not
    /// have seen them. Returns whether it learned any revocation it did not
    /// know (so that live connections are re-checked).
    pub fn replace(&self, revocations: Vec<Revocation>, read_started: Instant) -> bool {
        let mut fresh: HashMap<(RevocationKind, String), Known> = revocations
            .into_iter()
            .map(|r| {
                let known = Known {
                    revoked_at_secs: r.revoked_at_secs,
                    added_here: None,
                };
                ((r.kind, r.value), known)
            })
            .collect();
        let mut set = self.set.write();
        let learned = fresh.iter().any(|(key, new)| {
            set.get(key)
                .is_none_or(|known| known.revoked_at_secs < new.revoked_at_secs)
        });
        for (key, known) in set.drain() {
            if known.added_here.is_some_and(|added| added >= read_started) {
                let kept = fresh.entry(key).or_insert(known);
                kept.revoked_at_secs = kept.revoked_at_secs.max(known.revoked_at_secs);
            }
        }
        *set = fresh;
        learned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str, jti: Option<&str>, iat: u64) -> TokenId {
        TokenId {
            sub: sub.into(),
            jti: jti.map(Into::into),
            iat,
        }
    }

    #[test]
    fn a_subject_revocation_covers_tokens_issued_up_to_its_second() {
        let r = Revocations::default();
        r.add(Revocation {
            kind: RevocationKind::Sub,
            value: "7".into(),
            revoked_at_secs: 100,
        });
        assert!(r.covers(&id("7", None, 99)));
        assert!(r.covers(&id("7", None, 100)));
        assert!(!r.covers(&id("7", None, 101)));
        assert!(!r.covers(&id("8", None, 1)));
    }

    #[test]
    fn a_jti_revocation_covers_that_token_only() {
        let r = Revocations::default();
        r.add(Revocation {
            kind: RevocationKind::Jti,
            value: "a".into(),
            revoked_at_secs: 100,
        });
        assert!(r.covers(&id("7", Some("a"), 1_000)));
        assert!(!r.covers(&id("7", Some("b"), 1)));
        assert!(!r.covers(&id("7", None, 1)));
    }

    #[test]
    fn replacing_tells_whether_anything_was_learned() {
        let r = Revocations::default();
        let one = Revocation {
            kind: RevocationKind::Sub,
            value: "7".into(),
            revoked_at_secs: 100,
        };
        assert!(r.replace(vec![one.clone()], Instant::now()));
        assert!(!r.replace(vec![one.clone()], Instant::now()));
        assert!(r.replace(
            vec![Revocation {
                revoked_at_secs: 200,
                ..one.clone()
            }],
            Instant::now()
        ));
        assert!(!r.replace(Vec::new(), Instant::now()));
        assert!(!r.covers(&id("7", None, 1)));

        // One added here after a read began survives that read's answer.
        let read_started = Instant::now();
        r.add(one);
        assert!(!r.replace(Vec::new(), read_started));
        assert!(r.covers(&id("7", None, 1)));
        assert!(!r.replace(Vec::new(), Instant::now()));
        assert!(!r.covers(&id("7", None, 1)));
    }
}
