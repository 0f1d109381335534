//! Push metrics: plain atomics read by observable instruments when
//! `/metrics` is scraped, and one histogram (the conventions of
//! `telemetry::metrics`). Listed in docs/OBSERVABILITY.md.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

/// The push platforms, as the `platform` label names them.
pub const PLATFORMS: [&str; 3] = ["webpush", "fcm", "apns"];

const fn zeros<const N: usize>() -> [AtomicU64; N] {
    [const { AtomicU64::new(0) }; N]
}

static DUE: AtomicU64 = AtomicU64::new(0);
static COLLAPSED: AtomicU64 = AtomicU64::new(0);
static CANCELLED: AtomicU64 = AtomicU64::new(0);
static SENT: [AtomicU64; 3] = zeros();
static FAILED: [AtomicU64; 3] = zeros();
static DEAD: [AtomicU64; 3] = zeros();
static PRUNED: [AtomicU64; 3] = zeros();

static DELAY: OnceLock<Histogram<f64>> = OnceLock::new();

/// Upper bounds of the commit-to-push histogram, in seconds: pushes wait
/// for their delay (30 s by default), so the scale is longer than delivery's.
const DELAY_BOUNDS_SECS: [f64; 14] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn platform(name: &str) -> usize {
    PLATFORMS.iter().position(|p| *p == name).unwrap_or(0)
}

/// A scheduling transaction made `due` new due pushes and folded events
/// into `collapsed` waiting ones.
pub fn scheduled(due: u64, collapsed: u64) {
    DUE.fetch_add(due, Ordering::Relaxed);
    COLLAPSED.fetch_add(collapsed, Ordering::Relaxed);
}

/// A due push was not sent: its events were acknowledged in time.
pub fn cancelled() {
    CANCELLED.fetch_add(1, Ordering::Relaxed);
}

/// A push was accepted by `platform`'s service, `since_commit_secs` after
/// the commit of the first event it stands for.
pub fn sent(platform_name: &str, since_commit_secs: f64) {
    SENT[platform(platform_name)].fetch_add(1, Ordering::Relaxed);
    if let Some(h) = DELAY.get() {
        h.record(
            since_commit_secs.max(0.0),
            &[KeyValue::new(
                "platform",
                PLATFORMS[platform(platform_name)],
            )],
        );
    }
}

/// A send to `platform` failed (to be retried, or given up).
pub fn failed(platform_name: &str) {
    FAILED[platform(platform_name)].fetch_add(1, Ordering::Relaxed);
}

/// A push to `platform` was given up (a dead letter).
pub fn dead_letter(platform_name: &str) {
    DEAD[platform(platform_name)].fetch_add(1, Ordering::Relaxed);
}

/// `platform`'s service said a device is gone; it was deleted.
pub fn pruned(platform_name: &str) {
    PRUNED[platform(platform_name)].fetch_add(1, Ordering::Relaxed);
}

/// Registers the push instruments on `meter`.
pub fn observe(meter: &Meter) {
    let counter = |name: &'static str, description: &'static str, cell: &'static AtomicU64| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(cell.load(Ordering::Relaxed), &[]))
            .build();
    };
    counter(
        "herald_push_due",
        "Due pushes written to the outbox (one per device and topic)",
        &DUE,
    );
    counter(
        "herald_push_collapsed",
        "Commits folded into a push already waiting for the same device and topic",
        &COLLAPSED,
    );
    counter(
        "herald_push_cancelled",
        "Due pushes not sent because their events were acknowledged in time",
        &CANCELLED,
    );
    let by_platform =
        |name: &'static str, description: &'static str, cells: &'static [AtomicU64; 3]| {
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| {
                    for (i, p) in PLATFORMS.iter().enumerate() {
                        o.observe(
                            cells[i].load(Ordering::Relaxed),
                            &[KeyValue::new("platform", *p)],
                        );
                    }
                })
                .build();
        };
    by_platform(
        "herald_push_sent",
        "Pushes accepted by a push service",
        &SENT,
    );
    by_platform(
        "herald_push_failed",
        "Sends that failed (a 429 or 5xx answer, a network error, a refusal)",
        &FAILED,
    );
    by_platform(
        "herald_push_dead_letters",
        "Pushes given up after HERALD_PUSH_MAX_ATTEMPTS sends, or refused for good",
        &DEAD,
    );
    by_platform(
        "herald_push_devices_pruned",
        "Devices deleted because their push service said they are gone",
        &PRUNED,
    );
    let _ = DELAY.set(
        meter
            .f64_histogram("herald_push_delay_seconds")
            .with_description(
                "Time from the commit of the first event a push stands for to the push service's acceptance",
            )
            .with_boundaries(DELAY_BOUNDS_SECS.to_vec())
            .build(),
    );
}
