//! `fanout`: S WebSocket subscribers on one topic, and M events published
//! to it through `POST /v1/publish` (at `--rate` events per second, or flat
//! out), each event's `data` carrying the publisher's send time. Every
//! subscriber checks what it receives (lost, duplicated and out-of-order
//! seqs) and measures publish-to-delivery latency; the report gives
//! deliveries per second, that latency, and the server's CPU per million
//! deliveries. Once per (subscriber count, rate) pair, on a fresh topic.
//!
//! With several nodes (`--nodes N`, or several `--url`s), events are
//! published to the first node and subscribers are spread evenly over the
//! others: every delivery crosses the bus from one node to another, and the
//! server CPU is summed over all nodes.
//!
//! Subscribers are opened like the `conns` scenario's (spread over source
//! addresses 127.0.0.1 ..= 127.0.0.N), all subscribed before the first
//! publish. Each is a task that reads frames and parses only what it needs
//! from an event frame: the `seq`, and the send time in `data`. Latencies
//! are recorded in batches into a few shared histograms (one HDR histogram
//! per subscriber at 3 significant digits would take about 140 KB each).
//!
//! When the M events are published (or `--duration-secs` is over), one
//! more event, `{"end":true}`, is published: a subscriber stops when it
//! arrives. Its seq tells how many events the topic holds, which is what
//! every subscriber should have received. The measured window runs from
//! the first publish until the last subscriber has the end event (or
//! `--drain-secs` after the last publish; subscribers still waiting then
//! are counted as `unfinished`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::conns::{SPARE_FDS, check_server_fd_limit};
use super::{Scenario, check_connecting, check_secs};
use crate::cli::OutputArgs;
use crate::client::{self, DEFAULT_SOURCE_IPS, Endpoint, OpenError, Sources, WsStream};
use crate::cpu::{self, ThreadGroupCpu, ThreadSample};
use crate::report::{Latency, Runs, Table, fmt_opt, latency_histogram};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Subscriber counts, one run each, by default.
pub const DEFAULT_SUBSCRIBERS: [usize; 1] = [1_000];
/// Events published per run, by default.
pub const DEFAULT_EVENTS: u64 = 2_000;
/// Concurrent publishers (each one HTTP/1.1 connection), by default.
pub const DEFAULT_PUBLISHERS: usize = 1;
/// Size of each event's `data` (its JSON text), by default.
pub const DEFAULT_DATA_BYTES: usize = 100;
/// Most seconds of publishing per run, by default.
pub const DEFAULT_DURATION_SECS: u64 = 120;
/// Seconds after the last publish that subscribers may take to receive
/// everything, by default.
pub const DEFAULT_DRAIN_SECS: u64 = 30;
/// Subscribers being opened at once, by default.
pub const DEFAULT_OPEN_CONCURRENCY: usize = 64;
/// Seconds one subscriber may take to open, by default.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Seconds opening all subscribers may take, by default.
pub const DEFAULT_OPEN_TIMEOUT_SECS: u64 = 300;
/// Seconds one publish may take before it counts as a `timeout` error.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;

const MAX_SUBSCRIBERS: usize = 50_000;
const MAX_EVENTS: u64 = 10_000_000;
const MAX_PUBLISHERS: usize = 256;
const MAX_DATA_BYTES: usize = 60 * 1024;
/// Client read buffer per subscriber.
pub(crate) const WS_READ_BUFFER: usize = 8 * 1024;
/// Shared latency histograms (subscriber i records into i % SHARDS).
const SHARDS: usize = 16;
/// Latencies a subscriber keeps before recording them into its shard.
pub(crate) const BATCH: usize = 64;
/// A publisher waits this long after a failed request.
pub(crate) const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Attempts at publishing the end event.
const END_ATTEMPTS: usize = 3;
/// Idle time between runs.
const PAUSE_BETWEEN_RUNS: Duration = Duration::from_secs(1);
/// How long after their deadline publishers may take to stop.
pub(crate) const STOP_SLACK: Duration = Duration::from_secs(5);
/// Extra validity of a minted token beyond the planned run time.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// A publishing rate: `max` (flat out: each publisher sends its next event
/// as soon as the previous one is answered) or events per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSec(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r <= 1e7 => Ok(Rate::PerSec(r)),
            _ => Err(format!(
                "expected `max` or events per second (0 < r <= 1e7), got {s:?}"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSec(r) => write!(f, "{r}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::PerSec(r) => s.serialize_f64(*r),
        }
    }
}

/// `herald-load fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Subscriber counts, comma-separated: runs for each, in turn.
    #[arg(long, env = "HERALD_LOAD_SUBSCRIBERS", value_delimiter = ',', default_values_t = DEFAULT_SUBSCRIBERS)]
    pub subscribers: Vec<usize>,
    /// Publishing rates, comma-separated: `max` (flat out) or events per
    /// second; one run per rate for each subscriber count.
    #[arg(
        long,
        env = "HERALD_LOAD_RATE",
        value_delimiter = ',',
        default_value = "max"
    )]
    pub rate: Vec<Rate>,
    /// Events published per run.
    #[arg(long, env = "HERALD_LOAD_EVENTS", default_value_t = DEFAULT_EVENTS)]
    pub events: u64,
    /// Concurrent publishers, each with one HTTP/1.1 connection, waiting for
    /// each answer before its next publish.
    #[arg(long, env = "HERALD_LOAD_PUBLISHERS", default_value_t = DEFAULT_PUBLISHERS)]
    pub publishers: usize,
    /// Bytes of each event's `data` (its JSON text, send time included).
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Most seconds of publishing per run (it ends early once --events are
    /// published).
    #[arg(long, env = "HERALD_LOAD_DURATION_SECS", default_value_t = DEFAULT_DURATION_SECS)]
    pub duration_secs: u64,
    /// Seconds after the last publish that subscribers may take to receive
    /// everything.
    #[arg(long, env = "HERALD_LOAD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// Subscribers being opened at once.
    #[arg(long, env = "HERALD_LOAD_OPEN_CONCURRENCY", default_value_t = DEFAULT_OPEN_CONCURRENCY)]
    pub open_concurrency: usize,
    /// Source addresses: subscribers are spread over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, env = "HERALD_LOAD_SOURCE_IPS", default_value_t = DEFAULT_SOURCE_IPS)]
    pub source_ips: u8,
    /// Seconds one subscriber may take to open (connect, upgrade, subscribe).
    #[arg(long, env = "HERALD_LOAD_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Seconds opening all subscribers may take.
    #[arg(long, env = "HERALD_LOAD_OPEN_TIMEOUT_SECS", default_value_t = DEFAULT_OPEN_TIMEOUT_SECS)]
    pub open_timeout_secs: u64,
    /// Seconds one publish may take before it counts as a `timeout` error.
    #[arg(long, env = "HERALD_LOAD_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
}

/// The checked settings of a `fanout` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutSettings {
    pub subscribers: Vec<usize>,
    pub rate: Vec<Rate>,
    pub events: u64,
    pub publishers: usize,
    pub data_bytes: usize,
    pub duration_secs: u64,
    pub drain_secs: u64,
    pub open_concurrency: usize,
    pub source_ips: u8,
    pub connect_timeout_secs: u64,
    pub open_timeout_secs: u64,
    pub request_timeout_secs: u64,
}

impl Scenario for FanoutArgs {
    const NAME: &'static str = "fanout";
    type Settings = FanoutSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<FanoutSettings> {
        if self.subscribers.is_empty()
            || self
                .subscribers
                .iter()
                .any(|&s| s == 0 || s > MAX_SUBSCRIBERS)
        {
            bail!("--subscribers: each count must be 1..={MAX_SUBSCRIBERS}");
        }
        if self.rate.is_empty() {
            bail!("--rate: name at least one rate");
        }
        if self.events == 0 || self.events > MAX_EVENTS {
            bail!("--events must be 1..={MAX_EVENTS}");
        }
        if self.publishers == 0 || self.publishers > MAX_PUBLISHERS {
            bail!("--publishers must be 1..={MAX_PUBLISHERS}");
        }
        if self.data_bytes > MAX_DATA_BYTES {
            bail!("--data-bytes must be at most {MAX_DATA_BYTES}");
        }
        check_secs(&[
            ("--duration-secs", self.duration_secs),
            ("--drain-secs", self.drain_secs),
            ("--connect-timeout-secs", self.connect_timeout_secs),
            ("--open-timeout-secs", self.open_timeout_secs),
            ("--request-timeout-secs", self.request_timeout_secs),
        ])?;
        check_connecting(self.open_concurrency, self.source_ips)?;
        Ok(FanoutSettings {
            subscribers: self.subscribers.clone(),
            rate: self.rate.clone(),
            events: self.events,
            publishers: self.publishers,
            data_bytes: self.data_bytes,
            duration_secs: self.duration_secs,
            drain_secs: self.drain_secs,
            open_concurrency: self.open_concurrency,
            source_ips: self.source_ips,
            connect_timeout_secs: self.connect_timeout_secs,
            open_timeout_secs: self.open_timeout_secs,
            request_timeout_secs: self.request_timeout_secs,
        })
    }

    fn token_secs(settings: &FanoutSettings) -> u64 {
        let per_run = settings.open_timeout_secs
            + settings.duration_secs
            + settings.request_timeout_secs
            + settings.drain_secs;
        per_run * (settings.subscribers.len() * settings.rate.len()) as u64 + TOKEN_MARGIN_SECS
    }

    fn fds_needed(settings: &FanoutSettings) -> u64 {
        let most = settings.subscribers.iter().copied().max().unwrap_or(0);
        (most + settings.publishers) as u64 + SPARE_FDS
    }

    async fn run(settings: &FanoutSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        for &pid in &target.pids {
            let most = settings.subscribers.iter().copied().max().unwrap_or(0);
            check_server_fd_limit(pid, most + settings.publishers)?;
        }
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::new();
        for &subscribers in &settings.subscribers {
            for &rate in &settings.rate {
                if !runs.is_empty() {
                    tokio::time::sleep(PAUSE_BETWEEN_RUNS).await;
                }
                let topics = vec![format!("{TOPIC_PREFIX}.fanout.{tag}.r{}", runs.len())];
                runs.push(
                    run_once(settings, target, &endpoints, subscribers, rate, &topics).await?,
                );
                if !target.is_running() {
                    bail!("the server exited during the run with {subscribers} subscribers");
                }
            }
        }
        Ok(Runs::Fanout(runs))
    }
}

/// Where subscribers connect: every node but the first (published to) when
/// there are several, else the only one.
pub(crate) async fn subscriber_endpoints(target: &Target) -> anyhow::Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for url in target.subscriber_urls() {
        endpoints.push(Endpoint::resolve(url, &target.token).await?);
    }
    Ok(endpoints)
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutFigures {
    /// Herald nodes: 1, or N with publishes to the first and subscribers
    /// spread over the others (server CPU summed over all of them).
    pub nodes: usize,
    /// Topics published to (1 for `fanout`); subscriber i is on topic
    /// i % topics, event n goes to topic n % topics.
    pub topics: usize,
    /// Subscribers, over all topics.
    pub subscribers: usize,
    /// The asked publishing rate.
    pub rate: Rate,
    /// Concurrent publishers.
    pub publishers: usize,
    /// Events the run was to publish (`--events`).
    pub events_planned: u64,
    /// Events the topics hold (each end event's seq - 1, summed): with one
    /// topic, what each subscriber should receive.
    pub events: u64,
    /// Publishes answered `201` (equals `events` unless a publish timed out
    /// after all).
    pub published: u64,
    /// Failed publishes by kind (HTTP status, `timeout`, `connect`,
    /// `request`, `body`, `unreadable_answer`).
    pub publish_errors: BTreeMap<String, u64>,
    /// Sum of `publish_errors`.
    pub publish_failed: u64,
    /// From the first publish to the last answer.
    pub publish_secs: f64,
    /// `published / publish_secs`.
    pub publish_events_per_sec: f64,
    /// Publish request to `201` answer, milliseconds.
    pub publish_latency: Latency,
    /// `events` or `duration`: what ended publishing.
    pub stopped_by: &'static str,
    /// Event frames the subscribers received (the end event not counted).
    pub deliveries: u64,
    /// What a lossless run delivers: for each subscriber, the events of its
    /// topic (`subscribers * events` with one topic).
    pub deliveries_expected: u64,
    /// From the first publish until the last subscriber had the end event.
    pub window_secs: f64,
    /// `deliveries / window_secs`.
    pub deliveries_per_sec: f64,
    /// Publisher's send time (in `data`) to the subscriber's read, ms, over
    /// every delivery (same machine, same clock).
    pub latency: Latency,
    /// Seqs of the topic that a subscriber never received, summed over
    /// subscribers (must be 0).
    pub lost: u64,
    /// Seqs received again (must be 0).
    pub duplicates: u64,
    /// Seqs received after a higher one (must be 0).
    pub order_violations: u64,
    /// `reset` frames received (must be 0 on a fresh topic).
    pub resets: u64,
    /// Subscribers the server closed before the end event, by close code
    /// (`4008`: slow consumer) or `eof` / `error`.
    pub closed_early: BTreeMap<String, u64>,
    /// Subscribers still waiting for the end event `--drain-secs` after the
    /// last publish (their figures are not counted).
    pub unfinished: u64,
    /// Server CPU (user + system) in the window, seconds.
    pub server_cpu_secs: Option<f64>,
    /// `server_cpu_secs` per million deliveries.
    pub server_cpu_secs_per_million_deliveries: Option<f64>,
    /// Cores the server kept busy on average.
    pub server_cores_busy: Option<f64>,
    /// The server's CPU in the window by thread name, largest first.
    pub server_threads: Vec<ThreadGroupCpu>,
    /// This process's CPU in the window, seconds.
    pub client_cpu_secs: f64,
    /// Cores the load generator kept busy on average.
    pub client_cores_busy: f64,
    /// Cores kept busy on average by everything else: other processes, and
    /// kernel work charged to no process (interrupts, softirq, kernel
    /// threads); all busy CPU minus the server's (when measured) and this
    /// process's. A core or more means other work disturbed the figures.
    pub other_cores_busy: f64,
    /// The database server's CPU in the window (postmaster and its live
    /// children), seconds, with `--db-pid`.
    pub db_cpu_secs: Option<f64>,
    /// Per million deliveries.
    pub db_cpu_secs_per_million_deliveries: Option<f64>,
}

impl FanoutFigures {
    /// Correctness failures: lost, duplicated or reordered seqs, failed
    /// publishes, subscribers that never finished.
    pub fn failures(&self) -> u64 {
        self.lost + self.duplicates + self.order_violations + self.publish_failed + self.unfinished
    }
}

/// The table for a list of runs, with details below it.
pub fn render(runs: &[FanoutFigures]) -> String {
    let mut table = Table::new(&[
        "nodes",
        "topics",
        "subscribers",
        "rate",
        "events",
        "pub/s",
        "deliveries",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup",
        "order",
        "closed",
        "srv CPU-s/M",
        "srv cores",
        "client cores",
        "other cores",
    ]);
    for r in runs {
        table.row(vec![
            r.nodes.to_string(),
            r.topics.to_string(),
            r.subscribers.to_string(),
            r.rate.to_string(),
            r.events.to_string(),
            format!("{:.0}", r.publish_events_per_sec),
            r.deliveries.to_string(),
            format!("{:.0}", r.deliveries_per_sec),
            format!("{:.2}", r.latency.p50_ms),
            format!("{:.2}", r.latency.p90_ms),
            format!("{:.2}", r.latency.p99_ms),
            format!("{:.2}", r.latency.max_ms),
            r.lost.to_string(),
            r.duplicates.to_string(),
            r.order_violations.to_string(),
            r.closed_early.values().sum::<u64>().to_string(),
            fmt_opt(r.server_cpu_secs_per_million_deliveries, 2),
            fmt_opt(r.server_cores_busy, 2),
            format!("{:.2}", r.client_cores_busy),
            format!("{:.2}", r.other_cores_busy),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mut notes = vec![format!(
            "publish p50 {:.2} ms, p99 {:.2} ms; window {:.2} s",
            r.publish_latency.p50_ms, r.publish_latency.p99_ms, r.window_secs
        )];
        if !r.publish_errors.is_empty() {
            let list: Vec<String> = r
                .publish_errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            notes.push(format!("publish errors {}", list.join(", ")));
        }
        if !r.closed_early.is_empty() {
            let list: Vec<String> = r
                .closed_early
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            notes.push(format!(
                "subscribers closed early (4008 = slow consumer): {}",
                list.join(", ")
            ));
        }
        if let Rate::PerSec(asked) = r.rate
            && r.publish_events_per_sec < 0.9 * asked
        {
            notes.push(format!(
                "the asked rate was not reached: each of the {} publisher(s) waits for \
                 its answer before the next publish (--publishers offers more)",
                r.publishers
            ));
        }
        if r.unfinished > 0 {
            notes.push(format!("{} subscribers unfinished", r.unfinished));
        }
        if r.resets > 0 {
            notes.push(format!("{} resets", r.resets));
        }
        if r.stopped_by != "events" {
            notes.push(format!(
                "stopped by {} after {} of {} events",
                r.stopped_by, r.published, r.events_planned
            ));
        }
        if let (Some(db), Some(per_m)) = (r.db_cpu_secs, r.db_cpu_secs_per_million_deliveries) {
            notes.push(format!(
                "database CPU {db:.2} s ({per_m:.2} s per million deliveries, {:.2} cores)",
                db / r.window_secs
            ));
        }
        if !r.server_threads.is_empty() {
            let top: Vec<String> = r
                .server_threads
                .iter()
                .take(4)
                .map(|t| {
                    format!(
                        "{} x{} {:.0} ms ({:.0} sys)",
                        t.name, t.threads, t.cpu_ms, t.system_ms
                    )
                })
                .collect();
            notes.push(format!("server CPU by thread: {}", top.join("; ")));
        }
        out.push_str(&format!(
            "\n{} subscribers, rate {}: {}",
            r.subscribers,
            r.rate,
            notes.join("\n  ")
        ));
    }
    out.push('\n');
    out
}

/// Nanoseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What a subscriber makes of a text frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An event with its seq and, when present, the send time in its data.
    Event { seq: u64, sent_ns: Option<u64> },
    /// The end event.
    End { seq: u64 },
    /// `{"op":"reset",...}`.
    Reset,
    /// Anything else (`subscribed`, `error`, `expiring`, ...).
    Other,
}

/// Parses just enough of a frame: events are `{"op":"event","topic":...,
/// "seq":N,...,"data":{...}}` (Herald writes them in this order, once per
/// event) with `data` last and written by this tool as
/// `{"t":NS,...}` or `{"end":true}`. Topics and server-made ids cannot hold
/// a quote, so the first `,"seq":` is the seq.
pub(crate) fn parse_frame(text: &str) -> Frame {
    let Some(rest) = text.strip_prefix(r#"{"op":"event","#) else {
        // Control frames: keys in any order.
        return if text.contains(r#""op":"reset""#) {
            Frame::Reset
        } else {
            Frame::Other
        };
    };
    let Some(seq) = rest
        .find(r#","seq":"#)
        .and_then(|at| leading_u64(&rest[at + 7..]))
    else {
        return Frame::Other;
    };
    let data = rest.rfind(r#""data":"#).map_or("", |at| &rest[at + 7..]);
    if data.starts_with(r#"{"end":true"#) {
        return Frame::End { seq };
    }
    let sent_ns = data.strip_prefix(r#"{"t":"#).and_then(leading_u64);
    Frame::Event { seq, sent_ns }
}

/// The decimal number at the start of `s`.
fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s[..digits].parse().ok()
}

/// Which seqs of one topic a subscriber has seen: all up to `contiguous`,
/// plus the few above it (only after a gap or a reordering).
#[derive(Debug, Default)]
pub(crate) struct Seqs {
    pub(crate) contiguous: u64,
    above: BTreeSet<u64>,
    highest: u64,
    pub(crate) duplicates: u64,
    pub(crate) order_violations: u64,
}

impl Seqs {
    pub(crate) fn see(&mut self, seq: u64) {
        if seq <= self.contiguous || self.above.contains(&seq) {
            self.duplicates += 1;
            return;
        }
        if seq < self.highest {
            self.order_violations += 1;
        }
        self.highest = self.highest.max(seq);
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.above.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else {
            self.above.insert(seq);
        }
    }

    /// Distinct seqs seen.
    pub(crate) fn distinct(&self) -> u64 {
        self.contiguous + self.above.len() as u64
    }
}

/// The run's latency histograms, shared by subscribers in batches.
pub(crate) struct Shards(Vec<Mutex<Histogram<u64>>>);

impl Shards {
    pub(crate) fn new() -> Shards {
        Shards(
            (0..SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        )
    }

    pub(crate) fn record(&self, shard: usize, values: &mut Vec<u64>) {
        let mut h = self.0[shard % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &v in values.iter() {
            h.saturating_record(v);
        }
        values.clear();
    }

    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.0 {
            let h = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.add(&*h).expect("every histogram has the same bounds");
        }
        all
    }
}

/// What one subscriber counted.
#[derive(Debug, Default)]
struct SubTally {
    /// Index of its topic.
    topic: usize,
    deliveries: u64,
    seqs: Seqs,
    resets: u64,
    /// Why it ended before the end event, if it did.
    closed: Option<String>,
    end_seq: Option<u64>,
}

/// What every subscriber task shares.
struct SubShared {
    /// Subscriber i connects to `endpoints[i % len]`.
    endpoints: Vec<Endpoint>,
    /// Subscriber i is on `topics[i % len]`.
    topics: Vec<String>,
    connect_timeout: Duration,
    permits: Semaphore,
    opened: mpsc::UnboundedSender<Result<(), OpenError>>,
    shards: Shards,
}

/// Opens a subscriber, reports it, then consumes until the end event.
/// Returns its tally and its connection, so that the run closes every
/// connection after its window, not inside it.
async fn subscriber(
    shared: Arc<SubShared>,
    index: usize,
    source: std::net::Ipv4Addr,
) -> (SubTally, Option<WsStream>) {
    let Ok(permit) = shared.permits.acquire().await else {
        return (SubTally::default(), None);
    };
    let opened = tokio::time::timeout(
        shared.connect_timeout,
        client::ws_subscribe(
            &shared.endpoints[index % shared.endpoints.len()],
            source,
            &shared.topics[index % shared.topics.len()],
            WS_READ_BUFFER,
        ),
    )
    .await
    .unwrap_or_else(|_| Err(OpenError("timeout".into())));
    drop(permit);
    let mut ws = match opened {
        Ok(ws) => {
            let _ = shared.opened.send(Ok(()));
            ws
        }
        Err(e) => {
            let _ = shared.opened.send(Err(e));
            return (SubTally::default(), None);
        }
    };
    let mut tally = SubTally {
        topic: index % shared.topics.len(),
        ..SubTally::default()
    };
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match parse_frame(text.as_str()) {
                Frame::Event { seq, sent_ns } => {
                    tally.deliveries += 1;
                    tally.seqs.see(seq);
                    if let Some(sent) = sent_ns {
                        batch.push(now_ns().saturating_sub(sent) / 1_000);
                        if batch.len() == BATCH {
                            shared.shards.record(index, &mut batch);
                        }
                    }
                }
                Frame::End { seq } => {
                    tally.end_seq = Some(seq);
                    break;
                }
                Frame::Reset => tally.resets += 1,
                Frame::Other => {}
            },
            Some(Ok(Message::Close(frame))) => {
                tally.closed = Some(
                    frame.map_or_else(|| "close".to_owned(), |f| u16::from(f.code).to_string()),
                );
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                tally.closed = Some("error".into());
                break;
            }
            None => {
                tally.closed = Some("eof".into());
                break;
            }
        }
    }
    shared.shards.record(index, &mut batch);
    (tally, Some(ws))
}

/// What every publisher of a run shares.
pub(crate) struct PubShared {
    pub(crate) url: String,
    pub(crate) authorization: HeaderValue,
    /// Event n goes to `topics[n % len]`.
    pub(crate) topics: Vec<String>,
    pub(crate) rate: Rate,
    pub(crate) events: u64,
    pub(crate) next: AtomicU64,
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) out_of_time: AtomicBool,
    pub(crate) pad: String,
    pub(crate) data_bytes: usize,
}

/// What one publisher counted.
pub(crate) struct PubTally {
    pub(crate) published: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) last_answer: Option<Instant>,
}

/// The fields of a receipt the check needs.
#[derive(Deserialize)]
pub(crate) struct Receipt {
    topic: String,
    seq: u64,
}

/// The JSON body of event `n`, sent at `sent_ns`: `data` is padded to
/// `data_bytes` (or just over, when the fields alone are longer).
pub(crate) fn event_body(
    topic: &str,
    sent_ns: u64,
    n: u64,
    pad: &str,
    data_bytes: usize,
) -> String {
    let bare = format!(r#"{{"t":{sent_ns},"n":{n},"pad":""}}"#);
    let fill = data_bytes.saturating_sub(bare.len()).min(pad.len());
    format!(
        r#"{{"topic":"{topic}","data":{{"t":{sent_ns},"n":{n},"pad":"{}"}}}}"#,
        &pad[..fill]
    )
}

/// A transport failure's kind.
pub(crate) fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// One client holding one keep-alive HTTP/1.1 connection.
pub(crate) fn http_client(request_timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(request_timeout)
        .build()
        .context("building an HTTP client")
}

/// Publishes `body` once; the receipt's seq, or the error's kind.
pub(crate) async fn publish_one(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    topic: &str,
    body: String,
) -> Result<u64, String> {
    let response = client
        .post(url)
        .header(AUTHORIZATION, authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    if status != StatusCode::CREATED {
        return Err(status.as_str().to_owned());
    }
    match serde_json::from_slice::<Receipt>(&body) {
        Ok(receipt) if receipt.topic == topic => Ok(receipt.seq),
        _ => Err("unreadable_answer".to_owned()),
    }
}

/// One publisher: takes the next event number, waits for its time (at a
/// set rate), publishes it with the send time in `data`, waits for the
/// answer; until every event is taken or the time is up.
pub(crate) async fn publisher(shared: Arc<PubShared>, client: reqwest::Client) -> PubTally {
    let mut tally = PubTally {
        published: 0,
        errors: BTreeMap::new(),
        latency: latency_histogram(),
        last_answer: None,
    };
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.events {
            break;
        }
        if let Rate::PerSec(rate) = shared.rate {
            let due = shared.start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= shared.deadline {
            shared.out_of_time.store(true, Ordering::Relaxed);
            break;
        }
        let sent_ns = now_ns();
        let topic = &shared.topics[(n % shared.topics.len() as u64) as usize];
        let body = event_body(topic, sent_ns, n, &shared.pad, shared.data_bytes);
        let sent = Instant::now();
        let answer = publish_one(&client, &shared.url, &shared.authorization, topic, body).await;
        tally.last_answer = Some(Instant::now());
        match answer {
            Ok(_) => {
                tally.published += 1;
                tally.latency.saturating_record(
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
            }
            Err(kind) => {
                *tally.errors.entry(kind).or_default() += 1;
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

impl Sample {
    /// [`Sample::take`] plus the database server's CPU (`db_pid`).
    pub(crate) fn take_with_db(server_pids: &[u32], db_pid: Option<u32>) -> anyhow::Result<Sample> {
        let mut sample = Sample::take(server_pids)?;
        sample.db = db_pid
            .map(cpu::process_tree_cpu)
            .transpose()
            .context("reading the database server's CPU time")?;
        Ok(sample)
    }
}

/// Most events in one publish request (the API's batch limit).
const MAX_BATCH: usize = 1_000;

/// Publishes the end event `{"end":true}` on every topic, in batches of up
/// to 1,000 (one transaction each), a few attempts each; returns each
/// topic's end seq.
pub(crate) async fn publish_ends(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    topics: &[String],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut seqs = BTreeMap::new();
    for chunk in topics.chunks(MAX_BATCH) {
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|t| format!(r#"{{"topic":"{t}","data":{{"end":true}}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut errors = Vec::new();
        let mut done = false;
        for _ in 0..END_ATTEMPTS {
            match publish_batch(client, url, authorization, body.clone()).await {
                Ok(receipts) if receipts.len() == chunk.len() => {
                    for r in receipts {
                        seqs.insert(r.topic, r.seq);
                    }
                    done = true;
                    break;
                }
                Ok(_) => errors.push("unreadable_answer".to_owned()),
                Err(kind) => errors.push(kind),
            }
            tokio::time::sleep(ERROR_PAUSE * 10).await;
        }
        if !done {
            bail!("the end events could not be published: {errors:?}");
        }
    }
    Ok(seqs)
}

/// Publishes a JSON array of events; the receipts, or the error's kind.
async fn publish_batch(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    body: String,
) -> Result<Vec<Receipt>, String> {
    let response = client
        .post(url)
        .header(AUTHORIZATION, authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    if status != StatusCode::CREATED {
        return Err(status.as_str().to_owned());
    }
    serde_json::from_slice(&body).map_err(|_| "unreadable_answer".to_owned())
}

/// CPU counters and the time they were read.
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) server: Option<(Duration, ThreadSample)>,
    pub(crate) client: Duration,
    pub(crate) machine: Duration,
    /// The database server's CPU (postmaster and live children), when
    /// `--db-pid` is given.
    pub(crate) db: Option<Duration>,
}

impl Sample {
    /// Reads the CPU of every server process in `server_pids` (empty: not
    /// measured), this process's, and the machine's.
    pub(crate) fn take(server_pids: &[u32]) -> anyhow::Result<Sample> {
        let server = if server_pids.is_empty() {
            None
        } else {
            Some((
                cpu::processes_cpu(server_pids).context("reading the server's CPU time")?,
                cpu::threads_sample(server_pids),
            ))
        };
        Ok(Sample {
            db: None,
            at: Instant::now(),
            server,
            client: cpu::own_cpu()?,
            machine: cpu::machine_busy()?,
        })
    }
}

/// One run: `subscribers` WebSocket subscribers spread over `topics`
/// (subscriber i on topic i % len) and over `endpoints`, the events
/// published to the target's first node (event n on topic n % len), the end
/// event on every topic; what it measured.
pub(crate) async fn run_once(
    settings: &FanoutSettings,
    target: &Target,
    endpoints: &[Endpoint],
    subscribers: usize,
    rate: Rate,
    topics: &[String],
) -> anyhow::Result<FanoutFigures> {
    // 1. Subscribers, all subscribed before the first publish.
    let sources = Sources::new(settings.source_ips)?;
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let subs = Arc::new(SubShared {
        endpoints: endpoints.to_vec(),
        topics: topics.to_vec(),
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        permits: Semaphore::new(settings.open_concurrency),
        opened: opened_tx,
        shards: Shards::new(),
    });
    let mut tasks = JoinSet::new();
    for i in 0..subscribers {
        tasks.spawn(subscriber(subs.clone(), i, sources.nth(i)));
    }
    let open_deadline = Instant::now() + Duration::from_secs(settings.open_timeout_secs);
    let mut open_errors: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..subscribers {
        match tokio::time::timeout_at(open_deadline.into(), opened_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => *open_errors.entry(e.0).or_default() += 1,
            Ok(None) => break,
            Err(_) => bail!(
                "{subscribers} subscribers did not all open within {} s (--open-timeout-secs)",
                settings.open_timeout_secs
            ),
        }
    }
    if !open_errors.is_empty() {
        bail!("{subscribers} subscribers: some failed to open: {open_errors:?}");
    }

    // 2. Publishers, measured from here.
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", target.token.expose()))
        .context("the token is not a valid header value")?;
    authorization.set_sensitive(true);
    let request_timeout = Duration::from_secs(settings.request_timeout_secs);
    let clients = (0..settings.publishers)
        .map(|_| http_client(request_timeout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let end_client = http_client(request_timeout)?;
    let before = Sample::take_with_db(&target.pids, target.db_pid)?;
    let start = Instant::now();
    let shared = Arc::new(PubShared {
        url: format!("{}/v1/publish", target.base_url),
        authorization,
        topics: topics.to_vec(),
        rate,
        events: settings.events,
        next: AtomicU64::new(0),
        start,
        deadline: start + Duration::from_secs(settings.duration_secs),
        out_of_time: AtomicBool::new(false),
        pad: "x".repeat(settings.data_bytes),
        data_bytes: settings.data_bytes,
    });
    let mut pubs = JoinSet::new();
    for client in clients {
        pubs.spawn(publisher(shared.clone(), client));
    }
    let stop_by = shared.deadline + request_timeout + STOP_SLACK;
    let mut pub_tallies = Vec::with_capacity(settings.publishers);
    loop {
        match tokio::time::timeout_at(stop_by.into(), pubs.join_next()).await {
            Ok(Some(joined)) => pub_tallies.push(joined.context("a publisher panicked")?),
            Ok(None) => break,
            Err(_) => bail!("publishers were still running {STOP_SLACK:?} after their deadline"),
        }
    }

    // 3. The end event, then wait for every subscriber to have it.
    let end_seqs = publish_ends(&end_client, &shared.url, &shared.authorization, topics).await?;
    let drain_deadline = Instant::now() + Duration::from_secs(settings.drain_secs);
    let mut tallies = Vec::with_capacity(subscribers);
    let mut connections = Vec::with_capacity(subscribers);
    let mut unfinished = 0;
    loop {
        match tokio::time::timeout_at(drain_deadline.into(), tasks.join_next()).await {
            Ok(Some(joined)) => {
                let (tally, ws) = joined.context("a subscriber panicked")?;
                tallies.push(tally);
                connections.push(ws);
            }
            Ok(None) => break,
            Err(_) => {
                unfinished = tasks.len() as u64;
                break;
            }
        }
    }
    let after = Sample::take_with_db(&target.pids, target.db_pid)?;
    // Closing the connections is not part of the window.
    tasks.shutdown().await;
    drop(connections);

    // 4. Figures.
    let held = |topic: usize| end_seqs.get(&topics[topic]).map_or(0, |seq| seq - 1);
    let events: u64 = (0..topics.len()).map(held).sum();
    let mut publish_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut publish_latency = latency_histogram();
    let mut published = 0;
    let mut last_answer = start;
    for t in &pub_tallies {
        published += t.published;
        publish_latency
            .add(&t.latency)
            .expect("every histogram has the same bounds");
        for (kind, n) in &t.errors {
            *publish_errors.entry(kind.clone()).or_default() += n;
        }
        if let Some(at) = t.last_answer {
            last_answer = last_answer.max(at);
        }
    }
    let (mut deliveries, mut lost, mut duplicates, mut order_violations, mut resets) =
        (0, 0, 0, 0, 0);
    let mut closed_early: BTreeMap<String, u64> = BTreeMap::new();
    let mut deliveries_expected = 0;
    for t in &tallies {
        deliveries += t.deliveries;
        deliveries_expected += held(t.topic);
        lost += held(t.topic).saturating_sub(t.seqs.distinct());
        duplicates += t.seqs.duplicates;
        order_violations += t.seqs.order_violations;
        resets += t.resets;
        if let Some(why) = &t.closed {
            *closed_early.entry(why.clone()).or_default() += 1;
        }
    }
    let window_secs = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let publish_secs = last_answer.duration_since(start).as_secs_f64().max(1e-9);
    let server_cpu_secs = match (&before.server, &after.server) {
        (Some((b, _)), Some((a, _))) => Some(a.saturating_sub(*b).as_secs_f64()),
        _ => None,
    };
    let server_threads = match (&before.server, &after.server) {
        (Some((_, b)), Some((_, a))) => b.since(a)?,
        _ => Vec::new(),
    };
    let client_cpu_secs = after.client.saturating_sub(before.client).as_secs_f64();
    let machine_secs = after.machine.saturating_sub(before.machine).as_secs_f64();
    let db_cpu_secs = match (before.db, after.db) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64()),
        _ => None,
    };
    let other_secs = (machine_secs
        - client_cpu_secs
        - server_cpu_secs.unwrap_or(0.0)
        - db_cpu_secs.unwrap_or(0.0))
    .max(0.0);
    Ok(FanoutFigures {
        nodes: target.node_urls.len(),
        topics: topics.len(),
        subscribers,
        rate,
        publishers: settings.publishers,
        events_planned: settings.events,
        events,
        published,
        publish_failed: publish_errors.values().sum(),
        publish_errors,
        publish_secs,
        publish_events_per_sec: published as f64 / publish_secs,
        publish_latency: Latency::from_histogram(&publish_latency),
        stopped_by: if shared.out_of_time.load(Ordering::Relaxed) {
            "duration"
        } else {
            "events"
        },
        deliveries,
        deliveries_expected,
        window_secs,
        deliveries_per_sec: deliveries as f64 / window_secs,
        latency: Latency::from_histogram(&subs.shards.merged()),
        lost,
        duplicates,
        order_violations,
        resets,
        closed_early,
        unfinished,
        server_cpu_secs_per_million_deliveries: server_cpu_secs
            .filter(|_| deliveries > 0)
            .map(|s| s * 1e6 / deliveries as f64),
        server_cores_busy: server_cpu_secs.map(|s| s / window_secs),
        server_cpu_secs,
        server_threads,
        client_cpu_secs,
        client_cores_busy: client_cpu_secs / window_secs,
        other_cores_busy: other_secs / window_secs,
        db_cpu_secs,
        db_cpu_secs_per_million_deliveries: db_cpu_secs
            .filter(|_| deliveries > 0)
            .map(|s| s * 1e6 / deliveries as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_parse_to_seq_and_send_time() {
        let body = event_body("load.fanout.x", 1_790_000_000_123_456_789, 4, "xxxx", 40);
        serde_json::from_str::<serde_json::Value>(&body).expect("the body is JSON");
        // The data as the server keeps it: the publisher's text.
        let data = &body[body.find(r#""data":"#).expect("data") + 7..body.len() - 1];
        let frame = format!(
            r#"{{"op":"event","topic":"load.fanout.x","seq":17,"id":"h-00ff","time":"2026-11-24T10:00:00.123Z","data":{data}}}"#
        );
        assert_eq!(
            parse_frame(&frame),
            Frame::Event {
                seq: 17,
                sent_ns: Some(1_790_000_000_123_456_789)
            }
        );
        let end =
            r#"{"op":"event","topic":"t","seq":18,"id":"h-1","time":"x","data":{"end":true}}"#;
        assert_eq!(parse_frame(end), Frame::End { seq: 18 });
        assert_eq!(
            parse_frame(r#"{"from":3,"op":"reset","topic":"t"}"#),
            Frame::Reset
        );
        assert_eq!(
            parse_frame(r#"{"op":"subscribed","topics":["t"],"heads":"t:0"}"#),
            Frame::Other
        );
    }

    #[test]
    fn event_data_is_padded_to_the_asked_size() {
        let body = event_body("load.t", 123, 1, &"x".repeat(200), 100);
        let value: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
        assert_eq!(value["data"].to_string().len(), 100);
    }

    #[test]
    fn seqs_count_gaps_duplicates_and_reorderings() {
        let mut seqs = Seqs::default();
        for s in [1, 2, 3, 5, 4, 4, 7, 2] {
            seqs.see(s);
        }
        assert_eq!(seqs.distinct(), 6);
        assert_eq!(seqs.contiguous, 5);
        assert_eq!(seqs.duplicates, 2);
        // 4 after 5.
        assert_eq!(seqs.order_violations, 1);
        // Seq 6 of 7 is missing.
        assert_eq!(7 - seqs.distinct(), 1);
    }

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("100".parse::<Rate>(), Ok(Rate::PerSec(100.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
