//! `poll-cost`: the same stream of events consumed over each transport in
//! turn (WebSocket, SSE, long polling, short polling every 5 s), to answer
//! "which transport should I use" with measurements: bytes on the wire per
//! delivered event, requests per minute per client, server CPU per
//! delivery, and publish-to-delivery latency.
//!
//! For each transport, on a fresh topic: `--clients` consumers connect
//! (WebSocket and SSE: subscribed before the first publish; polls: with the
//! cursor `topic:0`, so nothing can be missed), then one publisher sends
//! `--rate` events per second for `--duration-secs`, each event's `data`
//! carrying its send time, then an end event. Every consumer checks its
//! seqs (lost, duplicated, out of order) and stops at the end event. The
//! window runs from the first publish until the last consumer had the end
//! event (for short polling, up to one interval after it was published).
//!
//! Every consumer's TCP connection counts the bytes it sends and receives
//! ([`crate::wire::Counted`]): HTTP heads, WebSocket frames, SSE lines,
//! poll bodies, heartbeats and reconnections included; TCP/IP headers not
//! (on loopback about 52 bytes per segment each way). Polls run on a
//! hand-written HTTP/1.1 keep-alive client; when the server has closed an
//! idle keep-alive connection (actix-web closes them after 5 s), the poll
//! reconnects, which is counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::{DEFAULT_SOURCE_IPS, Endpoint, Sources, connect_from};
use crate::kit::checks::{check_connecting, check_secs};
use crate::kit::defaults::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_DATA_BYTES, DEFAULT_DRAIN_SECS, DEFAULT_OPEN_CONCURRENCY,
    DEFAULT_REQUEST_TIMEOUT_SECS,
};
use crate::kit::fds::{SPARE_FDS, check_server_fd_limit};
use crate::kit::figures::{Correctness, ServerCost};
use crate::kit::frames::{Frame, Seqs, parse_frame};
use crate::kit::publishing::{
    Plan, PubShared, PubTally, Rate, STOP_SLACK, authorization, http_client, publish_ends,
    publisher,
};
use crate::kit::sampling::{BATCH, Sample, Shards};
use crate::kit::subscribing::{drain, subscriber_endpoints};
use crate::report::{Latency, Runs, Table, fmt_counts, fmt_opt};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};
use crate::wire::{self, Counted, Counters};

/// Consumers per transport, by default.
pub const DEFAULT_CLIENTS: usize = 100;
/// Events per second, by default.
pub const DEFAULT_RATE: f64 = 10.0;
/// Seconds of publishing per transport, by default.
pub const DEFAULT_DURATION_SECS: u64 = 60;
/// Seconds between short polls, by default.
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 5;
/// `wait` of a long poll, by default.
pub const DEFAULT_LONG_POLL_WAIT_SECS: u64 = 25;

const MAX_CLIENTS: usize = 20_000;
/// Events one poll may return (the API's maximum `limit`).
const POLL_LIMIT: usize = 1_000;
/// A request may take this long beyond its `wait`.
const REQUEST_SLACK: Duration = Duration::from_secs(10);
/// A consumer waits this long after a failed request or connection.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Client read buffer per WebSocket.
const WS_READ_BUFFER: usize = 16 * 1024;
/// Extra validity of a minted token.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// A consuming transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consumer {
    /// WebSocket, `GET /v1/ws`, a `subscribe` frame.
    Ws,
    /// Server-Sent Events, `GET /v1/sse`.
    Sse,
    /// `GET /v1/poll?wait=N`, again as soon as it answers.
    LongPoll,
    /// `GET /v1/poll` (`wait=0`) every `--poll-interval-secs`.
    ShortPoll,
}

impl Consumer {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Consumer::Ws => "ws",
            Consumer::Sse => "sse",
            Consumer::LongPoll => "long-poll",
            Consumer::ShortPoll => "short-poll",
        }
    }
}

/// `herald-load poll-cost`.
#[derive(Debug, Clone, Args)]
pub struct PollCostArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Transports, comma-separated, measured in turn.
    #[arg(
        long,
        env = "HERALD_LOAD_TRANSPORTS",
        value_delimiter = ',',
        default_value = "ws,sse,long-poll,short-poll"
    )]
    pub transports: Vec<Consumer>,
    /// Consumers per transport.
    #[arg(long, env = "HERALD_LOAD_CLIENTS", default_value_t = DEFAULT_CLIENTS)]
    pub clients: usize,
    /// Events per second on the topic.
    #[arg(long, env = "HERALD_LOAD_RATE", default_value_t = DEFAULT_RATE)]
    pub rate: f64,
    /// Seconds of publishing per transport.
    #[arg(long, env = "HERALD_LOAD_DURATION_SECS", default_value_t = DEFAULT_DURATION_SECS)]
    pub duration_secs: u64,
    /// Seconds between the starts of two short polls of one consumer.
    #[arg(long, env = "HERALD_LOAD_POLL_INTERVAL_SECS", default_value_t = DEFAULT_POLL_INTERVAL_SECS)]
    pub poll_interval_secs: u64,
    /// `wait` of each long poll, seconds (1..=60).
    #[arg(long, env = "HERALD_LOAD_LONG_POLL_WAIT_SECS", default_value_t = DEFAULT_LONG_POLL_WAIT_SECS)]
    pub long_poll_wait_secs: u64,
    /// Bytes of each event's `data`.
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Seconds after the end event was published that consumers may take
    /// to receive everything (added to the poll interval for short polls).
    #[arg(long, env = "HERALD_LOAD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// Source addresses: consumers are spread over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, env = "HERALD_LOAD_SOURCE_IPS", default_value_t = DEFAULT_SOURCE_IPS)]
    pub source_ips: u8,
    /// Consumers being connected at once.
    #[arg(long, env = "HERALD_LOAD_OPEN_CONCURRENCY", default_value_t = DEFAULT_OPEN_CONCURRENCY)]
    pub open_concurrency: usize,
    /// Seconds one connection may take to open.
    #[arg(long, env = "HERALD_LOAD_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Seconds one publish may take before it counts as a `timeout` error.
    #[arg(long, env = "HERALD_LOAD_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
}

/// The checked settings of a `poll-cost` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct PollCostSettings {
    /// `--transports`.
    pub transports: Vec<Consumer>,
    /// `--clients`.
    pub clients: usize,
    /// `--rate`.
    pub rate: f64,
    /// `--duration-secs`.
    pub duration_secs: u64,
    /// `--poll-interval-secs`.
    pub poll_interval_secs: u64,
    /// `--long-poll-wait-secs`.
    pub long_poll_wait_secs: u64,
    /// `--data-bytes`.
    pub data_bytes: usize,
    /// `--drain-secs`.
    pub drain_secs: u64,
    /// `--source-ips`.
    pub source_ips: u8,
    /// `--open-concurrency`.
    pub open_concurrency: usize,
    /// `--connect-timeout-secs`.
    pub connect_timeout_secs: u64,
    /// `--request-timeout-secs`.
    pub request_timeout_secs: u64,
}

impl Scenario for PollCostArgs {
    const NAME: &'static str = "poll-cost";
    type Settings = PollCostSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<PollCostSettings> {
        if self.transports.is_empty() {
            bail!("--transports: name at least one");
        }
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            bail!("--clients must be 1..={MAX_CLIENTS}");
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            bail!("--rate must be above 0 and at most 100000 events/s");
        }
        check_secs(&[
            ("--duration-secs", self.duration_secs),
            ("--poll-interval-secs", self.poll_interval_secs),
            ("--drain-secs", self.drain_secs),
            ("--connect-timeout-secs", self.connect_timeout_secs),
            ("--request-timeout-secs", self.request_timeout_secs),
        ])?;
        if self.long_poll_wait_secs == 0 || self.long_poll_wait_secs > 60 {
            bail!("--long-poll-wait-secs must be 1..=60");
        }
        if self.data_bytes > 60 * 1024 {
            bail!("--data-bytes must be at most 61440");
        }

        check_connecting(self.open_concurrency, self.source_ips)?;
        Ok(PollCostSettings {
            transports: self.transports.clone(),
            clients: self.clients,
            rate: self.rate,
            duration_secs: self.duration_secs,
            poll_interval_secs: self.poll_interval_secs,
            long_poll_wait_secs: self.long_poll_wait_secs,
            data_bytes: self.data_bytes,
            drain_secs: self.drain_secs,
            source_ips: self.source_ips,
            open_concurrency: self.open_concurrency,
            connect_timeout_secs: self.connect_timeout_secs,
            request_timeout_secs: self.request_timeout_secs,
        })
    }

    fn token_secs(s: &PollCostSettings) -> u64 {
        let per_run =
            s.duration_secs + s.poll_interval_secs + s.drain_secs + s.connect_timeout_secs * 2;
        per_run * s.transports.len() as u64 + TOKEN_MARGIN_SECS
    }

    fn fds_needed(s: &PollCostSettings) -> u64 {
        (2 * s.clients) as u64 + SPARE_FDS
    }

    async fn run(settings: &PollCostSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        for &pid in &target.pids {
            check_server_fd_limit(pid, settings.clients + 1)?;
        }
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::new();
        for &transport in &settings.transports {
            if !runs.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let topic = format!("{TOPIC_PREFIX}.pollcost.{tag}.{}", transport.name());
            runs.push(run_once(settings, target, &endpoints, transport, &topic).await?);
            if !target.is_running() {
                bail!("the server exited during the {} run", transport.name());
            }
        }
        Ok(Runs::PollCost(runs))
    }
}

/// What one transport's run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PollCostFigures {
    /// The transport.
    pub transport: Consumer,
    /// Herald nodes (publishes to the first, consumers on the others).
    pub nodes: usize,
    /// Consumers.
    pub clients: usize,
    /// The asked rate, events/s.
    pub rate: f64,
    /// Events the topic holds (the end event not counted).
    pub events: u64,
    /// Publishes answered `201`.
    pub published: u64,
    /// Failed publishes by kind.
    pub publish_errors: BTreeMap<String, u64>,
    /// Event deliveries to all consumers (the end event not counted), and
    /// `clients * events`; seqs never received, received twice or after a
    /// higher one, resets, and consumers that never had the end event
    /// (all must be 0).
    #[serde(flatten)]
    pub correctness: Correctness,
    /// From the first publish until the last consumer had the end event.
    pub window_secs: f64,
    /// Bytes received by all consumers (server to client).
    pub bytes_received: u64,
    /// Bytes sent by all consumers (client to server).
    pub bytes_sent: u64,
    /// (received + sent) / deliveries.
    pub bytes_per_delivery: Option<f64>,
    /// HTTP requests the consumers made (a WebSocket upgrade or an SSE
    /// stream is one; every poll is one).
    pub requests: u64,
    /// `requests / clients / window minutes`.
    pub requests_per_min_per_client: f64,
    /// TCP connections opened, beyond one per consumer (keep-alive
    /// connections closed by the server, failures).
    pub reconnects: u64,
    /// Failed requests or connections by kind (retried).
    pub errors: BTreeMap<String, u64>,
    /// Publish-to-delivery latency, ms, over every delivery.
    pub latency: Latency,
    /// Server CPU in the window (all nodes), per million deliveries, the
    /// cores it kept busy and by thread name.
    #[serde(flatten)]
    pub cost: ServerCost,
    /// Cores this process kept busy.
    pub client_cores_busy: f64,
    /// Cores everything else kept busy.
    pub other_cores_busy: f64,
}

impl PollCostFigures {
    /// Correctness failures.
    pub fn failures(&self) -> u64 {
        self.correctness.failures() + self.publish_errors.values().sum::<u64>()
    }
}

/// The table, with details below it.
pub fn render(runs: &[PollCostFigures]) -> String {
    let mut table = Table::new(&[
        "transport",
        "clients",
        "events",
        "deliveries",
        "bytes/deliv",
        "req/min/client",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv CPU-s/M",
        "srv cores",
        "lost",
        "dup",
        "order",
        "other cores",
    ]);
    for r in runs {
        table.row(vec![
            r.transport.name().to_owned(),
            r.clients.to_string(),
            r.events.to_string(),
            format!(
                "{}/{}",
                r.correctness.deliveries, r.correctness.deliveries_expected
            ),
            fmt_opt(r.bytes_per_delivery, 0),
            format!("{:.2}", r.requests_per_min_per_client),
            format!("{:.2}", r.latency.p50_ms),
            format!("{:.2}", r.latency.p99_ms),
            format!("{:.2}", r.latency.max_ms),
            fmt_opt(r.cost.server_cpu_secs_per_million_deliveries, 2),
            fmt_opt(r.cost.server_cores_busy, 3),
            r.correctness.lost.to_string(),
            r.correctness.duplicates.to_string(),
            r.correctness.order_violations.to_string(),
            format!("{:.2}", r.other_cores_busy),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mut notes = vec![format!(
            "{} B received, {} B sent, {} requests, {} reconnections, window {:.1} s",
            r.bytes_received, r.bytes_sent, r.requests, r.reconnects, r.window_secs
        )];
        if !r.errors.is_empty() {
            notes.push(format!("errors (retried): {}", fmt_counts(&r.errors)));
        }
        if !r.publish_errors.is_empty() {
            notes.push(format!("publish errors: {}", fmt_counts(&r.publish_errors)));
        }
        if r.correctness.unfinished > 0 {
            notes.push(format!("{} consumers unfinished", r.correctness.unfinished));
        }
        out.push_str(&format!("\n{}: {}", r.transport.name(), notes.join("\n  ")));
    }
    out.push('\n');
    out
}

/// What every consumer shares.
struct Shared {
    transport: Consumer,
    endpoints: Vec<Endpoint>,
    token: String,
    topic: String,
    counters: Arc<Counters>,
    shards: Shards,
    permits: Semaphore,
    connect_timeout: Duration,
    poll_interval: Duration,
    long_poll_wait: u64,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    /// When publishing started (short polls are spread over the first
    /// interval from their first poll).
    sources: Sources,
}

/// What one consumer counted.
#[derive(Debug, Default)]
struct Tally {
    deliveries: u64,
    seqs: Seqs,
    resets: u64,
    requests: u64,
    connections: u64,
    errors: BTreeMap<String, u64>,
    end: bool,
}

impl Tally {
    /// Takes an event: returns true for the end event.
    fn event(
        &mut self,
        shared: &Shared,
        index: usize,
        batch: &mut Vec<u64>,
        seq: u64,
        sent_ns: Option<u64>,
        end: bool,
    ) -> bool {
        if end {
            self.end = true;
            return true;
        }
        self.deliveries += 1;
        self.seqs.see(seq);
        if let Some(sent) = sent_ns {
            shared.shards.keep(index, batch, sent);
        }
        false
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// A poll's answer.
#[derive(Deserialize)]
struct PollBody {
    events: Vec<EventJson>,
    #[serde(default)]
    resets: Vec<serde_json::Value>,
    cursor: String,
    #[serde(default)]
    more: bool,
}

/// An event as SSE and polls deliver it.
#[derive(Deserialize)]
struct EventJson {
    seq: u64,
    data: serde_json::Value,
}

impl EventJson {
    fn sent_ns(&self) -> Option<u64> {
        self.data.get("t").and_then(serde_json::Value::as_u64)
    }

    fn is_end(&self) -> bool {
        self.data.get("end") == Some(&serde_json::Value::Bool(true))
    }
}

/// A TCP connection to the consumer's node, counted.
async fn connect(shared: &Shared, index: usize) -> Result<Counted, String> {
    let endpoint = &shared.endpoints[index % shared.endpoints.len()];
    let tcp = tokio::time::timeout(
        shared.connect_timeout,
        connect_from(shared.sources.nth(index), endpoint.server),
    )
    .await
    .map_err(|_| "connect_timeout".to_owned())?
    .map_err(|e| e.0)?;
    Ok(Counted::new(tcp, shared.counters.clone()))
}

/// One consumer, until the end event (or the task is stopped).
async fn consumer(shared: Arc<Shared>, index: usize) -> Tally {
    let mut tally = Tally::default();
    let mut batch = Vec::with_capacity(BATCH);
    match shared.transport {
        Consumer::Ws => ws_consumer(&shared, index, &mut tally, &mut batch).await,
        Consumer::Sse => sse_consumer(&shared, index, &mut tally, &mut batch).await,
        Consumer::LongPoll | Consumer::ShortPoll => {
            poll_consumer(&shared, index, &mut tally, &mut batch).await;
        }
    }
    shared.shards.record(index, &mut batch);
    tally
}

async fn ws_consumer(shared: &Shared, index: usize, tally: &mut Tally, batch: &mut Vec<u64>) {
    let permit = shared.permits.acquire().await;
    let opened = tokio::time::timeout(shared.connect_timeout, ws_open(shared, index)).await;
    drop(permit);
    tally.connections += 1;
    tally.requests += 1;
    let mut ws = match opened {
        Ok(Ok(ws)) => {
            let _ = shared.ready.send(Ok(()));
            ws
        }
        Ok(Err(e)) => {
            let _ = shared.ready.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = shared.ready.send(Err("timeout".into()));
            return;
        }
    };
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(text)) => match parse_frame(text.as_str()) {
                Frame::Event { seq, sent_ns } => {
                    tally.event(shared, index, batch, seq, sent_ns, false);
                }
                Frame::End { .. } => {
                    tally.end = true;
                    return;
                }
                Frame::Reset => tally.resets += 1,
                Frame::Other => {}
            },
            Ok(Message::Close(_)) | Err(_) => {
                tally.error("closed");
                return;
            }
            Ok(_) => {}
        }
    }
}

type CountedWs = tokio_tungstenite::WebSocketStream<Counted>;

async fn ws_open(shared: &Shared, index: usize) -> Result<CountedWs, String> {
    let stream = connect(shared, index).await?;
    let endpoint = &shared.endpoints[index % shared.endpoints.len()];
    let mut request = format!("ws://{}/v1/ws", endpoint.server)
        .into_client_request()
        .map_err(|_| "request".to_owned())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", shared.token))
        .map_err(|_| "request".to_owned())?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|_| "handshake".to_owned())?;
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","topics":["{}"],"since":"{}:0"}}"#,
        shared.topic, shared.topic
    )))
    .await
    .map_err(|_| "send".to_owned())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"subscribed""#) => {
                return Ok(ws);
            }
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"error""#) => {
                return Err("subscribe_refused".into());
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err("closed".into()),
        }
    }
}

async fn sse_consumer(shared: &Shared, index: usize, tally: &mut Tally, batch: &mut Vec<u64>) {
    let permit = shared.permits.acquire().await;
    let opened = tokio::time::timeout(shared.connect_timeout, sse_open(shared, index)).await;
    drop(permit);
    tally.connections += 1;
    tally.requests += 1;
    let (mut stream, mut raw, chunked) = match opened {
        Ok(Ok(opened)) => {
            let _ = shared.ready.send(Ok(()));
            opened
        }
        Ok(Err(e)) => {
            let _ = shared.ready.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = shared.ready.send(Err("timeout".into()));
            return;
        }
    };
    let mut chunk = vec![0u8; 16 * 1024];
    let mut buf = Vec::new();
    loop {
        if chunked {
            if dechunk(&mut raw, &mut buf).is_err() {
                tally.error("bad_chunk");
                return;
            }
        } else {
            buf.append(&mut raw);
        }
        // Whole messages end with an empty line.
        while let Some(at) = find(&buf, b"\n\n") {
            let message: Vec<u8> = buf.drain(..at + 2).collect();
            let text = String::from_utf8_lossy(&message);
            let mut kind = "message";
            let mut data = String::new();
            for line in text.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = match k {
                        "reset" => "reset",
                        // Where the stream starts: nothing to count.
                        "subscribed" => "subscribed",
                        _ => "other",
                    };
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            match kind {
                "message" if !data.is_empty() => match serde_json::from_str::<EventJson>(&data) {
                    Ok(e) => {
                        if tally.event(shared, index, batch, e.seq, e.sent_ns(), e.is_end()) {
                            return;
                        }
                    }
                    Err(_) => tally.error("unreadable_event"),
                },
                "reset" => tally.resets += 1,
                "other" => {
                    tally.error("sse_control");
                    return;
                }
                _ => {}
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                tally.error("closed");
                return;
            }
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Moves the complete chunks at the start of `raw` (chunked transfer
/// coding) into `out`, leaving a partial chunk in `raw`.
fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), ()> {
    let mut at = 0;
    while let Some(line) = find(&raw[at..], b"\r\n") {
        let text = std::str::from_utf8(&raw[at..at + line]).map_err(|_| ())?;
        let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ())?;
        let data = at + line + 2;
        if raw.len() < data + size + 2 {
            break;
        }
        out.extend_from_slice(&raw[data..data + size]);
        at = data + size + 2;
    }
    raw.drain(..at);
    Ok(())
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens an SSE stream from `topic:0`; returns it, the body bytes read
/// with the head, and whether the body is chunked.
async fn sse_open(shared: &Shared, index: usize) -> Result<(Counted, Vec<u8>, bool), String> {
    let mut stream = connect(shared, index).await?;
    let endpoint = &shared.endpoints[index % shared.endpoints.len()];
    let request = format!(
        "GET /v1/sse?topic={t}&since={t}:0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        endpoint.server,
        shared.token,
        t = shared.topic,
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .map_err(|_| "write".to_owned())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| "read".to_owned())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!(
                    "http_{}",
                    head.split(' ').nth(1).unwrap_or("unknown")
                ));
            }
            let chunked = head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            let body = buf.split_off(at + 4);
            return Ok((stream, body, chunked));
        }
        if buf.len() > 16 * 1024 {
            return Err("head_too_large".into());
        }
    }
}

async fn poll_consumer(shared: &Shared, index: usize, tally: &mut Tally, batch: &mut Vec<u64>) {
    let long = shared.transport == Consumer::LongPoll;
    let wait = if long { shared.long_poll_wait } else { 0 };
    let timeout = Duration::from_secs(wait) + REQUEST_SLACK;
    let mut cursor = format!("{}:0", shared.topic);
    let mut conn: Option<Counted> = None;
    // Polls need nothing open before publishing starts: the cursor covers
    // every event. Short polls are spread evenly over the first interval.
    let _ = shared.ready.send(Ok(()));
    let start = Instant::now();
    let mut next_poll = if long {
        start
    } else {
        start + shared.poll_interval.mul_f64(rand::random::<f64>())
    };
    loop {
        tokio::time::sleep_until(next_poll.into()).await;
        let mut again = false;
        // A stale keep-alive connection is replaced once per poll.
        for attempt in 0..2 {
            if conn.is_none() {
                let permit = shared.permits.acquire().await;
                let opened = connect(shared, index).await;
                drop(permit);
                tally.connections += 1;
                match opened {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tally.error(e);
                        break;
                    }
                }
            }
            let Some(stream) = conn.as_mut() else {
                break;
            };
            let endpoint = &shared.endpoints[index % shared.endpoints.len()];
            let request = format!(
                "GET /v1/poll?topic={}&since={cursor}&wait={wait}&limit={POLL_LIMIT} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                shared.topic, endpoint.server, shared.token
            );
            tally.requests += 1;
            let answered = tokio::time::timeout(timeout, wire::request(stream, &request)).await;
            let response = match answered {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    conn = None;
                    if e.is_stale_connection() && attempt == 0 {
                        // Not an error: the server closed an idle keep-alive
                        // connection; the request is made again.
                        tally.requests -= 1;
                        continue;
                    }
                    tally.error(e.0);
                    break;
                }
                Err(_) => {
                    conn = None;
                    tally.error("timeout");
                    break;
                }
            };
            if response.close {
                conn = None;
            }
            if response.status != 200 {
                tally.error(format!("http_{}", response.status));
                break;
            }
            let Ok(body) = serde_json::from_slice::<PollBody>(&response.body) else {
                tally.error("unreadable_answer");
                break;
            };
            tally.resets += body.resets.len() as u64;
            for e in &body.events {
                if tally.event(shared, index, batch, e.seq, e.sent_ns(), e.is_end()) {
                    return;
                }
            }
            cursor = body.cursor;
            again = body.more;
            break;
        }
        let now = Instant::now();
        next_poll = if again {
            now
        } else if long {
            // After an error, pause; else poll again at once.
            if tally.errors.is_empty() {
                now
            } else {
                now + RETRY_PAUSE
            }
        } else {
            // Every interval from the first poll; never two at once.
            let mut due = next_poll + shared.poll_interval;
            while due < now {
                due += shared.poll_interval;
            }
            due
        };
    }
}

/// The consumers of a run, every one of them open (polls: ready).
struct Opened {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    tasks: JoinSet<Tally>,
}

/// What the publisher did, from the start of the window.
struct Published {
    shared: Arc<PubShared>,
    before: Sample,
    tally: PubTally,
    request_timeout: Duration,
}

/// What the consumers counted, up to the end of the window.
struct Drained {
    end_seqs: BTreeMap<String, u64>,
    tallies: Vec<Tally>,
    unfinished: u64,
    after: Sample,
    bytes_received: u64,
    bytes_sent: u64,
}

/// One transport's run: `--clients` consumers of `topic`, the events, the
/// end event; what it measured.
async fn run_once(
    settings: &PollCostSettings,
    target: &Target,
    endpoints: &[Endpoint],
    transport: Consumer,
    topic: &str,
) -> anyhow::Result<PollCostFigures> {
    let mut opened = open(settings, target, endpoints, transport, topic).await?;
    let published = publish(settings, target, topic).await?;
    let drained = drain_consumers(settings, target, transport, &mut opened, &published).await?;
    measure(settings, target, transport, &opened, published, drained)
}

/// Opens the consumers: WebSocket and SSE subscribed before the first
/// publish, polls ready to start from `topic:0`.
async fn open(
    settings: &PollCostSettings,
    target: &Target,
    endpoints: &[Endpoint],
    transport: Consumer,
    topic: &str,
) -> anyhow::Result<Opened> {
    let clients = settings.clients;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        transport,
        endpoints: endpoints.to_vec(),
        token: target.token.expose().to_owned(),
        topic: topic.to_owned(),
        counters: counters.clone(),
        shards: Shards::new(),
        permits: Semaphore::new(settings.open_concurrency),
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        poll_interval: Duration::from_secs(settings.poll_interval_secs),
        long_poll_wait: settings.long_poll_wait_secs,
        ready: ready_tx,
        sources: Sources::new(settings.source_ips)?,
    });
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        tasks.spawn(consumer(shared.clone(), i));
    }
    let ready_deadline = Instant::now()
        + Duration::from_secs(settings.connect_timeout_secs) * (1 + clients as u32 / 64);
    let mut open_errors: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..clients {
        match tokio::time::timeout_at(ready_deadline.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => *open_errors.entry(e).or_default() += 1,
            Ok(None) => break,
            Err(_) => bail!(
                "{clients} {} consumers did not all open in time",
                transport.name()
            ),
        }
    }
    if !open_errors.is_empty() {
        bail!(
            "{} consumers failed to open: {open_errors:?}",
            transport.name()
        );
    }
    Ok(Opened {
        shared,
        counters,
        tasks,
    })
}

/// One publisher at `--rate` for `--duration-secs`, measured from its
/// first publish.
async fn publish(
    settings: &PollCostSettings,
    target: &Target,
    topic: &str,
) -> anyhow::Result<Published> {
    let authorization = authorization(target)?;
    let request_timeout = Duration::from_secs(settings.request_timeout_secs);
    let before = Sample::take(&target.pids)?;
    let plan = Plan {
        topics: vec![topic.to_owned()],
        rate: Rate::PerSec(settings.rate),
        events: (settings.rate * settings.duration_secs as f64)
            .ceil()
            .max(1.0) as u64,
        duration: Duration::from_secs(settings.duration_secs),
        data_bytes: settings.data_bytes,
    };
    let shared = Arc::new(PubShared::new(target, authorization, plan, Instant::now()));
    let publisher = tokio::spawn(publisher(shared.clone(), http_client(request_timeout)?));
    let stop_by = shared.deadline + request_timeout + STOP_SLACK;
    let tally = tokio::time::timeout_at(stop_by.into(), publisher)
        .await
        .context("the publisher was still running after its deadline")?
        .context("the publisher panicked")?;
    Ok(Published {
        shared,
        before,
        tally,
        request_timeout,
    })
}

/// Publishes the end event, then waits for every consumer to have it (at
/// most `--drain-secs`, plus one interval for short polls); the window
/// ends there.
async fn drain_consumers(
    settings: &PollCostSettings,
    target: &Target,
    transport: Consumer,
    opened: &mut Opened,
    published: &Published,
) -> anyhow::Result<Drained> {
    let end_client = http_client(published.request_timeout)?;
    let end_seqs = publish_ends(
        &end_client,
        &published.shared.url,
        &published.shared.authorization,
        std::slice::from_ref(&published.shared.topics[0]),
    )
    .await?;
    let drain_deadline = Instant::now()
        + Duration::from_secs(settings.drain_secs)
        + if transport == Consumer::ShortPoll {
            Duration::from_secs(settings.poll_interval_secs)
        } else {
            Duration::ZERO
        };
    let (tallies, unfinished) = drain(&mut opened.tasks, drain_deadline, "consumer").await?;
    let after = Sample::take(&target.pids)?;
    let (bytes_received, bytes_sent) = opened.counters.get();
    opened.tasks.shutdown().await;
    Ok(Drained {
        end_seqs,
        tallies,
        unfinished,
        after,
        bytes_received,
        bytes_sent,
    })
}

/// The run's figures, from what the phases gathered.
fn measure(
    settings: &PollCostSettings,
    target: &Target,
    transport: Consumer,
    opened: &Opened,
    published: Published,
    drained: Drained,
) -> anyhow::Result<PollCostFigures> {
    let clients = settings.clients;
    let topic = &opened.shared.topic;
    let events = drained.end_seqs.get(topic).map_or(0, |s| s - 1);
    let mut correctness = Correctness {
        unfinished: drained.unfinished,
        ..Correctness::default()
    };
    let (mut requests, mut connections) = (0, 0);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in &drained.tallies {
        correctness.count(events, t.deliveries, &t.seqs, t.resets);
        requests += t.requests;
        connections += t.connections;
        for (k, v) in &t.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    // Every consumer, finished or not, was to receive every event.
    correctness.deliveries_expected = events * clients as u64;
    let deliveries = correctness.deliveries;
    let spent = published.before.until(&drained.after)?;
    let window_secs = spent.secs;
    let (bytes_received, bytes_sent) = (drained.bytes_received, drained.bytes_sent);
    Ok(PollCostFigures {
        transport,
        nodes: target.node_urls.len(),
        clients,
        rate: settings.rate,
        events,
        published: published.tally.published,
        publish_errors: published.tally.errors,
        correctness,
        window_secs,
        bytes_received,
        bytes_sent,
        bytes_per_delivery: (deliveries > 0)
            .then(|| (bytes_received + bytes_sent) as f64 / deliveries as f64),
        requests,
        requests_per_min_per_client: requests as f64 / clients as f64 / (window_secs / 60.0),
        reconnects: connections.saturating_sub(clients as u64),
        errors,
        latency: Latency::from_histogram(&opened.shared.shards.merged()),
        cost: ServerCost::of(&spent, deliveries),
        client_cores_busy: spent.client_cpu_secs / window_secs,
        other_cores_busy: spent.other_cpu_secs() / window_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_decoded_as_they_complete() {
        let mut raw = b"5\r\nhello\r\n3\r\nab".to_vec();
        let mut out = Vec::new();
        dechunk(&mut raw, &mut out).expect("valid chunks");
        assert_eq!(out, b"hello");
        raw.extend_from_slice(b"c\r\n");
        dechunk(&mut raw, &mut out).expect("valid chunks");
        assert_eq!(out, b"helloabc");
        assert!(raw.is_empty());
    }

    #[test]
    fn poll_answers_parse() {
        let body = r#"{"events":[{"topic":"t","seq":3,"id":"h-1","time":"x","data":{"t":123,"n":0}},
            {"topic":"t","seq":4,"id":"h-2","time":"x","data":{"end":true}}],"resets":[],"cursor":"t:4","more":false}"#;
        let parsed: PollBody = serde_json::from_str(body).expect("a poll answer");
        assert_eq!(parsed.cursor, "t:4");
        assert_eq!(parsed.events[0].sent_ns(), Some(123));
        assert!(!parsed.events[0].is_end());
        assert!(parsed.events[1].is_end());
        assert!(!parsed.more);
    }
}
