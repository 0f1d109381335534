//! The node's door: how many connections it holds, how many WebSockets
//! wait for their in-band `auth` frame, and whether it still takes new ones
//! (it stops when draining).
//!
//! A connection takes one of `HERALD_MAX_CONNECTIONS` places only once its
//! credentials are checked. A WebSocket that sends them in its first frame
//! waits in a separate, smaller room (`HERALD_MAX_UNAUTHENTICATED`, and the
//! auth timeout), so sockets that never authenticate cannot keep real
//! subscribers out.

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
    /// The node holds its maximum of WebSockets waiting for their `auth`
    /// frame.
    #[error(
        "this node holds its maximum of {0} WebSockets waiting for an auth frame; \
         authenticate in the upgrade request, or retry"
    )]
    TooManyWaiting(usize),
}

/// Counts connections (WebSocket, SSE, pending long polls) against a limit,
/// and unauthenticated WebSockets against another.
#[derive(Debug)]
pub struct Gate {
    open: AtomicUsize,
    max: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    draining: AtomicBool,
    drain_secs: u64,
}

/// One admitted connection, or one WebSocket waiting for its credentials;
/// dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    waiting: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.waiting {
            self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
            crate::telemetry::metrics::waiting_auth(false);
        } else {
            self.gate.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Admission {
    /// Whether this is a place in the waiting room, not a connection's.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// Moves a waiting WebSocket that authenticated to a connection's
    /// place: on refusal it keeps its waiting place (and closes).
    pub fn admit(&mut self) -> Result<(), Refused> {
        if !self.waiting {
            return Ok(());
        }
        let gate = &self.gate;
        gate.take(&gate.open, gate.max, Refused::Full(gate.max))?;
        gate.waiting.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::metrics::waiting_auth(false);
        self.waiting = false;
        Ok(())
    }
}

impl Gate {
    /// A gate for at most `max` connections and `max_waiting`
    /// unauthenticated WebSockets.
    pub fn new(max: usize, max_waiting: usize, drain_secs: u64) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
            waiting: AtomicUsize::new(0),
            max_waiting,
            draining: AtomicBool::new(false),
            drain_secs,
        })
    }

    /// Admits one connection whose credentials are checked, or says why not.
    pub fn enter(self: &Arc<Gate>) -> Result<Admission, Refused> {
        self.take(&self.open, self.max, Refused::Full(self.max))?;
        Ok(Admission {
            gate: self.clone(),
            waiting: false,
        })
    }

    /// Admits one WebSocket that will send its credentials in its first
    /// frame to the waiting room, or says why not.
    pub fn wait(self: &Arc<Gate>) -> Result<Admission, Refused> {
        self.take(
            &self.waiting,
            self.max_waiting,
            Refused::TooManyWaiting(self.max_waiting),
        )
        .inspect_err(|refused| {
            if let Refused::TooManyWaiting(_) = refused {
                crate::telemetry::metrics::waiting_auth_refused();
            }
        })?;
        crate::telemetry::metrics::waiting_auth(true);
        Ok(Admission {
            gate: self.clone(),
            waiting: true,
        })
    }

    fn take(&self, count: &AtomicUsize, max: usize, full: Refused) -> Result<(), Refused> {
        if self.is_draining() {
            return Err(Refused::Draining);
        }
        let before = count.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(full);
        }
        Ok(())
    }

    /// Connections open now (not counting WebSockets still waiting for
    /// their credentials).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a connection would find a place now (it may not, by the
    /// time it asks: [`Gate::enter`] decides).
    pub fn has_room(&self) -> bool {
        !self.is_draining() && self.open() < self.max
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_sockets_have_their_own_bound_and_take_a_place_only_once_admitted() {
        let gate = Gate::new(2, 3, 0);
        let waiting: Vec<Admission> = (0..3).map(|_| gate.wait().expect("room")).collect();
        assert_eq!(gate.wait().unwrap_err(), Refused::TooManyWaiting(3));
        assert_eq!(gate.open(), 0, "waiting sockets hold no connection place");
        let a = gate.enter().expect("room");
        let mut waiting = waiting.into_iter();
        let mut b = waiting.next().expect("three");
        b.admit().expect("one place left");
        assert!(!b.is_waiting());
        assert_eq!(gate.open(), 2);
        let mut c = waiting.next().expect("three");
        assert_eq!(c.admit().unwrap_err(), Refused::Full(2));
        assert!(c.is_waiting(), "a refused one keeps its waiting place");
        // Two wait (c and the third); one more fits.
        let d = gate.wait().expect("b left the waiting room");
        drop((a, b, c, d));
        drop(waiting);
        assert_eq!(gate.open(), 0);
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }
}
