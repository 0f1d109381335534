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
