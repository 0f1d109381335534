//! The in-process bus of a single node: publishing hands each event straight
//! to the node's sink.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Bus, BusError, Sink};
use crate::event::Event;

/// The single-node bus.
pub struct LocalBus {
    sink: Arc<dyn Sink>,
}

impl LocalBus {
    /// A bus that delivers to `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> LocalBus {
        LocalBus { sink }
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        for event in events {
            self.sink.deliver(event.encode());
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        true
    }
}
