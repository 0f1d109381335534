//! The bus: carries committed events to every node's hubs. In-process on one
//! node; NATS across a cluster.
//!
//! The bus is a fast path, never the truth: a node that sees a gap in a
//! topic's seqs repairs it from the store. It is built after the hubs it
//! delivers to and before the committer that publishes on it.

mod local;
mod nats;

use async_trait::async_trait;

pub use local::LocalBus;
pub use nats::NatsBus;

use crate::auth::Revocation;
use crate::event::Event;

/// Why a bus publish failed (the events are committed regardless).
#[derive(Debug, thiserror::Error)]
#[error("bus publish failed: {0}")]
pub struct BusError(pub String);

/// Carries committed events to every node with interested subscribers.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `"local"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// Sends committed events, in seq order per topic.
    async fn publish(&self, events: &[Event]) -> Result<(), BusError>;

    /// Whether the bus can currently carry events.
    fn healthy(&self) -> bool;

    /// Tells every other node about a revocation this node has stored, so
    /// that they close the connections it covers at once. A single node
    /// has no one to tell.
    async fn announce_revocation(&self, _revocation: &Revocation) -> Result<(), BusError> {
        Ok(())
    }
}

/// Receives the control messages other nodes send over the bus.
pub trait Control: Send + Sync + 'static {
    /// Another node stored `revocation`.
    fn revoked(&self, revocation: Revocation);
}
