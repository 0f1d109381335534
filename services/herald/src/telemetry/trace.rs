//! Tracing: the OTLP exporter, and the W3C trace context on HTTP requests
//! and bus messages.
//!
//! Spans of a publish: `publish` (the request; its parent is the request's
//! `traceparent`, if any) with children `publish.validate`,
//! `publish.commit` (waiting for the group commit) and, in the committer,
//! `bus.publish`. The bus carries `bus.publish`'s context as a
//! `traceparent` NATS header; the receiving node opens `bus.receive` with
//! that parent. Every node hands each event to its connections in a
//! `deliver` span, a child of `bus.publish` on the publishing node and of
//! `bus.receive` elsewhere. Each WebSocket and SSE connection has a
//! `connection` span for its lifetime.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::event::Encoded;

/// Whether spans are exported: per-event spans are only made then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The OTLP/HTTP span exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says no). The
/// standard `OTEL_*` variables configure it: `OTEL_EXPORTER_OTLP_PROTOCOL`
/// (`http/protobuf`, the default, or `http/json`), `OTEL_SERVICE_NAME`
/// (default `herald`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
/// `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, timeouts.
pub(super) fn otlp_provider() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String>
{
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    if !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        || is("OTEL_SDK_DISABLED", "true")
        || is("OTEL_TRACES_EXPORTER", "none")
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("herald");
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    EXPORTING.store(true, Ordering::Release);
    Ok(Some(provider))
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Reads a trace context from HTTP request headers.
struct HttpHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Reads a trace context from NATS message headers.
struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes a trace context into NATS message headers.
struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

fn adopt(span: &Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to join then.
        let _ = span.set_parent(parent);
    }
}

/// Records the span's OpenTelemetry trace id in its `trace_id` field, so
/// that log lines written inside it name the trace they belong to.
fn record_trace_id(span: &Span) {
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The span of one publish request, joined to the caller's `traceparent`.
pub fn publish_span(headers: &actix_web::http::header::HeaderMap) -> Span {
    let span = tracing::info_span!(
        "publish",
        otel.kind = "server",
        events = tracing::field::Empty,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if exporting() {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaders(headers)));
        adopt(&span, parent);
        record_trace_id(&span);
    }
    span
}

/// The `traceparent` (and `tracestate`) of the current span as NATS headers,
/// or `None` when there is no trace to carry.
pub fn nats_headers() -> Option<async_nats::HeaderMap> {
    if !exporting() {
        return None;
    }
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut headers = async_nats::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut NatsHeadersMut(&mut headers))
    });
    Some(headers)
}

/// The span of receiving one event from NATS, joined to the trace its
/// `traceparent` header names.
pub fn receive_span(headers: Option<&async_nats::HeaderMap>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "bus.receive",
        otel.kind = "consumer",
        trace_id = tracing::field::Empty
    );
    if let Some(headers) = headers {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsHeaders(headers)));
        adopt(&span, parent);
    }
    record_trace_id(&span);
    span
}

/// The span of handing one event to this node's connections (a child of the
/// current span: `bus.publish` or `bus.receive`).
pub fn deliver_span(event: &Encoded) -> Span {
    if !exporting() {
        return Span::none();
    }
    tracing::info_span!("deliver", topic = event.topic.as_str(), seq = event.seq)
}

/// The span of one WebSocket or SSE connection, for its whole lifetime.
pub fn connection_span(id: u64, transport: &'static str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "connection",
        connection = id,
        transport,
        reason = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    record_trace_id(&span);
    span
}
