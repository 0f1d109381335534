//! The in-process bus of a single node: publishing hands each event straight
//! to the node's hubs.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Bus, BusError};
use crate::event::Event;
use crate::hub::Hubs;

/// The single-node bus.
pub struct LocalBus {
    hubs: Arc<Hubs>,
}

impl LocalBus {
    /// A bus that delivers to `hubs`.
    pub fn new(hubs: Arc<Hubs>) -> LocalBus {
        LocalBus { hubs }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        for event in events {
            self.hubs.deliver(event.encode());
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        true
    }
}
