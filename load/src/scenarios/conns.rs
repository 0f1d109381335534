//! `conns`: N idle subscribers over one transport (WebSocket or SSE), each
//! on its own topic or all on one, held open for a while: what a connection
//! costs the server in memory (resident size before and after, per
//! connection) and how fast it accepts them.
//!
//! `--arrival after-request` sends a `GET /healthz` first on each
//! connection, so the stream is the connection's second request;
//! `--via-nginx` puts nginx in front, with a pool of upstream keep-alive
//! connections (see [`crate::nginx`]). The record gives how many streams
//! the server took as a later request of their connection
//! (`herald_streams_accepted_total{request="later"}`).
//!
//! Connections are opened `--open-concurrency` at a time, spread over source
//! addresses 127.0.0.1 ..= 127.0.0.N (see [`crate::client`]). Once open, a
//! connection is a task that only reads (a WebSocket answers the server's
//! pings; an SSE stream's keepalives are discarded), with a small read
//! buffer, so the client stays light: it runs on one thread by default.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::{self, Arrival, DEFAULT_SOURCE_IPS, Endpoint, OpenError, Sources};
use crate::kit::checks::check_connecting;
use crate::kit::fds::{SPARE_FDS, check_server_fd_limit};
use crate::nginx::{DEFAULT_NGINX_BIN, Nginx};
use crate::report::{Latency, Runs, Table, fmt_counts, fmt_opt, latency_histogram};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};
use crate::{cpu, proc};

/// Connections, by default.
pub const DEFAULT_COUNT: usize = 10_000;
/// Seconds the open connections are held idle, by default.
pub const DEFAULT_HOLD_SECS: u64 = 10;
/// Connections being opened at once, by default.
pub const DEFAULT_OPEN_CONCURRENCY: usize = 64;
/// Seconds one connection may take to open (connect, upgrade, subscribe).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Seconds opening them all may take.
pub const DEFAULT_OPEN_TIMEOUT_SECS: u64 = 300;

/// Most connections: Herald's default `HERALD_MAX_CONNECTIONS`.
const MAX_COUNT: usize = 50_000;
const MAX_HOLD_SECS: u64 = 3_600;
/// Client read buffer per WebSocket: pings and small frames only.
const IDLE_WS_READ_BUFFER: usize = 4 * 1024;
/// Extra validity of a minted token beyond the planned run time.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// A subscriber transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket, `GET /v1/ws` then a `subscribe` frame.
    Ws,
    /// Server-Sent Events, `GET /v1/sse?topic=...`.
    Sse,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// Which topics the connections subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicMode {
    /// Each connection its own topic (`load.conns.<tag>.<i>`).
    Own,
    /// All on one topic.
    Shared,
}

impl TopicMode {
    fn name(self) -> &'static str {
        match self {
            TopicMode::Own => "own",
            TopicMode::Shared => "shared",
        }
    }
}

/// `herald-load conns`.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Transport of the connections.
    #[arg(long, env = "HERALD_LOAD_TRANSPORT", value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Connections to open and hold.
    #[arg(long, env = "HERALD_LOAD_COUNT", default_value_t = DEFAULT_COUNT)]
    pub count: usize,
    /// Whether each stream is the first request of its connection or comes
    /// after a `GET /healthz` on it.
    #[arg(long, env = "HERALD_LOAD_ARRIVAL", value_enum, default_value_t = Arrival::First)]
    pub arrival: Arrival,
    /// Connect through nginx (started here, upstream keep-alive pool) instead
    /// of to the server directly.
    #[arg(long, env = "HERALD_LOAD_VIA_NGINX")]
    pub via_nginx: bool,
    /// The nginx binary for `--via-nginx`.
    #[arg(long, env = "HERALD_LOAD_NGINX_BIN", default_value = DEFAULT_NGINX_BIN)]
    pub nginx_bin: std::path::PathBuf,
    /// Each connection on its own topic, or all on one.
    #[arg(long, env = "HERALD_LOAD_TOPICS_MODE", value_enum, default_value_t = TopicMode::Own)]
    pub topics: TopicMode,
    /// Seconds the connections are held idle once all are open (the
    /// server's resident size is read at the end).
    #[arg(long, env = "HERALD_LOAD_HOLD_SECS", default_value_t = DEFAULT_HOLD_SECS)]
    pub hold_secs: u64,
    /// Connections being opened at once.
    #[arg(long, env = "HERALD_LOAD_OPEN_CONCURRENCY", default_value_t = DEFAULT_OPEN_CONCURRENCY)]
    pub open_concurrency: usize,
    /// Source addresses: connections are spread over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, env = "HERALD_LOAD_SOURCE_IPS", default_value_t = DEFAULT_SOURCE_IPS)]
    pub source_ips: u8,
    /// Seconds one connection may take to open (connect, upgrade, subscribe).
    #[arg(long, env = "HERALD_LOAD_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Seconds opening all connections may take; the run then goes on with
    /// those that opened.
    #[arg(long, env = "HERALD_LOAD_OPEN_TIMEOUT_SECS", default_value_t = DEFAULT_OPEN_TIMEOUT_SECS)]
    pub open_timeout_secs: u64,
}

/// The checked settings of a `conns` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct ConnsSettings {
    pub transport: Transport,
    pub count: usize,
    pub arrival: Arrival,
    pub via_nginx: bool,
    #[serde(skip)]
    pub nginx_bin: std::path::PathBuf,
    pub topics: TopicMode,
    pub hold_secs: u64,
    pub open_concurrency: usize,
    pub source_ips: u8,
    pub connect_timeout_secs: u64,
    pub open_timeout_secs: u64,
}

impl Scenario for ConnsArgs {
    const NAME: &'static str = "conns";
    type Settings = ConnsSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<ConnsSettings> {
        if self.count == 0 || self.count > MAX_COUNT {
            bail!("--count must be 1..={MAX_COUNT}");
        }
        if self.hold_secs > MAX_HOLD_SECS {
            bail!("--hold-secs must be at most {MAX_HOLD_SECS}");
        }
        check_connecting(self.open_concurrency, self.source_ips)?;
        if self.connect_timeout_secs == 0 || self.connect_timeout_secs > MAX_HOLD_SECS {
            bail!("--connect-timeout-secs must be 1..={MAX_HOLD_SECS}");
        }
        if self.open_timeout_secs == 0 || self.open_timeout_secs > MAX_HOLD_SECS {
            bail!("--open-timeout-secs must be 1..={MAX_HOLD_SECS}");
        }
        Ok(ConnsSettings {
            transport: self.transport,
            count: self.count,
            arrival: self.arrival,
            via_nginx: self.via_nginx,
            nginx_bin: self.nginx_bin.clone(),
            topics: self.topics,
            hold_secs: self.hold_secs,
            open_concurrency: self.open_concurrency,
            source_ips: self.source_ips,
            connect_timeout_secs: self.connect_timeout_secs,
            open_timeout_secs: self.open_timeout_secs,
        })
    }

    fn token_secs(settings: &ConnsSettings) -> u64 {
        settings.open_timeout_secs + settings.hold_secs + TOKEN_MARGIN_SECS
    }

    fn fds_needed(settings: &ConnsSettings) -> u64 {
        settings.count as u64 + SPARE_FDS
    }

    async fn run(settings: &ConnsSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let figures = run_once(settings, target).await?;
        if !target.is_running() {
            bail!("the server exited while the connections were open");
        }
        Ok(Runs::Conns(vec![figures]))
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnsFigures {
    /// `ws` or `sse`.
    pub transport: &'static str,
    /// `own` (one topic per connection) or `shared` (one topic).
    pub topics: &'static str,
    /// `first` or `after-request` (see `--arrival`).
    pub arrival: &'static str,
    /// Whether the connections went through nginx.
    pub via_nginx: bool,
    /// Streams the server accepted as a later request of their connection
    /// during the run (its `herald_streams_accepted_total{request="later"}`
    /// before and after), when its metrics could be read.
    pub server_streams_later: Option<u64>,
    /// The same, as the first request of their connection.
    pub server_streams_first: Option<u64>,
    /// Connections asked for.
    pub count: usize,
    /// Connections opened (subscribed).
    pub opened: usize,
    /// Connections that failed to open, by kind (`connect_...`, `http_503`,
    /// `timeout`, `closed`, ...), plus `not_attempted` when the opening
    /// phase ran out of time.
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub failed: u64,
    /// From the first connection attempt to the last successful open.
    pub open_secs: f64,
    /// `opened / open_secs`.
    pub conns_per_sec: f64,
    /// Time to open one connection (connect, upgrade or response head,
    /// subscribed), in milliseconds.
    pub open_latency: Latency,
    /// Connections that ended while held (closed by the server or reset).
    pub dropped_while_held: u64,
    /// Server resident size (VmRSS) before opening, in bytes.
    pub server_rss_before: Option<u64>,
    /// Right after the last connection opened.
    pub server_rss_open: Option<u64>,
    /// After the connections were held idle for `--hold-secs`.
    pub server_rss_idle: Option<u64>,
    /// `(server_rss_idle - server_rss_before) / opened`, in KiB.
    pub server_kib_per_conn: Option<f64>,
    /// The server's open file descriptors before and after.
    pub server_fds_before: Option<usize>,
    pub server_fds_idle: Option<usize>,
    /// Server CPU (user + system) while opening, in milliseconds per 1,000
    /// connections opened.
    pub server_cpu_ms_per_1k_conns: Option<f64>,
    /// This process's resident size before and after, in bytes.
    pub client_rss_before: u64,
    pub client_rss_idle: u64,
    /// `(client_rss_idle - client_rss_before) / opened`, in KiB.
    pub client_kib_per_conn: Option<f64>,
    /// This process's CPU while opening, per 1,000 connections.
    pub client_cpu_ms_per_1k_conns: Option<f64>,
    /// Cores kept busy on average while opening by everything else (see
    /// `fanout`): a core or more means other work disturbed the rate.
    pub other_cores_busy_opening: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// The table for a list of runs, with error details below it.
pub fn render(runs: &[ConnsFigures]) -> String {
    let mut table = Table::new(&[
        "transport",
        "arrival",
        "topics",
        "opened",
        "failed",
        "open s",
        "conns/s",
        "open p50 ms",
        "open p99 ms",
        "srv RSS before MiB",
        "srv RSS idle MiB",
        "srv KiB/conn",
        "srv CPU-ms/1k",
        "client KiB/conn",
        "dropped",
        "other cores",
    ]);
    let mib = |b: Option<u64>| fmt_opt(b.map(|b| b as f64 / MIB), 1);
    for r in runs {
        table.row(vec![
            r.transport.to_owned(),
            format!(
                "{}{}",
                r.arrival,
                if r.via_nginx { " via nginx" } else { "" }
            ),
            r.topics.to_owned(),
            format!("{}/{}", r.opened, r.count),
            r.failed.to_string(),
            format!("{:.2}", r.open_secs),
            format!("{:.0}", r.conns_per_sec),
            format!("{:.2}", r.open_latency.p50_ms),
            format!("{:.2}", r.open_latency.p99_ms),
            mib(r.server_rss_before),
            mib(r.server_rss_idle),
            fmt_opt(r.server_kib_per_conn, 1),
            fmt_opt(r.server_cpu_ms_per_1k_conns, 0),
            fmt_opt(r.client_kib_per_conn, 1),
            r.dropped_while_held.to_string(),
            format!("{:.2}", r.other_cores_busy_opening),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mut notes = Vec::new();
        if !r.errors.is_empty() {
            notes.push(format!("failed to open: {}", fmt_counts(&r.errors)));
        }
        notes.push(format!(
            "streams the server took as the first / a later request of their connection: {} / {}",
            r.server_streams_first
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            r.server_streams_later
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ));
        notes.push(format!(
            "server RSS right after opening {} MiB; server fds {} -> {}",
            mib(r.server_rss_open),
            r.server_fds_before
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            r.server_fds_idle
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ));
        out.push_str(&format!(
            "\n{} {}: {}",
            r.transport,
            r.count,
            notes.join("\n  ")
        ));
    }
    out.push('\n');
    out
}

/// What every connection task shares.
struct Shared {
    endpoint: Endpoint,
    transport: Transport,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    results: mpsc::UnboundedSender<Result<Duration, OpenError>>,
    dropped: AtomicU64,
}

/// Memory and CPU of the server (when measured), this process and the
/// machine, read at the edges of the phases.
struct Usage {
    server_rss: Option<u64>,
    server_fds: Option<usize>,
    server_cpu: Option<Duration>,
    client_rss: u64,
    client_cpu: Duration,
    machine: Duration,
}

impl Usage {
    /// Reads everything, `pid` being the server's.
    fn take(pid: Option<u32>) -> anyhow::Result<Usage> {
        Ok(Usage {
            server_rss: pid.map(proc::rss_bytes).transpose()?,
            server_fds: pid.and_then(proc::open_fds),
            server_cpu: pid.map(cpu::process_cpu).transpose()?,
            client_rss: proc::rss_bytes(std::process::id())?,
            client_cpu: cpu::own_cpu()?,
            machine: cpu::machine_busy()?,
        })
    }
}

/// The opening phase: every connection attempted, in the time allowed.
struct Opening {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    start: Instant,
    /// Time to open, µs, over the connections that opened.
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    last_open: Instant,
}

/// Right after the opening phase.
struct AtOpen {
    server_rss: Option<u64>,
    server_cpu: Option<Duration>,
    client_cpu: Duration,
    machine: Duration,
    /// From the first attempt to now.
    opening_secs: f64,
}

/// After the connections were held idle.
struct Idle {
    server_rss: Option<u64>,
    server_fds: Option<usize>,
    client_rss: u64,
    dropped: u64,
}

async fn run_once(settings: &ConnsSettings, target: &Target) -> anyhow::Result<ConnsFigures> {
    let mut endpoint = Endpoint::resolve(&target.base_url, &target.token).await?;
    endpoint.arrival = settings.arrival;
    // Kept running until the run is measured.
    let _nginx = if settings.via_nginx {
        let nginx = Nginx::start(&settings.nginx_bin, endpoint.server)?;
        endpoint.server = nginx.addr;
        Some(nginx)
    } else {
        None
    };
    if let Some(pid) = target.pid {
        check_server_fd_limit(pid, settings.count)?;
    }
    let sources = Sources::new(settings.source_ips)?;
    if let Some(pid) = target.pid {
        settle_fds(pid).await;
    }
    let before = Usage::take(target.pid)?;
    // After the server's open files are counted: its socket for this
    // request is not one of the run's.
    let streams_before = streams_accepted(&target.base_url).await;
    let mut opening = open(settings, endpoint, &sources).await;
    let at_open = AtOpen {
        server_rss: target.pid.map(proc::rss_bytes).transpose()?,
        server_cpu: target.pid.map(cpu::process_cpu).transpose()?,
        client_cpu: cpu::own_cpu()?,
        machine: cpu::machine_busy()?,
        opening_secs: opening.start.elapsed().as_secs_f64().max(1e-9),
    };
    let streams_after = streams_accepted(&target.base_url).await;
    let idle = hold(settings, target, &mut opening).await?;
    let mut figures = measure(settings, &before, &opening, &at_open, &idle);
    if let (Some(b), Some(a)) = (streams_before, streams_after) {
        figures.server_streams_first = Some(a.0.saturating_sub(b.0));
        figures.server_streams_later = Some(a.1.saturating_sub(b.1));
    }
    Ok(figures)
}

/// Waits (at most a second) until the server's open files stop changing:
/// the sockets of the requests that checked it was ready are closed by then,
/// so they are not counted before the run and missing after it.
async fn settle_fds(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = proc::open_fds(pid);
    let mut same = 0;
    while same < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = proc::open_fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
}

/// The server's `herald_streams_accepted_total` for `request="first"` and
/// `request="later"`, from its `/metrics`; `None` when they cannot be read
/// (another server, metrics off).
async fn streams_accepted(base_url: &str) -> Option<(u64, u64)> {
    // Closed once answered, so the server holds no socket for it after.
    let text = reqwest::Client::new()
        .get(format!("{base_url}/metrics"))
        .header(reqwest::header::CONNECTION, "close")
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let read = |request: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("herald_streams_accepted_total{")
                    && l.contains(&format!("request=\"{request}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum::<u64>()
    };
    Some((read("first"), read("later")))
}

/// Opens `--count` connections, `--open-concurrency` at a time, for at most
/// `--open-timeout-secs`; those still waiting then are stopped and counted
/// as `not_attempted_or_pending`.
async fn open(settings: &ConnsSettings, endpoint: Endpoint, sources: &Sources) -> Opening {
    let tag = format!("{:08x}", rand::random::<u32>());
    let (results, mut opened_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        endpoint,
        transport: settings.transport,
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        permits: Arc::new(Semaphore::new(settings.open_concurrency)),
        results,
        dropped: AtomicU64::new(0),
    });
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..settings.count {
        let topic = match settings.topics {
            TopicMode::Own => format!("{TOPIC_PREFIX}.conns.{tag}.{i}"),
            TopicMode::Shared => format!("{TOPIC_PREFIX}.conns.{tag}"),
        };
        tasks.spawn(connection(shared.clone(), sources.nth(i), topic));
    }

    let open_deadline = start + Duration::from_secs(settings.open_timeout_secs);
    let mut latency = latency_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_open = start;
    let mut answered = 0;
    while answered < settings.count {
        match tokio::time::timeout_at(open_deadline.into(), opened_rx.recv()).await {
            Ok(Some(Ok(took))) => {
                latency.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                last_open = Instant::now();
            }
            Ok(Some(Err(e))) => *errors.entry(e.0).or_default() += 1,
            Ok(None) => break,
            Err(_) => {
                let left = settings.count - answered;
                *errors.entry("not_attempted_or_pending".into()).or_default() += left as u64;
                // Stop the stragglers; those that opened stay.
                shared.permits.close();
                break;
            }
        }
        answered += 1;
    }
    Opening {
        shared,
        tasks,
        start,
        latency,
        errors,
        last_open,
    }
}

/// Holds the open connections idle for `--hold-secs`, reads what they cost
/// then, and closes them.
async fn hold(
    settings: &ConnsSettings,
    target: &Target,
    opening: &mut Opening,
) -> anyhow::Result<Idle> {
    tokio::time::sleep(Duration::from_secs(settings.hold_secs)).await;
    let idle = Idle {
        server_rss: target.pid.map(proc::rss_bytes).transpose()?,
        server_fds: target.pid.and_then(proc::open_fds),
        client_rss: proc::rss_bytes(std::process::id())?,
        dropped: opening.shared.dropped.load(Ordering::Relaxed),
    };
    opening.tasks.shutdown().await;
    Ok(idle)
}

/// The run's figures, from what the phases read.
fn measure(
    settings: &ConnsSettings,
    before: &Usage,
    opening: &Opening,
    at_open: &AtOpen,
    idle: &Idle,
) -> ConnsFigures {
    let opened = usize::try_from(opening.latency.len()).expect("at most --count");
    let open_secs = opening
        .last_open
        .duration_since(opening.start)
        .as_secs_f64()
        .max(1e-9);
    let other_cores_busy_opening = (at_open.machine.saturating_sub(before.machine).as_secs_f64()
        - at_open
            .client_cpu
            .saturating_sub(before.client_cpu)
            .as_secs_f64()
        - before
            .server_cpu
            .zip(at_open.server_cpu)
            .map_or(0.0, |(b, a)| a.saturating_sub(b).as_secs_f64()))
    .max(0.0)
        / at_open.opening_secs;
    let per_conn_kib = |before: u64, after: u64| {
        (opened > 0).then(|| (after as f64 - before as f64) / 1024.0 / opened as f64)
    };
    let per_1k = |before: Duration, after: Duration| {
        (opened > 0).then(|| after.saturating_sub(before).as_secs_f64() * 1e6 / opened as f64)
    };
    ConnsFigures {
        transport: settings.transport.name(),
        topics: settings.topics.name(),
        arrival: settings.arrival.name(),
        via_nginx: settings.via_nginx,
        server_streams_later: None,
        server_streams_first: None,
        count: settings.count,
        opened,
        failed: opening.errors.values().sum(),
        errors: opening.errors.clone(),
        open_secs,
        conns_per_sec: opened as f64 / open_secs,
        open_latency: Latency::from_histogram(&opening.latency),
        dropped_while_held: idle.dropped,
        server_kib_per_conn: before
            .server_rss
            .zip(idle.server_rss)
            .and_then(|(b, a)| per_conn_kib(b, a)),
        server_rss_before: before.server_rss,
        server_rss_open: at_open.server_rss,
        server_rss_idle: idle.server_rss,
        server_fds_before: before.server_fds,
        server_fds_idle: idle.server_fds,
        server_cpu_ms_per_1k_conns: before
            .server_cpu
            .zip(at_open.server_cpu)
            .and_then(|(b, a)| per_1k(b, a)),
        client_rss_before: before.client_rss,
        client_rss_idle: idle.client_rss,
        client_kib_per_conn: per_conn_kib(before.client_rss, idle.client_rss),
        client_cpu_ms_per_1k_conns: per_1k(before.client_cpu, at_open.client_cpu),
        other_cores_busy_opening,
    }
}

/// Opens one connection (when a permit is free), reports it, then reads it
/// until it ends or the run aborts the task.
async fn connection(shared: Arc<Shared>, source: std::net::Ipv4Addr, topic: String) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let started = Instant::now();
    let timeout = shared.connect_timeout;
    match shared.transport {
        Transport::Ws => {
            let opening =
                client::ws_subscribe(&shared.endpoint, source, &topic, IDLE_WS_READ_BUFFER);
            let opened = tokio::time::timeout(timeout, opening).await;
            drop((permit, topic));
            if let Some(ws) = report(&shared, started, opened) {
                client::ws_idle(ws).await;
            } else {
                return;
            }
        }
        Transport::Sse => {
            let opening = client::sse_subscribe(&shared.endpoint, source, &topic);
            let opened = tokio::time::timeout(timeout, opening).await;
            drop((permit, topic));
            if let Some(stream) = report(&shared, started, opened) {
                client::sse_idle(stream).await;
            } else {
                return;
            }
        }
    }
    shared.dropped.fetch_add(1, Ordering::Relaxed);
}

/// Sends how the opening went to the run; the connection when it opened.
fn report<T>(
    shared: &Shared,
    started: Instant,
    opened: Result<Result<T, OpenError>, tokio::time::error::Elapsed>,
) -> Option<T> {
    let (conn, result) = match opened {
        Ok(Ok(conn)) => (Some(conn), Ok(started.elapsed())),
        Ok(Err(e)) => (None, Err(e)),
        Err(_) => (None, Err(OpenError("timeout".into()))),
    };
    let _ = shared.results.send(result);
    conn
}

impl ConnsFigures {
    /// Whether every asked connection opened and none dropped while held.
    pub fn all_held(&self) -> bool {
        self.opened == self.count && self.failed == 0 && self.dropped_while_held == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_connections_are_refused_before_anything_starts() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["herald-load", "conns", "--count", "60000"])
            .expect("the arguments parse");
        let crate::Command::Conns(args) = cli.command else {
            panic!("conns parses as conns");
        };
        assert!(args.settings().is_err());
    }
}
