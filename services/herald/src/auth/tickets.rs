//! Tickets: short-lived, single-use credentials for URLs (`POST /v1/tickets`).
//!
//! A ticket is 32 random bytes that stand for the token it was minted from.
//! The store keeps what it authorizes under the ticket's SHA-256, so every
//! node can redeem it and a reader of the database cannot; redeeming deletes
//! the row, so a ticket opens one connection in the whole cluster. This
//! module makes tickets and keys and bounds how many a node has outstanding;
//! the HTTP routes store them (`POST /v1/tickets`) and redeem them
//! (`http::extract::subscriber_credential`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Principal;

/// Longest ticket text worth looking up: 32 bytes in base64url are 43.
const MAX_TICKET_CHARS: usize = 64;

/// A node's ticket settings and its outstanding tickets, at most `max`
/// unexpired at a time.
pub struct Tickets {
    ttl: Duration,
    max: usize,
    /// When each ticket this node minted expires, oldest first.
    expiries: Mutex<VecDeque<Instant>>,
}

/// A new ticket: the text for the client and the key the store keeps.
#[derive(Debug)]
pub struct Minted {
    pub ticket: String,
    pub key: String,
}

/// Why no ticket was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node holds its maximum of {0} unused tickets; retry shortly")]
pub struct TooManyTickets(pub usize);

impl Tickets {
    /// Tickets valid for `ttl`, at most `max` outstanding from this node.
    pub fn new(ttl: Duration, max: usize) -> Tickets {
        Tickets {
            ttl,
            max,
            expiries: Mutex::new(VecDeque::new()),
        }
    }

    /// How long a ticket can be used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket, counted against this node's bound until it expires.
    pub fn mint(&self) -> Result<Minted, TooManyTickets> {
        let now = Instant::now();
        {
            let mut expiries = self.expiries.lock();
            while expiries.front().is_some_and(|at| *at <= now) {
                expiries.pop_front();
            }
            if expiries.len() >= self.max {
                return Err(TooManyTickets(self.max));
            }
            expiries.push_back(now + self.ttl);
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

    #[test]
    fn keys_are_hashes_and_long_text_is_not_a_ticket() {
        let minted = Tickets::new(Duration::from_secs(30), 10)
            .mint()
            .expect("room");
        assert_eq!(key(&minted.ticket).as_deref(), Some(minted.key.as_str()));
        assert_eq!(minted.key.len(), 64);
        assert!(!minted.key.contains(&minted.ticket));
        assert!(key(&"x".repeat(65)).is_none());
    }

    #[test]
    fn a_node_bounds_its_outstanding_tickets_and_frees_expired_ones() {
        let full = Tickets::new(Duration::from_secs(30), 1);
        full.mint().expect("room for one");
        assert_eq!(full.mint().err(), Some(TooManyTickets(1)));
        // Expired at once: the bound frees itself.
        let instant = Tickets::new(Duration::ZERO, 1);
        instant.mint().expect("room for one");
        instant.mint().expect("the first one expired");
    }
}
