//! Metrics: OpenTelemetry instruments, exposed at `GET /metrics` in the
//! Prometheus text format through `opentelemetry-prometheus`.
//!
//! The hot paths only touch plain atomics: a delivery to a connection adds
//! one to a per-thread shard of a counter (no lock, no allocation, no shared
//! cache line between worker threads); the exporter reads them through
//! observable instruments when `/metrics` is scraped. Histograms are
//! recorded at most once per request or once per event per node.
//!
//! Every metric is listed, with its labels, in `docs/OBSERVABILITY.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};

use crate::event::Encoded;

/// The transports, as the `transport` label names them.
pub const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];

/// Why connections close, as the `reason` label names them.
pub const REASONS: [&str; crate::close::CODES.len()] = crate::close::CODES;

/// Refused credentials, as the `code` label names them.
pub const AUTH_CODES: [&str; 5] = [
    "unauthorized",
    "token_expired",
    "revoked",
    "forbidden",
    "other",
];

/// Why a node re-read topics from the store because the bus may have lost
/// events, as the `cause` label names them.
pub const REPAIR_CAUSES: [&str; 4] = ["reconnect", "missed", "peer_request", "head_check"];

/// Upper bounds of the latency histograms, in seconds.
const LATENCY_BOUNDS_SECS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

const SHARDS: usize = 16;

/// One cache line per shard, so threads do not share one.
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter split into per-thread shards: adding is an uncontended atomic
/// add, reading sums the shards.
struct Sharded([Padded; SHARDS]);

impl Sharded {
    const fn new() -> Sharded {
        Sharded([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

const fn zeros<const N: usize>() -> [AtomicU64; N] {
    [const { AtomicU64::new(0) }; N]
}

/// Every counter and gauge of the node, as plain atomics.
struct Counts {
    open: [AtomicI64; 3],
    connects: [AtomicU64; 3],
    disconnects: [[AtomicU64; REASONS.len()]; 3],
    delivered: [Sharded; 3],
    replayed: [AtomicU64; 3],
    resets: [AtomicU64; 3],
    slow_consumers: [AtomicU64; 3],
    auth_failures: [AtomicU64; AUTH_CODES.len()],
    published: AtomicU64,
    duplicates: AtomicU64,
    bus_received: AtomicU64,
    bus_publish_failures: AtomicU64,
    bus_repairs: [AtomicU64; REPAIR_CAUSES.len()],
    bus_topics_followed: AtomicU64,
    bus_slow_consumer_events: AtomicU64,
    store_commit_failures: AtomicU64,
    hub_overflows: AtomicU64,
    waiting_auth: AtomicU64,
    waiting_auth_refused: AtomicU64,
    publishes_paced: AtomicU64,
    publish_paced_ms: AtomicU64,
    queue_high_water_frames: AtomicU64,
    commit_queue_high_water: AtomicU64,
    bus_up: AtomicU64,
    store_up: AtomicU64,
    store_ping_micros: AtomicU64,
}

static COUNTS: Counts = Counts {
    open: [const { AtomicI64::new(0) }; 3],
    connects: zeros(),
    disconnects: [const { zeros() }; 3],
    delivered: [const { Sharded::new() }; 3],
    replayed: zeros(),
    resets: zeros(),
    slow_consumers: zeros(),
    auth_failures: zeros(),
    published: AtomicU64::new(0),
    duplicates: AtomicU64::new(0),
    bus_received: AtomicU64::new(0),
    bus_publish_failures: AtomicU64::new(0),
    bus_repairs: zeros(),
    bus_topics_followed: AtomicU64::new(0),
    bus_slow_consumer_events: AtomicU64::new(0),
    store_commit_failures: AtomicU64::new(0),
    hub_overflows: AtomicU64::new(0),
    waiting_auth: AtomicU64::new(0),
    waiting_auth_refused: AtomicU64::new(0),
    publishes_paced: AtomicU64::new(0),
    publish_paced_ms: AtomicU64::new(0),
    queue_high_water_frames: AtomicU64::new(0),
    commit_queue_high_water: AtomicU64::new(0),
    bus_up: AtomicU64::new(0),
    store_up: AtomicU64::new(0),
    store_ping_micros: AtomicU64::new(0),
};

/// The histograms, once the pipeline is installed.
struct Histograms {
    publish: Histogram<f64>,
    delivery_lag: Histogram<f64>,
    store_commit: Histogram<f64>,
    bus_publish: Histogram<f64>,
}

struct Pipeline {
    registry: prometheus::Registry,
    histograms: Histograms,
    // Kept alive: it owns the instruments' callbacks.
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// The index of a transport name (`Transport::NAME`); constant-folded at
/// every call site, which passes a constant.
#[inline]
fn transport(name: &str) -> usize {
    match name {
        "ws" => 0,
        "sse" => 1,
        _ => 2,
    }
}

/// Installs the metrics pipeline (once; later calls do nothing).
pub fn install() {
    PIPELINE.get_or_init(|| {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build();
        let mut provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder();
        match exporter {
            Ok(exporter) => provider = provider.with_reader(exporter),
            Err(e) => tracing::error!(error = %e, "the Prometheus exporter did not start; /metrics stays empty"),
        }
        let provider = provider.build();
        let meter = provider.meter("herald");
        observe(&meter);
        super::acks::observe(&meter);
        super::front::observe(&meter);
        super::tickets::observe(&meter);
        super::push::observe(&meter);
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(description)
                .with_boundaries(LATENCY_BOUNDS_SECS.to_vec())
                .build()
        };
        let histograms = Histograms {
            publish: histogram(
                "herald_publish_duration_seconds",
                "Time to answer a publish request, from its body read to its answer",
            ),
            delivery_lag: histogram(
                "herald_delivery_lag_seconds",
                "Time from an event's commit (its time) to this node handing it to its connections",
            ),
            store_commit: histogram(
                "herald_store_commit_duration_seconds",
                "Time of one group-commit transaction",
            ),
            bus_publish: histogram(
                "herald_bus_publish_duration_seconds",
                "Time to hand one request's committed events to the bus",
            ),
        };
        Pipeline {
            registry,
            histograms,
            _provider: provider,
        }
    });
}

/// Registers the observable instruments that read [`COUNTS`].
fn observe(meter: &Meter) {
    let per_transport = |name: &'static str, description: &'static str, read: fn(usize) -> u64| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                for (i, t) in TRANSPORTS.iter().enumerate() {
                    o.observe(read(i), &[KeyValue::new("transport", *t)]);
                }
            })
            .build();
    };
    let single = |name: &'static str, description: &'static str, read: fn() -> u64| {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    };
    let gauge = |name: &'static str, description: &'static str, read: fn() -> u64| {
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    };

    meter
        .i64_observable_gauge("herald_connections_open")
        .with_description("Open WebSocket and SSE connections and pending long polls")
        .with_callback(|o| {
            for (i, t) in TRANSPORTS.iter().enumerate() {
                o.observe(
                    COUNTS.open[i].load(Ordering::Relaxed).max(0),
                    &[KeyValue::new("transport", *t)],
                );
            }
        })
        .build();
    per_transport(
        "herald_connects",
        "Connections opened (long polls: polls that waited)",
        |i| COUNTS.connects[i].load(Ordering::Relaxed),
    );
    meter
        .u64_observable_counter("herald_disconnects")
        .with_description("Connections closed, by reason (the close code)")
        .with_callback(|o| {
            for (i, t) in TRANSPORTS.iter().enumerate().take(2) {
                for (j, r) in REASONS.iter().enumerate() {
                    o.observe(
                        COUNTS.disconnects[i][j].load(Ordering::Relaxed),
                        &[KeyValue::new("transport", *t), KeyValue::new("reason", *r)],
                    );
                }
            }
        })
        .build();
    per_transport(
        "herald_events_delivered",
        "Events sent to connections, live and replayed (poll: events answered)",
        |i| COUNTS.delivered[i].sum(),
    );
    per_transport(
        "herald_events_replayed",
        "Events sent to connections from the store (resume, gap repair)",
        |i| COUNTS.replayed[i].load(Ordering::Relaxed),
    );
    per_transport(
        "herald_resets_sent",
        "Resets sent: events after a cursor were no longer retained",
        |i| COUNTS.resets[i].load(Ordering::Relaxed),
    );
    per_transport(
        "herald_slow_consumer_closes",
        "Connections closed because their outbound queue filled",
        |i| COUNTS.slow_consumers[i].load(Ordering::Relaxed),
    );
    meter
        .u64_observable_counter("herald_auth_failures")
        .with_description("Refused credentials, by problem code")
        .with_callback(|o| {
            for (i, c) in AUTH_CODES.iter().enumerate() {
                o.observe(
                    COUNTS.auth_failures[i].load(Ordering::Relaxed),
                    &[KeyValue::new("code", *c)],
                );
            }
        })
        .build();
    single(
        "herald_events_published",
        "New events committed by this node",
        || COUNTS.published.load(Ordering::Relaxed),
    );
    single(
        "herald_events_duplicate",
        "Published events answered as duplicates of an earlier id",
        || COUNTS.duplicates.load(Ordering::Relaxed),
    );
    single(
        "herald_bus_received",
        "Events received from other nodes over the bus",
        || COUNTS.bus_received.load(Ordering::Relaxed),
    );
    single(
        "herald_bus_publish_failures",
        "Bus publishes that failed after commit (repaired from the store)",
        || COUNTS.bus_publish_failures.load(Ordering::Relaxed),
    );
    meter
        .u64_observable_counter("herald_bus_repairs")
        .with_description(
            "Re-reads from the store because the bus may have lost events (head_check: topics)",
        )
        .with_callback(|o| {
            for (i, c) in REPAIR_CAUSES.iter().enumerate() {
                o.observe(
                    COUNTS.bus_repairs[i].load(Ordering::Relaxed),
                    &[KeyValue::new("cause", *c)],
                );
            }
        })
        .build();
    single(
        "herald_bus_slow_consumer_events",
        "Times NATS dropped messages for this node because it read too slowly (repaired from the store)",
        || COUNTS.bus_slow_consumer_events.load(Ordering::Relaxed),
    );
    gauge(
        "herald_bus_topics_followed",
        "Topics this node receives from the bus (those with local subscribers)",
        || COUNTS.bus_topics_followed.load(Ordering::Relaxed),
    );
    single(
        "herald_store_commit_failures",
        "Group-commit transactions that failed",
        || COUNTS.store_commit_failures.load(Ordering::Relaxed),
    );
    gauge(
        "herald_ws_waiting_auth",
        "WebSockets waiting for their auth frame (bounded by HERALD_MAX_UNAUTHENTICATED)",
        || COUNTS.waiting_auth.load(Ordering::Relaxed),
    );
    single(
        "herald_ws_waiting_auth_refused",
        "WebSocket upgrades without credentials refused because HERALD_MAX_UNAUTHENTICATED were waiting",
        || COUNTS.waiting_auth_refused.load(Ordering::Relaxed),
    );
    single(
        "herald_hub_overflows",
        "Events a worker's hub could not take (its connections resync from the store)",
        || COUNTS.hub_overflows.load(Ordering::Relaxed),
    );
    single(
        "herald_publishes_paced",
        "Publishes that waited for fan-out to catch up (it lagged over 50 ms) before their commit",
        || COUNTS.publishes_paced.load(Ordering::Relaxed),
    );
    single(
        "herald_publish_paced_milliseconds",
        "Milliseconds publishes waited in all for fan-out to catch up",
        || COUNTS.publish_paced_ms.load(Ordering::Relaxed),
    );
    gauge(
        "herald_queue_high_water_frames",
        "Most frames any connection's outbound queue has held at once since start",
        || COUNTS.queue_high_water_frames.load(Ordering::Relaxed),
    );
    gauge(
        "herald_commit_queue_high_water_requests",
        "Most publish requests waiting for one group-commit writer at once since start",
        || COUNTS.commit_queue_high_water.load(Ordering::Relaxed),
    );
    gauge(
        "herald_bus_up",
        "1 when the bus can carry events, as of the last scrape",
        || COUNTS.bus_up.load(Ordering::Relaxed),
    );
    gauge(
        "herald_store_up",
        "1 when the store answered a ping, as of the last scrape",
        || COUNTS.store_up.load(Ordering::Relaxed),
    );
    meter
        .f64_observable_gauge("herald_store_ping_seconds")
        .with_description("How long the store took to answer a ping at the last scrape")
        .with_callback(|o| {
            o.observe(
                COUNTS.store_ping_micros.load(Ordering::Relaxed) as f64 / 1e6,
                &[],
            )
        })
        .build();
}

/// The metrics in the Prometheus text format.
pub fn render() -> Result<String, String> {
    use prometheus::Encoder as _;
    let Some(pipeline) = PIPELINE.get() else {
        return Ok(String::new());
    };
    let families = pipeline.registry.gather();
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families, &mut text)
        .map_err(|e| e.to_string())?;
    String::from_utf8(text).map_err(|e| e.to_string())
}

fn histograms() -> Option<&'static Histograms> {
    PIPELINE.get().map(|p| &p.histograms)
}

/// A connection (`transport`: `Transport::NAME`, or `"poll"` for a long
/// poll that waits) opened.
pub fn opened(transport_name: &'static str) {
    let i = transport(transport_name);
    COUNTS.open[i].fetch_add(1, Ordering::Relaxed);
    COUNTS.connects[i].fetch_add(1, Ordering::Relaxed);
}

/// A connection closed with the reason code `reason` (`CloseReason::code`).
pub fn closed(transport_name: &'static str, reason: &str) {
    let i = transport(transport_name);
    COUNTS.open[i].fetch_sub(1, Ordering::Relaxed);
    if i < 2 {
        let j = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        COUNTS.disconnects[i][j].fetch_add(1, Ordering::Relaxed);
        match reason {
            "slow_consumer" => {
                COUNTS.slow_consumers[i].fetch_add(1, Ordering::Relaxed);
            }
            // A WebSocket refused in its first frame (or given none in time).
            "unauthorized" => auth_failure("unauthorized"),
            _ => {}
        }
    }
}

/// `n` events sent to a connection.
#[inline]
pub fn delivered(transport_name: &'static str, n: u64) {
    COUNTS.delivered[transport(transport_name)].add(n);
}

/// `n` of the events sent to a connection came from the store.
pub fn replayed(transport_name: &'static str, n: u64) {
    COUNTS.replayed[transport(transport_name)].fetch_add(n, Ordering::Relaxed);
}

/// `n` resets were sent.
pub fn resets_sent(transport_name: &'static str, n: u64) {
    COUNTS.resets[transport(transport_name)].fetch_add(n, Ordering::Relaxed);
}

/// A pending long poll, counted open until dropped.
pub struct PendingPoll(());

impl PendingPoll {
    /// Counts a long poll that waits.
    pub fn start() -> PendingPoll {
        opened("poll");
        PendingPoll(())
    }
}

impl Drop for PendingPoll {
    fn drop(&mut self) {
        closed("poll", "normal");
    }
}

/// Credentials were refused with problem code `code`.
pub fn auth_failure(code: &str) {
    let i = AUTH_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(AUTH_CODES.len() - 1);
    COUNTS.auth_failures[i].fetch_add(1, Ordering::Relaxed);
}

/// A publish request was answered after `elapsed`.
pub fn publish_answered(elapsed: Duration) {
    if let Some(h) = histograms() {
        h.publish.record(elapsed.as_secs_f64(), &[]);
    }
}

/// A group commit finished after `elapsed`: `fresh` new events and
/// `duplicates` repeated ids, or a failure.
pub fn committed(elapsed: Duration, outcome: Result<(u64, u64), ()>) {
    match outcome {
        Ok((fresh, duplicates)) => {
            COUNTS.published.fetch_add(fresh, Ordering::Relaxed);
            COUNTS.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        }
        Err(()) => {
            COUNTS.store_commit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(h) = histograms() {
        h.store_commit.record(elapsed.as_secs_f64(), &[]);
    }
}

/// One request's events were handed to the bus after `elapsed`.
pub fn bus_published(elapsed: Duration, ok: bool) {
    if !ok {
        COUNTS.bus_publish_failures.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(h) = histograms() {
        h.bus_publish.record(elapsed.as_secs_f64(), &[]);
    }
}

/// The node re-read `n` connections' topics (`head_check`: `n` topics)
/// from the store for `cause`, one of [`REPAIR_CAUSES`].
pub fn bus_repair(cause: &str, n: u64) {
    let i = REPAIR_CAUSES.iter().position(|c| *c == cause).unwrap_or(0);
    COUNTS.bus_repairs[i].fetch_add(n, Ordering::Relaxed);
}

/// NATS reported dropping messages for this node (a slow consumer).
pub fn bus_slow_consumer() {
    COUNTS
        .bus_slow_consumer_events
        .fetch_add(1, Ordering::Relaxed);
}

/// The node now receives `n` topics from the bus.
pub fn topics_followed(n: usize) {
    COUNTS
        .bus_topics_followed
        .store(n as u64, Ordering::Relaxed);
}

/// An event arrived from another node.
pub fn bus_received() {
    COUNTS.bus_received.fetch_add(1, Ordering::Relaxed);
}

/// This node hands `event` to its connections now: records the time since
/// its commit.
pub fn handing_over(event: &Encoded) {
    let lag_ms = (crate::event::now_ms() - event.time_ms).max(0);
    if let Some(h) = histograms() {
        h.delivery_lag.record(lag_ms as f64 / 1e3, &[]);
    }
}

/// A worker's hub could not take an event.
/// A publish waited `waited` for fan-out to catch up before it was committed.
pub fn publish_paced(waited: Duration) {
    COUNTS.publishes_paced.fetch_add(1, Ordering::Relaxed);
    COUNTS
        .publish_paced_ms
        .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
}

pub fn hub_overflow() {
    COUNTS.hub_overflows.fetch_add(1, Ordering::Relaxed);
}

/// A WebSocket started (`true`) or stopped (`false`) waiting for its auth
/// frame.
pub fn waiting_auth(started: bool) {
    if started {
        COUNTS.waiting_auth.fetch_add(1, Ordering::Relaxed);
    } else {
        COUNTS.waiting_auth.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upgrade without credentials found the waiting room full.
pub fn waiting_auth_refused() {
    COUNTS.waiting_auth_refused.fetch_add(1, Ordering::Relaxed);
}

/// A connection's outbound queue has held `frames` at once.
pub fn queue_depth(frames: usize) {
    let frames = frames as u64;
    if COUNTS.queue_high_water_frames.load(Ordering::Relaxed) < frames {
        COUNTS
            .queue_high_water_frames
            .fetch_max(frames, Ordering::Relaxed);
    }
}

/// `waiting` publish requests were queued for one group-commit writer.
pub fn commit_queue_depth(waiting: usize) {
    let waiting = waiting as u64;
    if COUNTS.commit_queue_high_water.load(Ordering::Relaxed) < waiting {
        COUNTS
            .commit_queue_high_water
            .fetch_max(waiting, Ordering::Relaxed);
    }
}

/// The health of the bus and the store, as found by the scrape that is
/// about to render.
pub fn health(bus_up: bool, store_ping: Option<Duration>) {
    COUNTS.bus_up.store(bus_up as u64, Ordering::Relaxed);
    COUNTS
        .store_up
        .store(store_ping.is_some() as u64, Ordering::Relaxed);
    if let Some(ping) = store_ping {
        COUNTS
            .store_ping_micros
            .store(ping.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What `GET /v1/admin/stats` tells of this node's connections and queues.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Open connections per transport (`poll`: pending long polls).
    pub connections: std::collections::BTreeMap<&'static str, i64>,
    /// Most frames any connection's outbound queue has held at once.
    pub queue_high_water_frames: u64,
    /// Most publish requests waiting for one group-commit writer at once.
    pub commit_queue_high_water_requests: u64,
}

/// This node's connections and queue high-water marks now.
pub fn snapshot() -> Snapshot {
    Snapshot {
        connections: TRANSPORTS
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, COUNTS.open[i].load(Ordering::Relaxed).max(0)))
            .collect(),
        queue_high_water_frames: COUNTS.queue_high_water_frames.load(Ordering::Relaxed),
        commit_queue_high_water_requests: COUNTS.commit_queue_high_water.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_render_as_prometheus_text() {
        install();
        opened("ws");
        delivered("ws", 3);
        closed("ws", "slow_consumer");
        auth_failure("token_expired");
        publish_answered(Duration::from_millis(3));
        let text = render().expect("renders");
        assert!(
            text.contains(r#"herald_disconnects_total{reason="slow_consumer",transport="ws"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_slow_consumer_closes_total{transport="ws"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_auth_failures_total{code="token_expired"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_duration_seconds_bucket"),
            "{text}"
        );
        assert!(COUNTS.delivered[0].sum() >= 3);
    }
}
