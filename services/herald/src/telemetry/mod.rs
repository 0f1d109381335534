//! Telemetry: logs, traces and metrics.
//!
//! - **Logs** ([`init`]): JSON lines when standard error is not a terminal,
//!   human text when it is (or as `HERALD_LOG_FORMAT` says), filtered by
//!   `RUST_LOG` (default `info`). Never a token or an event body at `info`.
//! - **Traces** ([`trace`]): `tracing` spans, exported over OTLP through
//!   `tracing-opentelemetry` when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; nothing is exported
//!   otherwise. The W3C `traceparent` of a publish travels with its events
//!   over the bus, so a delivery on another node joins the publish's trace.
//! - **Metrics** ([`metrics`]): OpenTelemetry instruments read by the
//!   Prometheus exporter behind `GET /metrics`.
//! - **Following one topic**: with `HERALD_LOG_TOPIC`, every stage of every
//!   event of that topic (committed, sent on the bus, received, handed to
//!   the hubs, delivered to a connection) is logged at `debug` under the
//!   target `herald::follow`, which is switched on by the setting itself.

pub mod acks;
pub mod front;
pub mod metrics;
pub mod push;
pub mod tickets;
pub mod trace;

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::topic::Topic;

/// The log target of per-event lines for the logged topic.
pub const TOPIC_LOG_TARGET: &str = "herald::follow";

/// The topic whose events are logged stage by stage, if any.
static LOGGED_TOPIC: OnceLock<Topic> = OnceLock::new();

/// What must be flushed before the process exits.
#[must_use = "flush telemetry at exit with `Telemetry::shutdown`"]
pub struct Telemetry {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it
    /// outside any async runtime (the OTLP/HTTP client blocks).
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
    }
}

/// Installs the global subscriber (logs, and spans to OTLP when configured),
/// the W3C trace-context propagator and the metrics pipeline. `log_topic` is
/// the topic whose events are logged stage by stage. Safe to call more than
/// once: later calls install nothing and export nothing.
pub fn init(format: LogFormat, log_topic: Option<Topic>) -> Telemetry {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if let Some(topic) = log_topic {
        let _ = LOGGED_TOPIC.set(topic);
        if let Ok(directive) = format!("{TOPIC_LOG_TARGET}=debug").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (tracer, otel_error) = match trace::otlp_provider() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        // With spans exported, a line written inside a span carries that
        // span's fields (`span`), its `trace_id` among them: logs and
        // traces join on it.
        fmt.json()
            .flatten_event(true)
            .with_current_span(tracer.is_some())
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    metrics::install();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Spans are exported whatever `RUST_LOG` says of logs: Herald's own, at
    // `info` and above.
    let otel = tracer.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("herald", tracing::Level::INFO),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP span export is configured but could not start; no spans are exported");
    }
    if !installed {
        // Another subscriber was there first: nothing would reach this one.
        if let Some(provider) = tracer {
            let _ = provider.shutdown();
        }
        return Telemetry { tracer: None };
    }
    if tracer.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    Telemetry { tracer }
}

/// Whether `topic`'s events are logged stage by stage (`HERALD_LOG_TOPIC`):
/// one load and, only while a topic is logged, one comparison.
pub fn logs_topic(topic: &Topic) -> bool {
    LOGGED_TOPIC.get().is_some_and(|t| t == topic)
}

/// This node hands `event` to its connections: records the time since its
/// commit, logs it if its topic is logged, and returns the `deliver` span
/// (a child of the current span) to enter around the hand-over.
pub fn handing_over(event: &crate::event::Encoded) -> tracing::Span {
    metrics::handing_over(event);
    if logs_topic(&event.topic) {
        tracing::debug!(
            target: TOPIC_LOG_TARGET,
            topic = event.topic.as_str(),
            seq = event.seq,
            lag_ms = crate::event::now_ms() - event.time_ms,
            "handing the event to this node's connections"
        );
    }
    trace::deliver_span(event)
}

/// `event` was queued for connection `id`: counts it, and logs it if its
/// topic is logged. Called once per event per connection: cheap.
#[inline]
pub fn delivered(transport: &'static str, id: u64, event: &crate::event::Encoded) {
    metrics::delivered(transport, 1);
    if logs_topic(&event.topic) {
        tracing::debug!(
            target: TOPIC_LOG_TARGET,
            topic = event.topic.as_str(),
            seq = event.seq,
            connection = id,
            transport,
            "queued for a connection"
        );
    }
}

/// `event` arrived from another node over NATS, with `headers`: counts it,
/// logs it if its topic is logged, and returns the `bus.receive` span
/// (joined to the publisher's trace) to hand it over in.
pub fn received(
    event: &crate::event::Encoded,
    headers: Option<&async_nats::HeaderMap>,
) -> tracing::Span {
    metrics::bus_received();
    if logs_topic(&event.topic) {
        tracing::debug!(
            target: TOPIC_LOG_TARGET,
            topic = event.topic.as_str(),
            seq = event.seq,
            "received from the bus"
        );
    }
    trace::receive_span(headers)
}
