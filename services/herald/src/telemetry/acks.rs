//! Acknowledgment metrics: plain atomics, read by observable instruments
//! when `/metrics` is scraped (the conventions of `telemetry::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::Meter;

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static COALESCED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static PENDING: AtomicU64 = AtomicU64::new(0);
static LAG: AtomicU64 = AtomicU64::new(0);

/// `n` acknowledgments (topic entries) were taken into the pending set,
/// `coalesced` of them into a pair already pending; `pending` pairs are
/// held now.
pub fn received(n: u64, coalesced: u64, pending: usize) {
    RECEIVED.fetch_add(n, Ordering::Relaxed);
    COALESCED.fetch_add(coalesced, Ordering::Relaxed);
    PENDING.store(pending as u64, Ordering::Relaxed);
}

/// `n` acknowledgments were refused because the pending set was full.
pub fn refused(n: u64) {
    REFUSED.fetch_add(n, Ordering::Relaxed);
}

/// `n` rows were written to the store.
pub fn written(n: u64) {
    WRITTEN.fetch_add(n, Ordering::Relaxed);
}

/// `pending` pairs are held now.
pub fn pending(pending: usize) {
    PENDING.store(pending as u64, Ordering::Relaxed);
}

/// The acknowledgments of the flush that just ran were at most `events`
/// behind the head known when they arrived.
pub fn lag(events: u64) {
    LAG.store(events, Ordering::Relaxed);
}

/// Registers the acknowledgment instruments on `meter`.
pub fn observe(meter: &Meter) {
    let counter = |name: &'static str, description: &'static str, cell: &'static AtomicU64| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(cell.load(Ordering::Relaxed), &[]))
            .build();
    };
    counter(
        "herald_acks_received",
        "Acknowledged topic positions taken into this node's pending set",
        &RECEIVED,
    );
    counter(
        "herald_acks_coalesced",
        "Acknowledgments folded into a position already pending (no store write of their own)",
        &COALESCED,
    );
    counter(
        "herald_acks_written",
        "Acknowledged positions written to the store",
        &WRITTEN,
    );
    counter(
        "herald_acks_refused",
        "Acknowledgments refused because the pending set was full (HERALD_ACK_MAX_PENDING)",
        &REFUSED,
    );
    let gauge = |name: &'static str, description: &'static str, cell: &'static AtomicU64| {
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| o.observe(cell.load(Ordering::Relaxed), &[]))
            .build();
    };
    gauge(
        "herald_acks_pending",
        "Subscriber and topic pairs waiting to be written to the store",
        &PENDING,
    );
    gauge(
        "herald_ack_lag_events",
        "At the last flush: the most events an acknowledgment was behind its topic's head",
        &LAG,
    );
}
