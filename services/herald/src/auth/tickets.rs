//! Tickets: short-lived, single-use credentials for URLs (`POST /v1/tickets`).
//!
//! A ticket is 32 random bytes that stand for the token it was minted from.
//! The store keeps what it authorizes under the ticket's SHA-256, so every
//! node can redeem it and a reader of the database cannot; redeeming deletes
//! the row, so a ticket opens one connection in the whole cluster. This
//! module makes tickets and keys and bounds how many a node has outstanding,
//! in all and per subject (so one subject cannot take every ticket);
//! the HTTP routes store them (`POST /v1/tickets`) and redeem them
//! (`http::extract::subscriber_credential`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Principal;

/// Longest ticket text worth looking up: 32 bytes in base64url are 43.
const MAX_TICKET_CHARS: usize = 64;

/// A node's ticket settings and its outstanding tickets, at most `max`
/// unexpired at a time, at most `max_per_subject` of them one subject's.
pub struct Tickets {
    ttl: Duration,
    max: usize,
    max_per_subject: usize,
    outstanding: Mutex<Outstanding>,
}

/// The unexpired tickets this node minted.
#[derive(Default)]
struct Outstanding {
    /// When each ticket expires, and its subject, oldest first.
    expiries: VecDeque<(Instant, Arc<str>)>,
    /// When each subject's tickets expire, oldest first; a subject with
    /// none has no entry.
    by_subject: HashMap<Arc<str>, VecDeque<Instant>>,
}

impl Outstanding {
    /// Forgets the tickets expired at `now`.
    fn sweep(&mut self, now: Instant) {
        while let Some((at, sub)) = self.expiries.front() {
            if *at > now {
                break;
            }
            if let Some(times) = self.by_subject.get_mut(sub) {
                times.pop_front();
                if times.is_empty() {
                    self.by_subject.remove(sub);
                }
            }
            self.expiries.pop_front();
        }
    }
}

/// A new ticket: the text for the client and the key the store keeps.
#[derive(Debug)]
pub struct Minted {
    pub ticket: String,
    pub key: String,
}

/// Why no ticket was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooManyTickets {
    /// The node holds its maximum of unexpired tickets.
    #[error("this node holds its maximum of {0} unused tickets; retry shortly")]
    Node(usize),
    /// The caller's subject holds its maximum on this node.
    #[error(
        "this subject holds its maximum of {max} unused tickets on this node \
         (HERALD_MAX_TICKETS_PER_SUBJECT); one expires in {retry_after_secs} s"
    )]
    Subject {
        max: usize,
        /// Whole seconds until the subject's oldest ticket expires (at least 1).
        retry_after_secs: u64,
    },
}

impl Tickets {
    /// Tickets valid for `ttl`, at most `max` outstanding from this node
    /// and `max_per_subject` of them for one subject.
    pub fn new(ttl: Duration, max: usize, max_per_subject: usize) -> Tickets {
        Tickets {
            ttl,
            max,
            max_per_subject,
            outstanding: Mutex::new(Outstanding::default()),
        }
    }

    /// How long a ticket can be used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for subject `sub`, counted against this node's bounds
    /// until it expires (whether or not it is used: it may be redeemed on
    /// another node).
    pub fn mint(&self, sub: &Arc<str>) -> Result<Minted, TooManyTickets> {
        let now = Instant::now();
        {
            let mut outstanding = self.outstanding.lock();
            outstanding.sweep(now);
            if let Some(times) = outstanding
                .by_subject
                .get(sub)
                .filter(|times| times.len() >= self.max_per_subject)
            {
                let oldest = times.front().copied().unwrap_or(now);
                let wait = oldest.saturating_duration_since(now);
                return Err(TooManyTickets::Subject {
                    max: self.max_per_subject,
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
            if outstanding.expiries.len() >= self.max {
                return Err(TooManyTickets::Node(self.max));
            }
            let expires = now + self.ttl;
            outstanding.expiries.push_back((expires, sub.clone()));
            outstanding
                .by_subject
                .entry(sub.clone())
                .or_default()
                .push_back(expires);
        }
        let ticket = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let key = key(&ticket).expect("a minted ticket is short");
        Ok(Minted { ticket, key })
    }
}

/// The store key of `ticket`: its SHA-256 in hex. `None` for text too long
/// to be a ticket (not worth a store round trip).
pub fn key(ticket: &str) -> Option<String> {
    if ticket.len() > MAX_TICKET_CHARS {
        return None;
    }
    let digest = Sha256::digest(ticket.as_bytes());
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// What a ticket authorizes, as the store keeps it.
pub fn encode_grant(principal: &Principal) -> String {
    serde_json::to_string(principal).expect("a principal always serializes")
}

/// The principal a stored grant stands for; `None` if the row is not one
/// this version understands (then the ticket is refused).
pub fn decode_grant(grant: &str) -> Option<Principal> {
    serde_json::from_str(grant).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::PatternSet;
    use crate::topic::Topic;

    fn principal() -> Principal {
        let (subscribe, _) = PatternSet::compile(["user.{sub}.>"], "7");
        Principal {
            sub: Arc::from("7"),
            exp: 2_000_000_000,
            iat: Some(1_700_000_000),
            jti: Some(Arc::from("t-1")),
            subscribe: Arc::new(subscribe),
            publish: Arc::new(PatternSet::default()),
            admin: false,
        }
    }

    #[test]
    fn a_grant_round_trips_with_what_it_allows() {
        let back = decode_grant(&encode_grant(&principal())).expect("decodes");
        let allowed = Topic::parse("user.7.inbox").expect("valid");
        let other = Topic::parse("user.8.inbox").expect("valid");
        assert!(back.may_subscribe(&allowed));
        assert!(!back.may_subscribe(&other));
        assert_eq!(
            (&*back.sub, back.exp, back.iat, back.jti.as_deref()),
            ("7", 2_000_000_000, Some(1_700_000_000), Some("t-1"))
        );
        assert!(decode_grant("{\"not\":\"a grant\"}").is_none());
    }

    fn sub(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn keys_are_hashes_and_long_text_is_not_a_ticket() {
        let minted = Tickets::new(Duration::from_secs(30), 10, 10)
            .mint(&sub("7"))
            .expect("room");
        assert_eq!(key(&minted.ticket).as_deref(), Some(minted.key.as_str()));
        assert_eq!(minted.key.len(), 64);
        assert!(!minted.key.contains(&minted.ticket));
        assert!(key(&"x".repeat(65)).is_none());
    }

    #[test]
    fn a_node_bounds_its_outstanding_tickets_and_frees_expired_ones() {
        let full = Tickets::new(Duration::from_secs(30), 1, 1);
        full.mint(&sub("a")).expect("room for one");
        assert_eq!(full.mint(&sub("b")).err(), Some(TooManyTickets::Node(1)));
        // Expired at once: the bound frees itself.
        let instant = Tickets::new(Duration::ZERO, 1, 1);
        instant.mint(&sub("a")).expect("room for one");
        instant.mint(&sub("a")).expect("the first one expired");
        assert!(instant.outstanding.lock().by_subject.len() <= 1);
    }

    #[test]
    fn one_subject_holds_at_most_its_share_and_others_are_untouched() {
        let tickets = Tickets::new(Duration::from_secs(30), 10, 2);
        tickets.mint(&sub("greedy")).expect("first");
        tickets.mint(&sub("greedy")).expect("second");
        match tickets.mint(&sub("greedy")) {
            Err(TooManyTickets::Subject {
                max: 2,
                retry_after_secs,
            }) => assert!((1..=30).contains(&retry_after_secs)),
            other => panic!("{other:?}"),
        }
        tickets
            .mint(&sub("other"))
            .expect("another subject has room");
        // Expired tickets free their subject's share and its entry.
        let brief = Tickets::new(Duration::ZERO, 10, 1);
        brief.mint(&sub("a")).expect("first");
        brief.mint(&sub("a")).expect("the first one expired");
        brief.mint(&sub("b")).expect("b");
        let outstanding = brief.outstanding.lock();
        assert_eq!(outstanding.expiries.len(), 1);
        assert_eq!(outstanding.by_subject.len(), 1);
    }
}
