//! Access checks: every credential of every route, and every long
//! connection's token on each heartbeat, goes through [`Access`].

use std::sync::Arc;

use super::token::now_secs;
use super::{AuthError, Principal, Revocations, TokenError, Verifier};

/// Verifies tokens and checks them against the node's revocations.
pub struct Access {
    pub verifier: Verifier,
    pub revocations: Arc<Revocations>,
    /// Seconds a token is still accepted past its `exp`.
    pub leeway_secs: u64,
}

impl Access {
    /// Verifies a token (signature, claims, expiry) and checks that it is
    /// not revoked.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let principal = self.verifier.verify(token)?;
        self.admit(principal)
    }

    /// Checks that an already verified principal (a ticket's) still holds:
    /// its token has not expired and is not revoked.
    pub fn admit(&self, principal: Principal) -> Result<Principal, AuthError> {
        self.recheck(&principal)?;
        Ok(principal)
    }

    /// Whether a connection's principal still holds (the heartbeat check).
    pub fn recheck(&self, principal: &Principal) -> Result<(), TokenError> {
        if principal.expired(self.leeway_secs, now_secs()) {
            return Err(TokenError::Expired);
        }
        if self.revocations.is_revoked(principal) {
            return Err(TokenError::Revoked);
        }
        Ok(())
    }
}
