//! Tickets: short-lived, single-use credentials for URLs (`POST /v1/tickets`),
//! kept in this node's memory. A ticket stands for the token it was minted
//! from and opens one connection on the node that checks it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;

use super::Principal;

/// Outstanding tickets of this node, at most `max` at a time.
pub struct Tickets {
    ttl: Duration,
    max: usize,
    open: Mutex<HashMap<String, (Principal, Instant)>>,
}

/// Why no ticket was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node holds its maximum of {0} unused tickets; retry shortly")]
pub struct TooManyTickets(pub usize);

impl Tickets {
    /// Tickets valid for `ttl`, at most `max` outstanding.
    pub fn new(ttl: Duration, max: usize) -> Tickets {
        Tickets {
            ttl,
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// How long a ticket can be used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket standing for `principal`. When the table is full, the
    /// expired tickets are swept first; if it is still full, none is issued.
    pub fn issue(&self, principal: Principal) -> Result<String, TooManyTickets> {
        let ticket = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut open = self.open.lock();
        if open.len() >= self.max {
            open.retain(|_, (_, expires_at)| *expires_at > now);
            if open.len() >= self.max {
                return Err(TooManyTickets(self.max));
            }
        }
        open.insert(ticket.clone(), (principal, now + self.ttl));
        Ok(ticket)
    }

    /// Takes `ticket`: its principal if it was issued here, unused and
    /// unexpired. A ticket can be taken once.
    pub fn redeem(&self, ticket: &str) -> Option<Principal> {
        let (principal, expires_at) = self.open.lock().remove(ticket)?;
        (expires_at > Instant::now()).then_some(principal)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::PatternSet;

    fn principal() -> Principal {
        Principal {
            sub: Arc::from("7"),
            exp: u64::MAX,
            iat: None,
            jti: None,
            subscribe: Arc::new(PatternSet::default()),
            publish: Arc::new(PatternSet::default()),
            admin: false,
        }
    }

    #[test]
    fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::new(Duration::from_secs(30), 10);
        let ticket = tickets.issue(principal()).expect("room for one");
        assert!(tickets.redeem(&ticket).is_some());
        assert!(tickets.redeem(&ticket).is_none());
        assert!(tickets.redeem("made-up").is_none());
    }

    #[test]
    fn a_full_table_sweeps_expired_tickets_then_refuses() {
        let tickets = Tickets::new(Duration::ZERO, 1);
        tickets.issue(principal()).expect("room for one");
        // The first one has expired (ttl zero), so it is swept.
        let second = tickets.issue(principal()).expect("expired swept");
        assert!(tickets.redeem(&second).is_none(), "expired at once");
        let full = Tickets::new(Duration::from_secs(30), 1);
        full.issue(principal()).expect("room for one");
        assert_eq!(full.issue(principal()), Err(TooManyTickets(1)));
    }
}
