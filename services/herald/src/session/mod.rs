//! Connections. Each WebSocket and SSE connection is a [`Session`] actor
//! (see [`actor`]) that owns its subscriptions, cursor, token and bounded
//! outbound queue; the transport ([`ws`], [`sse`]) only decides how frames
//! look. Polling is a plain store read, or a short-lived waiter registered
//! with the hub ([`poll`]).
//!
//! - [`env`]: what every session reaches (store, hubs, access, connections, settings)
//! - [`connections`]: the node's open connections, told to close on drain and revocation
//! - [`actor`]: the session actor and the [`Transport`] trait
//! - [`subs`]: the sans-IO catch-up machine: from a cursor to live events
//! - [`outbound`]: the bounded queue between a session and its socket
//! - [`ws`], [`sse`], [`poll`]: the transports and the WebSocket protocol
//! - [`gate`]: admission of connections against the node's limit
//!
//! The HTTP routes that open these live in `crate::http`; nothing here
//! knows about them.

pub mod ack;
pub mod actor;
pub mod connections;
pub mod env;
pub mod gate;
pub mod outbound;
pub mod poll;
pub mod sse;
pub mod subs;
pub mod ws;

pub use crate::close::CloseReason;
pub use actor::{Close, Session, Transport};
pub use connections::Connections;
pub use env::{Env, SessionSettings};

/// The heads of freshly started topics as a cursor, and where each starts:
/// its position in `since` (at most its head: beyond it is a reset to the
/// head), else its head. What `subscribed` tells a client, so a live
/// subscription has a position before its first event.
pub fn starts(
    heads: &[(crate::topic::Topic, u64)],
    since: &crate::topic::Cursor,
) -> (crate::topic::Cursor, crate::topic::Cursor) {
    let mut head_cursor = crate::topic::Cursor::new();
    let mut start_cursor = crate::topic::Cursor::new();
    for (topic, head) in heads {
        head_cursor.set(topic.clone(), *head);
        start_cursor.set(
            topic.clone(),
            since.get(topic).map_or(*head, |s| s.min(*head)),
        );
    }
    (head_cursor, start_cursor)
}
