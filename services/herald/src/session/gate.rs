//! The node's door: how many connections it holds, and whether it still
//! takes new ones (it stops when draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Why the gate did not admit a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node is draining: connect to another node.
    #[error("this node is draining; retry on another node")]
    Draining,
    /// The node holds its maximum of connections.
    #[error("this node holds its maximum of {0} connections; retry on another node")]
    Full(usize),
}

/// Counts connections (WebSocket, SSE, pending long polls) against a limit.
#[derive(Debug)]
pub struct Gate {
    open: AtomicUsize,
    max: usize,
    draining: AtomicBool,
    drain_secs: u64,
}

/// One admitted connection; leaving frees its place.
#[derive(Debug)]
pub struct Admission(Arc<Gate>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// A gate for at most `max` connections.
    pub fn new(max: usize, drain_secs: u64) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
            draining: AtomicBool::new(false),
            drain_secs,
        })
    }

    /// Admits one connection, or says why not.
    pub fn enter(self: &Arc<Gate>) -> Result<Admission, Refused> {
        if self.is_draining() {
            return Err(Refused::Draining);
        }
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full(self.max));
        }
        Ok(Admission(self.clone()))
    }

    /// Stops admitting connections.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The drain period, in seconds.
    pub fn drain_secs(&self) -> u64 {
        self.drain_secs
    }
}
