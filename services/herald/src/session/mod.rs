//! Connections: WebSocket and SSE sessions (actors), and polling.

pub mod outbound;
pub mod subs;
