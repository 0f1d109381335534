//! Ticket metrics: `POST /v1/tickets` refused for a node's bounds (the
//! conventions of `telemetry::metrics`: plain atomics, read when `/metrics`
//! is scraped).

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::auth::TooManyTickets;

/// Refusals: `[the node's HERALD_MAX_TICKETS, a subject's HERALD_MAX_TICKETS_PER_SUBJECT]`.
static REFUSED: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
const REASONS: [&str; 2] = ["node", "subject"];

/// A ticket was refused for `why`.
pub fn refused(why: &TooManyTickets) {
    let i = match why {
        TooManyTickets::Node(_) => 0,
        TooManyTickets::Subject { .. } => 1,
    };
    REFUSED[i].fetch_add(1, Ordering::Relaxed);
}

/// Registers the ticket instruments on `meter`.
pub fn observe(meter: &Meter) {
    meter
        .u64_observable_counter("herald_tickets_refused")
        .with_description(
            "Tickets refused because the node held HERALD_MAX_TICKETS (node, 503) or the \
             caller's subject held HERALD_MAX_TICKETS_PER_SUBJECT (subject, 429)",
        )
        .with_callback(|o| {
            for (i, reason) in REASONS.iter().enumerate() {
                o.observe(
                    REFUSED[i].load(Ordering::Relaxed),
                    &[KeyValue::new("reason", *reason)],
                );
            }
        })
        .build();
}
