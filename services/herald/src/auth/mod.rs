//! Authentication and authorization: tokens, topic patterns, tickets,
//! revocations, where a request carries its credentials.

pub mod access;
pub mod origin;
pub mod pattern;
pub mod revocation;
pub mod tickets;
pub mod token;

use actix_web::HttpRequest;
use actix_web::http::StatusCode;

pub use access::Access;
pub use origin::{OriginPolicy, OriginRule};
pub use pattern::{Pattern, PatternSet};
pub use revocation::{Revocation, RevocationKind, Revocations, TokenId};
pub use tickets::{Tickets, TooManyTickets};
pub use token::{Claims, HeraldClaims, Minter, Principal, TokenError, Verifier, VerifierSettings};

/// Why a request was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Token(TokenError::Invalid(_)) => "unauthorized",
            AuthError::Token(TokenError::Expired) => "token_expired",
            AuthError::Token(TokenError::Revoked) => "revoked",
            AuthError::Forbidden(_) => "forbidden",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
