//! `storm`: N WebSocket clients, spread over T topics, all drop their
//! connections at the same moment and reconnect at once with their cursors
//! while publishing continues: how long until every client is resumed, and
//! whether anything was lost or delivered twice across the reconnection
//! (both must be zero).
//!
//! 1. N clients open (`--open-concurrency` at a time, from 127.0.0.1 ..=
//!    127.0.0.N) and subscribe live to topic i % T; all are subscribed
//!    before the first publish.
//! 2. Publishers publish at `--rate` events per second over the topics
//!    (event n on topic n % T) for `--before-secs` + `--after-secs`.
//! 3. After `--before-secs`, every client drops its TCP connection (no
//!    close frame, like a network change) and reconnects at once, without
//!    any spreading, subscribing with `since` = its topic and the last seq
//!    it holds. A failed attempt is retried after a short back-off
//!    (100 ms doubling up to 2 s) until `--resume-timeout-secs` after the
//!    storm. A client counts as *resumed* once it has its `subscribed`
//!    frame and has received every event up to the head that frame
//!    announced: from then on it is live again.
//! 4. After publishing, one end event per topic; clients stop when theirs
//!    arrives. Each client's seqs, across both connections, give lost,
//!    duplicated and out-of-order events.
//!
//! A client that the server closes later (a slow consumer, `4008`) or whose
//! connection fails reconnects the same way; that is counted under
//! `closed_after_storm`.
//!
//! With `--kill-node` the storm is a node's death instead: the last of
//! three or more started nodes is SIGKILLed, and only its clients
//! reconnect, each to one of the other nodes that hold clients, with its
//! cursor. What is measured is how long until every one of them is resumed
//! there, and whether anything was lost; the other clients stay connected
//! throughout. The server's CPU figures then cover the surviving nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::{self, DEFAULT_SOURCE_IPS, Endpoint, OpenError, Sources, WsStream};
use crate::cpu::ThreadGroupCpu;
use crate::kit::checks::{MAX_SECS, check_connecting, check_secs};
use crate::kit::defaults::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_DATA_BYTES, DEFAULT_DRAIN_SECS, DEFAULT_OPEN_CONCURRENCY,
    DEFAULT_OPEN_TIMEOUT_SECS, DEFAULT_REQUEST_TIMEOUT_SECS,
};
use crate::kit::fds::{SPARE_FDS, check_server_fd_limit};
use crate::kit::figures::Correctness;
use crate::kit::frames::{Frame, Seqs, WS_READ_BUFFER, parse_frame};
use crate::kit::publishing::{
    Plan, PubShared, PubTally, PubTotals, Rate, STOP_SLACK, authorization, http_client,
    join_publishers, publish_ends, publisher,
};
use crate::kit::sampling::{BATCH, Sample, Shards};
use crate::kit::subscribing::{await_opened, drain, subscriber_endpoints};
use crate::report::{Latency, Runs, Table, fmt_counts, fmt_opt, latency_histogram};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Client counts, one run each, by default.
pub const DEFAULT_CLIENTS: [usize; 1] = [1_000];
/// Topics the clients are spread over, by default.
pub const DEFAULT_TOPICS: usize = 100;
/// Events per second over all topics, by default.
pub const DEFAULT_RATE: f64 = 100.0;
/// Concurrent publishers, by default.
pub const DEFAULT_PUBLISHERS: usize = 4;
/// Seconds of publishing before the storm, by default.
pub const DEFAULT_BEFORE_SECS: u64 = 5;
/// Seconds of publishing after it, by default.
pub const DEFAULT_AFTER_SECS: u64 = 15;
/// Seconds after the storm within which every client must have resumed, by
/// default (reconnection attempts stop then).
pub const DEFAULT_RESUME_TIMEOUT_SECS: u64 = 60;

const MAX_CLIENTS: usize = 50_000;
/// First back-off after a failed reconnection attempt; it doubles.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Extra validity of a minted token beyond the planned run time.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// `herald-load storm`.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Client counts, comma-separated: one run each, in turn.
    #[arg(long, env = "HERALD_LOAD_CLIENTS", value_delimiter = ',', default_values_t = DEFAULT_CLIENTS)]
    pub clients: Vec<usize>,
    /// Topics the clients are spread over (client i on topic i % T; at most
    /// the client count).
    #[arg(long, env = "HERALD_LOAD_TOPICS", default_value_t = DEFAULT_TOPICS)]
    pub topics: usize,
    /// Events per second over all topics, published throughout.
    #[arg(long, env = "HERALD_LOAD_RATE", default_value_t = DEFAULT_RATE)]
    pub rate: f64,
    /// Concurrent publishers, each with one HTTP/1.1 connection.
    #[arg(long, env = "HERALD_LOAD_PUBLISHERS", default_value_t = DEFAULT_PUBLISHERS)]
    pub publishers: usize,
    /// Seconds of publishing before every client disconnects.
    #[arg(long, env = "HERALD_LOAD_BEFORE_SECS", default_value_t = DEFAULT_BEFORE_SECS)]
    pub before_secs: u64,
    /// Seconds of publishing after it.
    #[arg(long, env = "HERALD_LOAD_AFTER_SECS", default_value_t = DEFAULT_AFTER_SECS)]
    pub after_secs: u64,
    /// Seconds after the storm within which clients must have resumed.
    #[arg(long, env = "HERALD_LOAD_RESUME_TIMEOUT_SECS", default_value_t = DEFAULT_RESUME_TIMEOUT_SECS)]
    pub resume_timeout_secs: u64,
    /// Bytes of each event's `data`.
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Seconds after the last publish that clients may take to receive
    /// everything.
    #[arg(long, env = "HERALD_LOAD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// Clients being opened at once before the storm (the reconnections
    /// are not limited).
    #[arg(long, env = "HERALD_LOAD_OPEN_CONCURRENCY", default_value_t = DEFAULT_OPEN_CONCURRENCY)]
    pub open_concurrency: usize,
    /// Source addresses: clients are spread over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, env = "HERALD_LOAD_SOURCE_IPS", default_value_t = DEFAULT_SOURCE_IPS)]
    pub source_ips: u8,
    /// Seconds one connection attempt may take (connect, upgrade, subscribe).
    #[arg(long, env = "HERALD_LOAD_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Seconds opening all clients before the storm may take.
    #[arg(long, env = "HERALD_LOAD_OPEN_TIMEOUT_SECS", default_value_t = DEFAULT_OPEN_TIMEOUT_SECS)]
    pub open_timeout_secs: u64,
    /// Seconds one publish may take before it counts as a `timeout` error.
    #[arg(long, env = "HERALD_LOAD_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// Instead of cutting every client at the storm, SIGKILL the last node:
    /// its clients reconnect with their cursors to the other nodes that hold
    /// clients. Needs `--nodes 3` or more started by this tool (the first
    /// takes the publishes) and one `--clients` count.
    #[arg(long, env = "HERALD_LOAD_KILL_NODE")]
    pub kill_node: bool,
}

/// The checked settings of a `storm` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct StormSettings {
    /// `--clients`.
    pub clients: Vec<usize>,
    /// `--topics`.
    pub topics: usize,
    /// `--rate`.
    pub rate: f64,
    /// `--publishers`.
    pub publishers: usize,
    /// `--before-secs`.
    pub before_secs: u64,
    /// `--after-secs`.
    pub after_secs: u64,
    /// `--resume-timeout-secs`.
    pub resume_timeout_secs: u64,
    /// `--data-bytes`.
    pub data_bytes: usize,
    /// `--drain-secs`.
    pub drain_secs: u64,
    /// `--open-concurrency`.
    pub open_concurrency: usize,
    /// `--source-ips`.
    pub source_ips: u8,
    /// `--connect-timeout-secs`.
    pub connect_timeout_secs: u64,
    /// `--open-timeout-secs`.
    pub open_timeout_secs: u64,
    /// `--request-timeout-secs`.
    pub request_timeout_secs: u64,
    /// `--kill-node`.
    pub kill_node: bool,
}

impl Scenario for StormArgs {
    const NAME: &'static str = "storm";
    type Settings = StormSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<StormSettings> {
        if self.clients.is_empty() || self.clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
            bail!("--clients: each count must be 1..={MAX_CLIENTS}");
        }
        if self.topics == 0 {
            bail!("--topics must be at least 1");
        }
        if !(self.rate > 0.0 && self.rate <= 1e6) {
            bail!("--rate must be above 0 and at most 1e6 events/s");
        }
        if self.publishers == 0 || self.publishers > 256 {
            bail!("--publishers must be 1..=256");
        }
        if self.before_secs > MAX_SECS || self.after_secs > MAX_SECS {
            bail!("--before-secs and --after-secs must be at most {MAX_SECS}");
        }
        check_secs(&[
            ("--resume-timeout-secs", self.resume_timeout_secs),
            ("--drain-secs", self.drain_secs),
            ("--connect-timeout-secs", self.connect_timeout_secs),
            ("--open-timeout-secs", self.open_timeout_secs),
            ("--request-timeout-secs", self.request_timeout_secs),
        ])?;

        if self.data_bytes > 60 * 1024 {
            bail!("--data-bytes must be at most 61440");
        }
        check_connecting(self.open_concurrency, self.source_ips)?;
        if self.kill_node && self.clients.len() != 1 {
            bail!("--kill-node: one --clients count (the killed node stays dead)");
        }
        Ok(StormSettings {
            clients: self.clients.clone(),
            topics: self.topics,
            rate: self.rate,
            publishers: self.publishers,
            before_secs: self.before_secs,
            after_secs: self.after_secs,
            resume_timeout_secs: self.resume_timeout_secs,
            data_bytes: self.data_bytes,
            drain_secs: self.drain_secs,
            open_concurrency: self.open_concurrency,
            source_ips: self.source_ips,
            connect_timeout_secs: self.connect_timeout_secs,
            open_timeout_secs: self.open_timeout_secs,
            request_timeout_secs: self.request_timeout_secs,
            kill_node: self.kill_node,
        })
    }

    fn token_secs(s: &StormSettings) -> u64 {
        let per_run = s.open_timeout_secs
            + s.before_secs
            + s.after_secs
            + s.resume_timeout_secs
            + s.request_timeout_secs
            + s.drain_secs;
        per_run * s.clients.len() as u64 + TOKEN_MARGIN_SECS
    }

    fn fds_needed(s: &StormSettings) -> u64 {
        // A client drops its old socket before it opens the new one.
        let most = s.clients.iter().copied().max().unwrap_or(0);
        (most + s.publishers) as u64 + SPARE_FDS
    }

    async fn run(settings: &StormSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        if settings.kill_node && (target.node_urls.len() < 3 || target.pids.is_empty()) {
            bail!(
                "--kill-node: start three nodes or more here (--nodes 3): the first takes the \
                 publishes, the last is killed, the others take its clients"
            );
        }
        for &pid in &target.pids {
            let most = settings.clients.iter().copied().max().unwrap_or(0);
            check_server_fd_limit(pid, most + settings.publishers)?;
        }
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::new();
        for &clients in &settings.clients {
            if !runs.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let topics: Vec<String> = (0..settings.topics.min(clients))
                .map(|i| format!("{TOPIC_PREFIX}.storm.{tag}.r{}.t{i}", runs.len()))
                .collect();
            runs.push(run_once(settings, &mut *target, &endpoints, clients, &topics).await?);
            if !target.is_running() {
                bail!("the server exited during the run with {clients} clients");
            }
        }
        Ok(Runs::Storm(runs))
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormFigures {
    /// Herald nodes (publishes to the first, clients on the others).
    pub nodes: usize,
    /// With `--kill-node`: the node killed (1-based), whose clients moved.
    pub killed_node: Option<usize>,
    /// Clients that had to resume: all of them, or those of the killed node.
    pub storm_clients: usize,
    /// Clients (WebSocket connections).
    pub clients: usize,
    /// Topics they are spread over.
    pub topics: usize,
    /// The asked publishing rate, events/s over all topics.
    pub rate: f64,
    /// Events the topics hold (end events not counted).
    pub events: u64,
    /// Publishes answered `201`.
    pub published: u64,
    /// Failed publishes by kind (must be none).
    pub publish_errors: BTreeMap<String, u64>,
    /// Publishes answered per second.
    pub publish_events_per_sec: f64,
    /// Of the storm's clients, those that resumed (reconnected, subscribed,
    /// caught up with the head announced at resubscription) within
    /// `--resume-timeout-secs`.
    pub resumed: u64,
    /// Clients that did not (must be 0).
    pub not_resumed: u64,
    /// Storm to resubscribed (the `subscribed` frame), ms, over clients.
    pub reconnect_latency: Latency,
    /// Storm to resumed (caught up), ms, over clients.
    pub resume_latency: Latency,
    /// Seconds from the storm until the last client had resumed.
    pub all_resumed_secs: Option<f64>,
    /// Failed reconnection attempts by kind (each was retried).
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Clients closed by the server before the storm, by close code or
    /// `eof` / `error` (they reconnected at the storm).
    pub closed_before_storm: BTreeMap<String, u64>,
    /// Connections closed after the storm (they reconnected again).
    pub closed_after_storm: BTreeMap<String, u64>,
    /// Event frames received over both connections of every client, what a
    /// lossless run delivers (each client, every event of its topic), and
    /// what was lost, duplicated or reordered across the reconnection
    /// (all must be 0, resets too: everything is retained).
    #[serde(flatten)]
    pub correctness: Correctness,
    /// Publisher's send time to the client's read, ms, over every delivery
    /// (replayed ones included).
    pub latency: Latency,
    /// Server CPU from the storm until every client had resumed, seconds.
    pub storm_server_cpu_secs: Option<f64>,
    /// Cores the server kept busy over that time.
    pub storm_server_cores_busy: Option<f64>,
    /// Server CPU over the whole run (first publish to last end event), s.
    pub server_cpu_secs: Option<f64>,
    /// The server's CPU during the storm by thread name.
    pub storm_server_threads: Vec<ThreadGroupCpu>,
    /// Cores this process kept busy during the storm.
    pub storm_client_cores_busy: f64,
    /// Cores everything else kept busy during the storm.
    pub storm_other_cores_busy: f64,
}

impl StormFigures {
    /// Correctness failures: lost, duplicated or reordered events, failed
    /// publishes, clients that did not resume or finish.
    pub fn failures(&self) -> u64 {
        self.correctness.failures() + self.publish_errors.values().sum::<u64>() + self.not_resumed
    }
}

/// The table for a list of runs, with details below it.
pub fn render(runs: &[StormFigures]) -> String {
    let mut table = Table::new(&[
        "nodes",
        "clients",
        "topics",
        "events",
        "resumed",
        "reconn p50 ms",
        "reconn p99 ms",
        "resume p50 ms",
        "resume p99 ms",
        "all resumed s",
        "retries",
        "lost",
        "dup",
        "order",
        "storm srv cores",
        "other cores",
    ]);
    for r in runs {
        table.row(vec![
            match r.killed_node {
                Some(node) => format!("{} (killed {node})", r.nodes),
                None => r.nodes.to_string(),
            },
            r.clients.to_string(),
            r.topics.to_string(),
            r.events.to_string(),
            format!("{}/{}", r.resumed, r.storm_clients),
            format!("{:.1}", r.reconnect_latency.p50_ms),
            format!("{:.1}", r.reconnect_latency.p99_ms),
            format!("{:.1}", r.resume_latency.p50_ms),
            format!("{:.1}", r.resume_latency.p99_ms),
            fmt_opt(r.all_resumed_secs, 2),
            r.reconnect_failures.values().sum::<u64>().to_string(),
            r.correctness.lost.to_string(),
            r.correctness.duplicates.to_string(),
            r.correctness.order_violations.to_string(),
            fmt_opt(r.storm_server_cores_busy, 2),
            format!("{:.2}", r.storm_other_cores_busy),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mut notes = vec![format!(
            "published {} at {:.0}/s; delivery p50 {:.2} ms, p99 {:.2} ms (replays included); \
             deliveries {}/{}",
            r.published,
            r.publish_events_per_sec,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.correctness.deliveries,
            r.correctness.deliveries_expected
        )];
        if !r.reconnect_failures.is_empty() {
            notes.push(format!(
                "failed reconnection attempts (retried): {}",
                fmt_counts(&r.reconnect_failures)
            ));
        }
        if !r.publish_errors.is_empty() {
            notes.push(format!("publish errors: {}", fmt_counts(&r.publish_errors)));
        }
        if !r.closed_before_storm.is_empty() {
            notes.push(format!(
                "closed before the storm: {}",
                fmt_counts(&r.closed_before_storm)
            ));
        }
        if !r.closed_after_storm.is_empty() {
            notes.push(format!(
                "closed after the storm (reconnected again): {}",
                fmt_counts(&r.closed_after_storm)
            ));
        }
        if r.correctness.unfinished > 0 {
            notes.push(format!("{} clients unfinished", r.correctness.unfinished));
        }
        if r.correctness.resets > 0 {
            notes.push(format!("{} resets", r.correctness.resets));
        }
        if !r.storm_server_threads.is_empty() {
            let top: Vec<String> = r
                .storm_server_threads
                .iter()
                .take(4)
                .map(|t| format!("{} x{} {:.0} ms", t.name, t.threads, t.cpu_ms))
                .collect();
            notes.push(format!("server CPU during the storm: {}", top.join("; ")));
        }
        out.push_str(&format!("\n{} clients: {}", r.clients, notes.join("\n  ")));
    }
    out.push('\n');
    out
}

/// What every client task shares.
struct Shared {
    endpoints: Vec<Endpoint>,
    /// With `--kill-node`: the index in `endpoints` of the node killed.
    victim: Option<usize>,
    topics: Vec<String>,
    connect_timeout: Duration,
    permits: Semaphore,
    opened: mpsc::UnboundedSender<Result<(), OpenError>>,
    resumed: mpsc::UnboundedSender<(Duration, Duration)>,
    shards: Shards,
    resume_timeout: Duration,
}

/// What one client counted.
#[derive(Debug, Default)]
struct Tally {
    topic: usize,
    deliveries: u64,
    seqs: Seqs,
    resets: u64,
    end_seq: Option<u64>,
    closed_before: Option<String>,
    closed_after: Vec<String>,
    reconnect_failures: BTreeMap<String, u64>,
    resumed: bool,
}

/// How reading a connection ended.
enum Ended {
    /// The storm began.
    Storm(Instant),
    /// The end event arrived.
    End,
    /// The connection closed (close code, `eof` or `error`).
    Closed(String),
}

/// One client: opens, reads until the storm, reconnects with its cursor,
/// reads until its end event (reconnecting again after any close).
async fn client_task(
    shared: Arc<Shared>,
    index: usize,
    source: Ipv4Addr,
    mut storm: watch::Receiver<Option<Instant>>,
) -> Tally {
    let topic_index = index % shared.topics.len();
    let topic = shared.topics[topic_index].clone();
    let home = index % shared.endpoints.len();
    let endpoint = &shared.endpoints[home];
    // With a node to kill, only its clients move (to one of the others);
    // the rest never leave.
    let (moves, endpoint_after) = match shared.victim {
        None => (true, endpoint),
        Some(victim) if home == victim => {
            let others = shared.endpoints.len() - 1;
            (
                true,
                &shared.endpoints[(index / shared.endpoints.len()) % others],
            )
        }
        Some(_) => (false, endpoint),
    };
    let mut tally = Tally {
        topic: topic_index,
        ..Tally::default()
    };
    let mut batch = Vec::with_capacity(BATCH);
    let Ok(permit) = shared.permits.acquire().await else {
        return tally;
    };
    let opened = tokio::time::timeout(
        shared.connect_timeout,
        client::ws_subscribe_since(endpoint, source, &topic, None, WS_READ_BUFFER),
    )
    .await
    .unwrap_or_else(|_| Err(OpenError("timeout".into())));
    drop(permit);
    let mut ws = match opened {
        Ok((ws, head)) => {
            let _ = shared.opened.send(Ok(()));
            tally.seqs.contiguous = head;
            Some(ws)
        }
        Err(e) => {
            let _ = shared.opened.send(Err(e));
            return tally;
        }
    };
    // Before the storm. With a node to kill, clients do not leave at the
    // storm: those of the killed node are cut by its death.
    let cut_at_storm = shared.victim.is_none();
    let storm_at = loop {
        let ended = match ws.as_mut() {
            Some(conn) => {
                read(
                    conn,
                    &mut tally,
                    &shared,
                    index,
                    &mut batch,
                    None,
                    cut_at_storm.then_some(&mut storm),
                )
                .await
            }
            None => match storm.wait_for(Option::is_some).await {
                Ok(at) => Ended::Storm(at.unwrap_or_else(Instant::now)),
                Err(_) => return tally,
            },
        };
        match ended {
            Ended::Storm(at) => break at,
            Ended::End => {
                shared.shards.record(index, &mut batch);
                return tally;
            }
            // The killed node's death, once the storm has begun.
            Ended::Closed(_) if !cut_at_storm && moves && storm.borrow().is_some() => {
                break storm.borrow().unwrap_or_else(Instant::now);
            }
            Ended::Closed(why) => {
                tally.closed_before.get_or_insert(why);
                ws = None;
            }
        }
    };
    // The storm: drop the connection, no close frame.
    drop(ws);
    let deadline = storm_at + shared.resume_timeout;
    loop {
        let mut backoff = BACKOFF_FIRST;
        let (mut conn, head) = loop {
            if Instant::now() >= deadline {
                shared.shards.record(index, &mut batch);
                return tally;
            }
            let cursor = format!("{topic}:{}", tally.seqs.contiguous);
            let attempt = tokio::time::timeout(
                shared.connect_timeout,
                client::ws_subscribe_since(
                    endpoint_after,
                    source,
                    &topic,
                    Some(&cursor),
                    WS_READ_BUFFER,
                ),
            )
            .await
            .unwrap_or_else(|_| Err(OpenError("timeout".into())));
            match attempt {
                Ok(opened) => break opened,
                Err(e) => {
                    *tally.reconnect_failures.entry(e.0).or_default() += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        let resubscribed = storm_at.elapsed();
        let catch_up = if tally.resumed || !moves {
            None
        } else if tally.seqs.contiguous >= head {
            tally.resumed = true;
            let _ = shared.resumed.send((resubscribed, resubscribed));
            None
        } else {
            Some((head, resubscribed))
        };
        match read(
            &mut conn,
            &mut tally,
            &shared,
            index,
            &mut batch,
            catch_up.map(|c| (c.0, c.1, storm_at)),
            None,
        )
        .await
        {
            Ended::End | Ended::Storm(_) => {
                shared.shards.record(index, &mut batch);
                return tally;
            }
            Ended::Closed(why) => tally.closed_after.push(why),
        }
    }
}

/// Reads a connection until the storm (when `storm` is given), the end
/// event or a close. `catch_up`: (head, resubscribed after, storm time):
/// report the client resumed once its seqs reach the head.
async fn read(
    ws: &mut WsStream,
    tally: &mut Tally,
    shared: &Shared,
    index: usize,
    batch: &mut Vec<u64>,
    mut catch_up: Option<(u64, Duration, Instant)>,
    mut storm: Option<&mut watch::Receiver<Option<Instant>>>,
) -> Ended {
    loop {
        let message = match storm.as_deref_mut() {
            Some(storm) => tokio::select! {
                m = ws.next() => m,
                at = storm.wait_for(Option::is_some) => {
                    return Ended::Storm(at.ok().and_then(|a| *a).unwrap_or_else(Instant::now));
                }
            },
            None => ws.next().await,
        };
        match message {
            Some(Ok(Message::Text(text))) => match parse_frame(text.as_str()) {
                Frame::Event { seq, sent_ns } => {
                    tally.deliveries += 1;
                    tally.seqs.see(seq);
                    if let Some(sent) = sent_ns {
                        shared.shards.keep(index, batch, sent);
                    }
                    if let Some((head, resubscribed, storm_at)) = catch_up
                        && tally.seqs.contiguous >= head
                    {
                        tally.resumed = true;
                        let _ = shared.resumed.send((resubscribed, storm_at.elapsed()));
                        catch_up = None;
                    }
                }
                Frame::End { seq } => {
                    tally.end_seq = Some(seq);
                    return Ended::End;
                }
                Frame::Reset => tally.resets += 1,
                Frame::Other => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Ended::Closed(
                    frame.map_or_else(|| "close".to_owned(), |f| u16::from(f.code).to_string()),
                );
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return Ended::Closed("error".into()),
            None => return Ended::Closed("eof".into()),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The clients of a run, every one of them open and subscribed live.
struct Opened {
    /// How many.
    count: usize,
    /// How many the storm makes reconnect: all, or the killed node's.
    storm_clients: usize,
    shared: Arc<Shared>,
    tasks: JoinSet<Tally>,
    /// Each client's (resubscribed, resumed) times after the storm.
    resumed: mpsc::UnboundedReceiver<(Duration, Duration)>,
    /// Starts the storm.
    storm: watch::Sender<Option<Instant>>,
}

/// Publishing under way, from the start of the window.
struct Publishing {
    shared: Arc<PubShared>,
    pubs: JoinSet<PubTally>,
    before: Sample,
    request_timeout: Duration,
}

/// The storm: from the moment every client dropped its connection until
/// every one had resumed (or `--resume-timeout-secs` was over).
struct Storm {
    began: Sample,
    ended: Sample,
    /// Storm to resubscribed, µs, over clients.
    reconnect: Histogram<u64>,
    /// Storm to resumed, µs, over clients.
    resume: Histogram<u64>,
    resumed: u64,
}

/// What the publishers and the clients counted over the window.
struct Drained {
    /// The first publish.
    start: Instant,
    before: Sample,
    pub_tallies: Vec<PubTally>,
    end_seqs: BTreeMap<String, u64>,
    tallies: Vec<Tally>,
    unfinished: u64,
    after: Sample,
}

/// One run: `clients` clients spread over `topics` and `endpoints`, the
/// storm after `--before-secs` of publishing, one end event per topic;
/// what it measured.
async fn run_once(
    settings: &StormSettings,
    target: &mut Target,
    endpoints: &[Endpoint],
    clients: usize,
    topics: &[String],
) -> anyhow::Result<StormFigures> {
    // With a node to kill: the last one, and CPU is measured on the others
    // from the start, so that every figure covers the same processes.
    let victim = settings.kill_node.then(|| endpoints.len() - 1);
    let measured: Vec<u32> = match victim {
        Some(_) => target.pids[..target.pids.len() - 1].to_vec(),
        None => target.pids.clone(),
    };
    let mut opened = open(settings, endpoints, victim, clients, topics).await?;
    let publishing = publish(settings, target, &measured, topics)?;
    let storm = storm(settings, target, &measured, &publishing, &mut opened).await?;
    let drained = drain_clients(settings, &measured, &mut opened.tasks, publishing, topics).await?;
    measure(settings, target, topics, &opened, storm, drained)
}

/// Opens the clients, all subscribed before the first publish.
async fn open(
    settings: &StormSettings,
    endpoints: &[Endpoint],
    victim: Option<usize>,
    clients: usize,
    topics: &[String],
) -> anyhow::Result<Opened> {
    let sources = Sources::new(settings.source_ips)?;
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let (resumed_tx, resumed_rx) = mpsc::unbounded_channel();
    let (storm_tx, storm_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        endpoints: endpoints.to_vec(),
        victim,
        topics: topics.to_vec(),
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        permits: Semaphore::new(settings.open_concurrency),
        opened: opened_tx,
        resumed: resumed_tx,
        shards: Shards::new(),
        resume_timeout: Duration::from_secs(settings.resume_timeout_secs),
    });
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        tasks.spawn(client_task(
            shared.clone(),
            i,
            sources.nth(i),
            storm_rx.clone(),
        ));
    }
    drop(storm_rx);
    await_opened(
        &mut opened_rx,
        clients,
        settings.open_timeout_secs,
        "clients",
    )
    .await?;
    let storm_clients = match victim {
        Some(v) => (0..clients).filter(|i| i % endpoints.len() == v).count(),
        None => clients,
    };
    Ok(Opened {
        count: clients,
        storm_clients,
        shared,
        tasks,
        resumed: resumed_rx,
        storm: storm_tx,
    })
}

/// Starts the publishers, which publish throughout: before the storm,
/// during it and after it.
fn publish(
    settings: &StormSettings,
    target: &Target,
    pids: &[u32],
    topics: &[String],
) -> anyhow::Result<Publishing> {
    let authorization = authorization(target)?;
    let request_timeout = Duration::from_secs(settings.request_timeout_secs);
    let publish_secs = settings.before_secs + settings.after_secs;
    let before = Sample::take(pids)?;
    let plan = Plan {
        topics: topics.to_vec(),
        rate: Rate::PerSec(settings.rate),
        events: (settings.rate * publish_secs as f64).ceil().max(1.0) as u64,
        duration: Duration::from_secs(publish_secs),
        data_bytes: settings.data_bytes,
    };
    let shared = Arc::new(PubShared::new(target, authorization, plan, Instant::now()));
    let mut pubs = JoinSet::new();
    for _ in 0..settings.publishers {
        pubs.spawn(publisher(shared.clone(), http_client(request_timeout)?));
    }
    Ok(Publishing {
        shared,
        pubs,
        before,
        request_timeout,
    })
}

/// After `--before-secs` of publishing, has every client drop its
/// connection at once, and waits until every one has resumed.
async fn storm(
    settings: &StormSettings,
    target: &mut Target,
    pids: &[u32],
    publishing: &Publishing,
    opened: &mut Opened,
) -> anyhow::Result<Storm> {
    let start = publishing.shared.start;
    tokio::time::sleep_until((start + Duration::from_secs(settings.before_secs)).into()).await;
    let began = Sample::take(pids)?;
    let storm_at = began.at;
    let _ = opened.storm.send(Some(storm_at));
    if settings.kill_node {
        let last = target.node_urls.len() - 1;
        target.kill_node(last)?;
    }
    let resume_deadline = storm_at + Duration::from_secs(settings.resume_timeout_secs);
    let mut reconnect = latency_histogram();
    let mut resume = latency_histogram();
    let mut resumed = 0u64;
    while resumed < opened.storm_clients as u64 {
        match tokio::time::timeout_at(resume_deadline.into(), opened.resumed.recv()).await {
            Ok(Some((reconnected_after, resumed_after))) => {
                reconnect.saturating_record(micros(reconnected_after));
                resume.saturating_record(micros(resumed_after));
                resumed += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let ended = Sample::take(pids)?;
    Ok(Storm {
        began,
        ended,
        reconnect,
        resume,
        resumed,
    })
}

/// Waits for publishing to end, publishes one end event per topic, then
/// waits for every client to have its own (at most `--drain-secs`).
async fn drain_clients(
    settings: &StormSettings,
    pids: &[u32],
    tasks: &mut JoinSet<Tally>,
    publishing: Publishing,
    topics: &[String],
) -> anyhow::Result<Drained> {
    let Publishing {
        shared,
        pubs,
        before,
        request_timeout,
    } = publishing;
    let stop_by = shared.deadline + request_timeout + STOP_SLACK;
    let pub_tallies = join_publishers(pubs, stop_by).await?;
    let end_client = http_client(request_timeout)?;
    let end_seqs = publish_ends(&end_client, &shared.url, &shared.authorization, topics).await?;
    let drain_deadline = Instant::now() + Duration::from_secs(settings.drain_secs);
    let (tallies, unfinished) = drain(tasks, drain_deadline, "client").await?;
    let after = Sample::take(pids)?;
    tasks.shutdown().await;
    Ok(Drained {
        start: shared.start,
        before,
        pub_tallies,
        end_seqs,
        tallies,
        unfinished,
        after,
    })
}

/// The run's figures, from what the phases gathered.
fn measure(
    settings: &StormSettings,
    target: &Target,
    topics: &[String],
    opened: &Opened,
    storm: Storm,
    drained: Drained,
) -> anyhow::Result<StormFigures> {
    let held = |t: usize| drained.end_seqs.get(&topics[t]).map_or(0, |seq| seq - 1);
    let events: u64 = (0..topics.len()).map(held).sum();
    let totals = PubTotals::of(&drained.pub_tallies, drained.start);
    let mut correctness = Correctness {
        unfinished: drained.unfinished,
        ..Correctness::default()
    };
    let mut reconnect_failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut closed_before_storm: BTreeMap<String, u64> = BTreeMap::new();
    let mut closed_after_storm: BTreeMap<String, u64> = BTreeMap::new();
    for t in &drained.tallies {
        correctness.count(held(t.topic), t.deliveries, &t.seqs, t.resets);
        for (kind, n) in &t.reconnect_failures {
            *reconnect_failures.entry(kind.clone()).or_default() += n;
        }
        if let Some(why) = &t.closed_before {
            *closed_before_storm.entry(why.clone()).or_default() += 1;
        }
        for why in &t.closed_after {
            *closed_after_storm.entry(why.clone()).or_default() += 1;
        }
    }
    let during = storm.began.until(&storm.ended)?;
    let publish_window = totals
        .last_answer
        .duration_since(drained.start)
        .as_secs_f64()
        .max(1e-9);
    let clients = opened.count;
    let not_resumed = (opened.storm_clients as u64).saturating_sub(storm.resumed);
    Ok(StormFigures {
        nodes: target.node_urls.len(),
        killed_node: settings.kill_node.then_some(target.node_urls.len()),
        storm_clients: opened.storm_clients,
        clients,
        topics: topics.len(),
        rate: settings.rate,
        events,
        published: totals.published,
        publish_errors: totals.errors,
        publish_events_per_sec: totals.published as f64 / publish_window,
        resumed: storm.resumed,
        not_resumed,
        reconnect_latency: Latency::from_histogram(&storm.reconnect),
        resume_latency: Latency::from_histogram(&storm.resume),
        all_resumed_secs: (not_resumed == 0).then(|| storm.resume.max() as f64 / 1e6),
        reconnect_failures,
        closed_before_storm,
        closed_after_storm,
        correctness,
        latency: Latency::from_histogram(&opened.shared.shards.merged()),
        storm_server_cores_busy: during.server_cpu_secs.map(|s| s / during.secs),
        storm_other_cores_busy: during.other_cpu_secs() / during.secs,
        storm_server_cpu_secs: during.server_cpu_secs,
        server_cpu_secs: drained.before.server_cpu_until(&drained.after),
        storm_server_threads: during.server_threads,
        storm_client_cores_busy: during.client_cpu_secs / during.secs,
    })
}
