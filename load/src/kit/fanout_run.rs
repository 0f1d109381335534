//! The fan-out run that `fanout`, `topics` and `soak` are made of: S
//! WebSocket subscribers spread over T topics, M events published to them
//! through `POST /v1/publish` (at a rate, or flat out), each event's
//! `data` carrying the publisher's send time, then one end event per
//! topic. Every subscriber checks what it receives (lost, duplicated and
//! out-of-order seqs) and measures publish-to-delivery latency.
//!
//! A run has four phases: **open** (every subscriber subscribed before the
//! first publish), **publish** (the measured window starts with the first
//! publish), **drain** (the end events, then every subscriber until it has
//! its end event or `--drain-secs` are over; the window ends there) and
//! **measure** (the figures, from the tallies and the CPU samples).
//!
//! Subscribers are tasks that read frames and parse only what they need
//! from an event frame: the `seq`, and the send time in `data`. Latencies
//! are recorded in batches into a few shared histograms (one HDR histogram
//! per subscriber at 3 significant digits would take about 140 KB each).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::checks::{check_connecting, check_secs};
use super::fds::SPARE_FDS;
use super::figures::{Correctness, ServerCost, per_million};
use super::frames::{Frame, Seqs, WS_READ_BUFFER, parse_frame};
use super::publishing::{
    Plan, PubShared, PubTally, PubTotals, Rate, STOP_SLACK, authorization, http_client,
    join_publishers, publish_ends, publisher,
};
use super::sampling::{BATCH, Sample, Shards};
use super::subscribing::{await_opened, drain};
use crate::client::{self, Endpoint, OpenError, Sources, WsStream};
use crate::report::{Latency, Table, fmt_counts, fmt_opt, fmt_server_threads};
use crate::target::Target;

const MAX_SUBSCRIBERS: usize = 50_000;
const MAX_EVENTS: u64 = 10_000_000;
const MAX_PUBLISHERS: usize = 256;
const MAX_DATA_BYTES: usize = 60 * 1024;
/// Extra validity of a minted token beyond the planned run time.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// The checked settings of a fan-out run.
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

impl FanoutSettings {
    /// These settings, once they are checked (error messages name the
    /// `fanout` arguments).
    pub fn checked(self) -> anyhow::Result<FanoutSettings> {
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
        Ok(self)
    }

    /// How long a minted token must stay valid: every run, in full.
    pub fn token_secs(&self) -> u64 {
        let per_run = self.open_timeout_secs
            + self.duration_secs
            + self.request_timeout_secs
            + self.drain_secs;
        per_run * (self.subscribers.len() * self.rate.len()) as u64 + TOKEN_MARGIN_SECS
    }

    /// Open files the largest run holds: its subscribers and publishers.
    pub fn fds_needed(&self) -> u64 {
        (self.most_subscribers() + self.publishers) as u64 + SPARE_FDS
    }

    /// The largest subscriber count.
    pub fn most_subscribers(&self) -> usize {
        self.subscribers.iter().copied().max().unwrap_or(0)
    }
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
    /// Deliveries (what a lossless run delivers: for each subscriber, the
    /// events of its topic, `subscribers * events` with one topic), and
    /// what was lost, duplicated or reordered.
    #[serde(flatten)]
    pub correctness: Correctness,
    /// From the first publish until the last subscriber had the end event.
    pub window_secs: f64,
    /// `deliveries / window_secs`.
    pub deliveries_per_sec: f64,
    /// Publisher's send time (in `data`) to the subscriber's read, ms, over
    /// every delivery (same machine, same clock).
    pub latency: Latency,
    /// Subscribers the server closed before the end event, by close code
    /// (`4008`: slow consumer) or `eof` / `error`.
    pub closed_early: BTreeMap<String, u64>,
    /// The server's CPU in the window, per million deliveries and by thread.
    #[serde(flatten)]
    pub cost: ServerCost,
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
        self.correctness.failures() + self.publish_failed
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
        let c = &r.correctness;
        table.row(vec![
            r.nodes.to_string(),
            r.topics.to_string(),
            r.subscribers.to_string(),
            r.rate.to_string(),
            r.events.to_string(),
            format!("{:.0}", r.publish_events_per_sec),
            c.deliveries.to_string(),
            format!("{:.0}", r.deliveries_per_sec),
            format!("{:.2}", r.latency.p50_ms),
            format!("{:.2}", r.latency.p90_ms),
            format!("{:.2}", r.latency.p99_ms),
            format!("{:.2}", r.latency.max_ms),
            c.lost.to_string(),
            c.duplicates.to_string(),
            c.order_violations.to_string(),
            r.closed_early.values().sum::<u64>().to_string(),
            fmt_opt(r.cost.server_cpu_secs_per_million_deliveries, 2),
            fmt_opt(r.cost.server_cores_busy, 2),
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
            notes.push(format!("publish errors {}", fmt_counts(&r.publish_errors)));
        }
        if !r.closed_early.is_empty() {
            notes.push(format!(
                "subscribers closed early (4008 = slow consumer): {}",
                fmt_counts(&r.closed_early)
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
        if r.correctness.unfinished > 0 {
            notes.push(format!(
                "{} subscribers unfinished",
                r.correctness.unfinished
            ));
        }
        if r.correctness.resets > 0 {
            notes.push(format!("{} resets", r.correctness.resets));
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
        if !r.cost.server_threads.is_empty() {
            notes.push(fmt_server_threads(&r.cost.server_threads));
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
                        shared.shards.keep(index, &mut batch, sent);
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

/// The subscribers of a run, every one of them open.
struct Opened {
    /// How many.
    count: usize,
    shared: Arc<SubShared>,
    tasks: JoinSet<(SubTally, Option<WsStream>)>,
}

/// What the publishers did, from the start of the window.
struct Published {
    shared: Arc<PubShared>,
    before: Sample,
    tallies: Vec<PubTally>,
    /// The client that publishes the end events.
    end_client: reqwest::Client,
}

/// What the subscribers received, up to the end of the window.
struct Drained {
    end_seqs: BTreeMap<String, u64>,
    tallies: Vec<SubTally>,
    unfinished: u64,
    after: Sample,
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
    let mut opened = open(settings, endpoints, subscribers, topics).await?;
    let published = publish(settings, target, rate, topics).await?;
    let drained =
        drain_subscribers(settings, target, &mut opened.tasks, &published, topics).await?;
    measure(settings, target, rate, topics, &opened, &published, drained)
}

/// Opens the subscribers, all subscribed before the first publish.
async fn open(
    settings: &FanoutSettings,
    endpoints: &[Endpoint],
    subscribers: usize,
    topics: &[String],
) -> anyhow::Result<Opened> {
    let sources = Sources::new(settings.source_ips)?;
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(SubShared {
        endpoints: endpoints.to_vec(),
        topics: topics.to_vec(),
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        permits: Semaphore::new(settings.open_concurrency),
        opened: opened_tx,
        shards: Shards::new(),
    });
    let mut tasks = JoinSet::new();
    for i in 0..subscribers {
        tasks.spawn(subscriber(shared.clone(), i, sources.nth(i)));
    }
    await_opened(
        &mut opened_rx,
        subscribers,
        settings.open_timeout_secs,
        "subscribers",
    )
    .await?;
    Ok(Opened {
        count: subscribers,
        shared,
        tasks,
    })
}

/// Publishes the events, measured from the first publish, until every
/// event is published or `--duration-secs` is over.
async fn publish(
    settings: &FanoutSettings,
    target: &Target,
    rate: Rate,
    topics: &[String],
) -> anyhow::Result<Published> {
    let authorization = authorization(target)?;
    let request_timeout = Duration::from_secs(settings.request_timeout_secs);
    let clients = (0..settings.publishers)
        .map(|_| http_client(request_timeout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let end_client = http_client(request_timeout)?;
    let before = Sample::take_with_db(&target.pids, target.db_pid)?;
    let plan = Plan {
        topics: topics.to_vec(),
        rate,
        events: settings.events,
        duration: Duration::from_secs(settings.duration_secs),
        data_bytes: settings.data_bytes,
    };
    let shared = Arc::new(PubShared::new(target, authorization, plan, Instant::now()));
    let mut pubs = JoinSet::new();
    for client in clients {
        pubs.spawn(publisher(shared.clone(), client));
    }
    let stop_by = shared.deadline + request_timeout + STOP_SLACK;
    let tallies = join_publishers(pubs, stop_by).await?;
    Ok(Published {
        shared,
        before,
        tallies,
        end_client,
    })
}

/// Publishes the end event on every topic, then waits for every subscriber
/// to have it (at most `--drain-secs`); the window ends there. The
/// connections are closed after it.
async fn drain_subscribers(
    settings: &FanoutSettings,
    target: &Target,
    tasks: &mut JoinSet<(SubTally, Option<WsStream>)>,
    published: &Published,
    topics: &[String],
) -> anyhow::Result<Drained> {
    let shared = &published.shared;
    let end_seqs = publish_ends(
        &published.end_client,
        &shared.url,
        &shared.authorization,
        topics,
    )
    .await?;
    let drain_deadline = Instant::now() + Duration::from_secs(settings.drain_secs);
    let (done, unfinished) = drain(tasks, drain_deadline, "subscriber").await?;
    let (tallies, connections): (Vec<SubTally>, Vec<Option<WsStream>>) = done.into_iter().unzip();
    let after = Sample::take_with_db(&target.pids, target.db_pid)?;
    // Closing the connections is not part of the window.
    tasks.shutdown().await;
    drop(connections);
    Ok(Drained {
        end_seqs,
        tallies,
        unfinished,
        after,
    })
}

/// The run's figures, from what the phases gathered.
fn measure(
    settings: &FanoutSettings,
    target: &Target,
    rate: Rate,
    topics: &[String],
    opened: &Opened,
    published: &Published,
    drained: Drained,
) -> anyhow::Result<FanoutFigures> {
    let held = |topic: usize| {
        drained
            .end_seqs
            .get(&topics[topic])
            .map_or(0, |seq| seq - 1)
    };
    let events: u64 = (0..topics.len()).map(held).sum();
    let start = published.shared.start;
    let totals = PubTotals::of(&published.tallies, start);
    let mut correctness = Correctness {
        unfinished: drained.unfinished,
        ..Correctness::default()
    };
    let mut closed_early: BTreeMap<String, u64> = BTreeMap::new();
    for t in &drained.tallies {
        correctness.count(held(t.topic), t.deliveries, &t.seqs, t.resets);
        if let Some(why) = &t.closed {
            *closed_early.entry(why.clone()).or_default() += 1;
        }
    }
    let deliveries = correctness.deliveries;
    let spent = published.before.until(&drained.after)?;
    let window_secs = spent.secs;
    let publish_secs = totals
        .last_answer
        .duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    Ok(FanoutFigures {
        nodes: target.node_urls.len(),
        topics: topics.len(),
        subscribers: opened.count,
        rate,
        publishers: settings.publishers,
        events_planned: settings.events,
        events,
        published: totals.published,
        publish_failed: totals.errors.values().sum(),
        publish_errors: totals.errors,
        publish_secs,
        publish_events_per_sec: totals.published as f64 / publish_secs,
        publish_latency: Latency::from_histogram(&totals.latency),
        stopped_by: published.shared.stopped_by(),
        correctness,
        window_secs,
        deliveries_per_sec: deliveries as f64 / window_secs,
        latency: Latency::from_histogram(&opened.shared.shards.merged()),
        closed_early,
        cost: ServerCost::of(&spent, deliveries),
        client_cpu_secs: spent.client_cpu_secs,
        client_cores_busy: spent.client_cpu_secs / window_secs,
        other_cores_busy: spent.other_cpu_secs() / window_secs,
        db_cpu_secs: spent.db_cpu_secs,
        db_cpu_secs_per_million_deliveries: per_million(spent.db_cpu_secs, deliveries),
    })
}
