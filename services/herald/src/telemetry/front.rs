//! Front door metrics: how streams arrive and what the HTTP server refuses
//! (the conventions of `telemetry::metrics`: plain atomics, read when
//! `/metrics` is scraped).

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// Why the front door answered a connection itself and closed it.
pub const REFUSALS: [&str; 4] = [
    "malformed",
    "head_too_large",
    "head_timeout",
    "body_timeout",
];

/// Streams handed to the stream threads: `[first request of its
/// connection, a later one]`.
static STREAMS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
static REFUSED: [AtomicU64; REFUSALS.len()] = [const { AtomicU64::new(0) }; REFUSALS.len()];
static LINGERED: AtomicU64 = AtomicU64::new(0);

/// A stream went to a stream thread; `later`: a request came before it on
/// its connection.
pub fn stream(later: bool) {
    STREAMS[usize::from(later)].fetch_add(1, Ordering::Relaxed);
}

/// The front door refused a request (`reason`: one of [`REFUSALS`]).
pub fn refused(reason: &str) {
    if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
        REFUSED[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection closed with part of a request body unread lingered.
pub fn lingered() {
    LINGERED.fetch_add(1, Ordering::Relaxed);
}

/// Registers the front door's instruments on `meter`.
pub fn observe(meter: &Meter) {
    meter
        .u64_observable_counter("herald_streams_accepted")
        .with_description(
            "WebSocket and SSE requests handed to the stream threads, by their place on their \
             connection (first request, or after others on a keep-alive connection)",
        )
        .with_callback(|o| {
            for (i, request) in ["first", "later"].iter().enumerate() {
                o.observe(
                    STREAMS[i].load(Ordering::Relaxed),
                    &[KeyValue::new("request", *request)],
                );
            }
        })
        .build();
    meter
        .u64_observable_counter("herald_http_refused")
        .with_description(
            "Connections the HTTP server answered itself and closed: a malformed or oversized \
             request head (400, 431), a head or body that did not arrive in time (408)",
        )
        .with_callback(|o| {
            for (i, reason) in REFUSALS.iter().enumerate() {
                o.observe(
                    REFUSED[i].load(Ordering::Relaxed),
                    &[KeyValue::new("reason", *reason)],
                );
            }
        })
        .build();
    meter
        .u64_observable_counter("herald_http_lingering_closes")
        .with_description(
            "Connections answered before their request body was read, which read and dropped \
             the rest for a bounded time before closing",
        )
        .with_callback(|o| o.observe(LINGERED.load(Ordering::Relaxed), &[]))
        .build();
}
