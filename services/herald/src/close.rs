//! Why a connection ends: the reasons, their machine-readable codes and
//! their messages. [`CODES`] is the one list of codes; the metrics take
//! their `reason` label set from it.

/// Why a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client stopped reading and its queue filled.
    SlowConsumer,
    /// The token expired.
    TokenExpired,
    /// The token was revoked.
    Revoked,
    /// No valid credentials (WebSocket: none in time, or a bad first `auth`).
    Unauthorized(String),
    /// A refreshed token allows none of the connection's topics.
    Forbidden,
    /// The node is going away.
    Draining,
    /// The client broke Herald's protocol (no answer to pings).
    Protocol(String),
    /// The client broke the WebSocket protocol (RFC 6455): the close code
    /// (1002, 1007) and why. Counted as `protocol_error`.
    Violation(u16, String),
    /// An inbound frame was over the limit.
    FrameTooLarge,
    /// The store could not be read.
    Unavailable,
    /// The client went away, or the session ended normally.
    Normal,
    /// The client closed its WebSocket with this code (or none): the close
    /// is answered with the same. Counted as `normal`.
    ClientClosed(Option<u16>),
    /// The node holds its maximum of connections (a WebSocket that
    /// authenticated in-band found no place). Counted as `unavailable`.
    Full,
}

/// Every code [`CloseReason::code`] gives, `normal` first.
pub const CODES: [&str; 10] = [
    "normal",
    "slow_consumer",
    "token_expired",
    "revoked",
    "unauthorized",
    "forbidden",
    "draining",
    "protocol_error",
    "frame_too_large",
    "unavailable",
];

impl CloseReason {
    /// The machine-readable code (SSE `event: error`, logs, metrics).
    pub fn code(&self) -> &'static str {
        CODES[self.index()]
    }

    /// The code's place in [`CODES`].
    pub fn index(&self) -> usize {
        match self {
            CloseReason::Normal | CloseReason::ClientClosed(_) => 0,
            CloseReason::SlowConsumer => 1,
            CloseReason::TokenExpired => 2,
            CloseReason::Revoked => 3,
            CloseReason::Unauthorized(_) => 4,
            CloseReason::Forbidden => 5,
            CloseReason::Draining => 6,
            CloseReason::Protocol(_) | CloseReason::Violation(..) => 7,
            CloseReason::FrameTooLarge => 8,
            CloseReason::Unavailable | CloseReason::Full => 9,
        }
    }

    /// Human text.
    pub fn message(&self) -> String {
        match self {
            CloseReason::SlowConsumer => {
                "the client fell behind; resume from your cursor to lose nothing".into()
            }
            CloseReason::TokenExpired => "the token has expired".into(),
            CloseReason::Revoked => "the token has been revoked".into(),
            CloseReason::Unauthorized(m)
            | CloseReason::Protocol(m)
            | CloseReason::Violation(_, m) => m.clone(),
            CloseReason::Forbidden => "the token allows none of this connection's topics".into(),
            CloseReason::Draining => "this node is going away; reconnect".into(),
            CloseReason::FrameTooLarge => "frame too large".into(),
            CloseReason::Unavailable => "the store is unavailable; reconnect later".into(),
            CloseReason::Normal => "bye".into(),
            CloseReason::ClientClosed(_) => String::new(),
            CloseReason::Full => {
                "this node holds its maximum of connections; retry on another node".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_code() {
        let all = [
            CloseReason::Normal,
            CloseReason::SlowConsumer,
            CloseReason::TokenExpired,
            CloseReason::Revoked,
            CloseReason::Unauthorized(String::new()),
            CloseReason::Forbidden,
            CloseReason::Draining,
            CloseReason::Protocol(String::new()),
            CloseReason::FrameTooLarge,
            CloseReason::Unavailable,
        ];
        let codes: Vec<&str> = all.iter().map(CloseReason::code).collect();
        assert_eq!(codes, CODES);
    }
}
