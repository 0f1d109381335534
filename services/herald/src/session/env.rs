//! What every session of the node reaches: the store, the hubs, the access
//! checks, the node's open connections and the session settings. Built
//! before the bus (which hands it the revocations other nodes announce).

use std::sync::Arc;
use std::time::Duration;

use super::Connections;
use crate::auth::{Access, Revocation};
use crate::bus::Control;
use crate::hub::Hubs;
use crate::store::Store;

/// Settings every session needs.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub heartbeat: Duration,
    pub queue_events: usize,
    pub queue_bytes: usize,
    pub max_topics: usize,
    pub max_frame_bytes: usize,
    pub leeway_secs: u64,
    /// How long a WebSocket may take to send its first `auth` frame.
    pub auth_timeout: Duration,
    /// `subscribe` and `unsubscribe` frames a WebSocket may send per second.
    pub max_subscription_ops_per_sec: u32,
}

/// The sessions' common ground.
pub struct Env {
    pub store: Arc<dyn Store>,
    pub hubs: Arc<Hubs>,
    pub access: Arc<Access>,
    pub connections: Arc<Connections>,
    pub settings: SessionSettings,
    /// This node's acknowledgments on their way to the store.
    pub acks: Arc<crate::ack::Acks>,
}

impl Env {
    /// Applies `revocation` on this node: remembers it and closes the
    /// connections it covers. Returns how many were told to close.
    pub fn apply_revocation(&self, revocation: Revocation) -> usize {
        self.access.revocations.add(revocation);
        self.connections.close_revoked(&self.access.revocations)
    }
}

impl Control for Env {
    fn revoked(&self, revocation: Revocation) {
        let kind = revocation.kind;
        let closed = self.apply_revocation(revocation);
        tracing::info!(%kind, closed, "revoked by another node");
    }
}
