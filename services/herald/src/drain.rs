//! Graceful drain: owns SIGTERM and SIGINT for a running server.
//!
//! On the first signal the node stops being ready (`/readyz` answers `503`
//! `draining`), refuses new connections and polls (`503` `draining` with
//! `Retry-After`), keeps accepting publishes, and tells every open connection
//! to reconnect (WebSocket `1012`, SSE `event: drain`, pending long polls
//! answered with their normal body), pending long polls first, in batches
//! spread evenly over the drain period so that the clients do not all come
//! back to the other nodes in the same instant. When every connection has
//! gone, or the period plus [`GRACE`] has passed, the server is stopped
//! (in-flight requests get [`STOP_TIMEOUT`], then whatever is open is cut) and [`serve`] returns, so the
//! process exits with status 0. A second signal during the drain exits at
//! once with status [`EXIT_SECOND_SIGNAL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::session::gate::Gate;
use crate::session::{Close, CloseReason, Connections};

/// How long past the drain period the node waits for its last connections.
pub const GRACE: Duration = Duration::from_secs(1);

/// How long stopping the server may take: in-flight requests finish, and
/// whatever is still open then (idle keep-alive connections) is cut.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The exit status when a second signal cuts the drain short (as for an
/// interrupted process: 128 + SIGINT).
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// How often a batch of connections is told, at most.
const TICK: Duration = Duration::from_millis(100);

/// Runs `server` until it stops by itself or a signal has drained it.
pub async fn serve(
    server: Server,
    gate: Arc<Gate>,
    connections: &Connections,
) -> std::io::Result<()> {
    let mut signals = Signals::new()?;
    let handle = server.handle();
    let mut server = std::pin::pin!(server);

    let name = tokio::select! {
        result = &mut server => return result,
        name = signals.next() => name,
    };
    let period = Duration::from_secs(gate.drain_secs());
    let started = Instant::now();
    let deadline = started + period + GRACE;
    gate.start_draining();
    tracing::info!(
        signal = name,
        drain_secs = period.as_secs(),
        open = connections.len(),
        "draining"
    );

    let told = tokio::select! {
        told = tell_all(connections, period, deadline) => told,
        name = signals.next() => second_signal(name),
        result = &mut server => {
            tracing::warn!("the server stopped while draining");
            return result;
        }
    };
    let left = connections.len();

    // The server's own shutdown timeout (`STOP_TIMEOUT`) cuts what is still
    // in flight, idle keep-alive connections included; this bound is a
    // safety net over it.
    let stopped = tokio::select! {
        stopped = tokio::time::timeout(STOP_TIMEOUT + GRACE, handle.stop(true)) => stopped.is_ok(),
        name = signals.next() => second_signal(name),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if left == 0 {
        tracing::info!(
            told,
            elapsed_ms,
            server_stopped = stopped,
            "drained within the deadline"
        );
    } else {
        tracing::warn!(
            told,
            left,
            elapsed_ms,
            server_stopped = stopped,
            "the drain deadline did not hold; connections left were cut"
        );
    }
    Ok(())
}

/// Tells every open connection to go, in even batches over `period`, then
/// waits until all are gone or `deadline`. Returns how many were told.
async fn tell_all(connections: &Connections, period: Duration, deadline: Instant) -> usize {
    let start = Instant::now();
    let open = connections.drain_order();
    let mut told = HashSet::with_capacity(open.len());
    // One batch per tick over the period (at least one), each of an equal share.
    let batches = (period.as_millis() / TICK.as_millis()).max(1) as usize;
    let batches = batches.min(open.len().max(1));
    let per_batch = open.len().div_ceil(batches).max(1);
    let interval = period / batches as u32;
    for (i, batch) in open.chunks(per_batch).enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        for (id, close) in batch {
            close.do_send(Close(CloseReason::Draining));
            told.insert(*id);
        }
    }
    // Connections admitted just before the gate closed may have registered
    // after the list was taken: tell them too, then wait for all to go.
    loop {
        for (id, close) in connections.drain_order() {
            if told.insert(id) {
                close.do_send(Close(CloseReason::Draining));
            }
        }
        if connections.is_empty() || Instant::now() >= deadline {
            return told.len();
        }
        tokio::time::sleep(TICK.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

fn second_signal(name: &'static str) -> ! {
    tracing::warn!(
        signal = name,
        status = EXIT_SECOND_SIGNAL,
        "second signal while draining; exiting at once"
    );
    std::process::exit(EXIT_SECOND_SIGNAL)
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
