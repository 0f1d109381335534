//! `publish`: C concurrent publishers, each looping `POST /v1/publish` with
//! one small event and waiting for its answer before sending the next, for a
//! warm-up (not measured) and then a measured window; once per C in
//! `--concurrency`.
//!
//! Each publisher has its own HTTP client, so it holds exactly one HTTP/1.1
//! keep-alive connection, like C independent publishing services would; a
//! shared pool would hand connections between publishers and put a lock on
//! every request's path in the client, which is not what a server sees from
//! real publishers. Connections are opened during the warm-up.
//!
//! Every answer must be `201` with the publisher's topic and a seq above the
//! one before it on that topic (a publisher waits for each answer, so its own
//! events are ordered). Anything else is counted, never hidden.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use tokio::task::JoinSet;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::cpu::{self, ThreadGroupCpu, ThreadSample};
use crate::kit::publishing::{
    Receipt, STOP_SLACK, authorization, classify, http_client, join_publishers,
};
use crate::report::{
    Latency, Runs, Table, fmt_counts, fmt_opt, fmt_server_threads, latency_histogram,
};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Publisher counts, one run each, by default.
pub const DEFAULT_CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Measured seconds per run, by default.
pub const DEFAULT_DURATION_SECS: u64 = 10;
/// Unmeasured seconds before each run's window, by default.
pub const DEFAULT_WARMUP_SECS: u64 = 2;
/// Most measured publishes per run, by default.
pub const DEFAULT_MAX_EVENTS: u64 = 5_000_000;
/// Topics per run, by default: all publishers on one.
pub const DEFAULT_TOPICS: usize = 1;
/// Size of each event's `data` (its JSON text), by default.
pub const DEFAULT_DATA_BYTES: usize = 100;
/// Seconds one request may take before it counts as a `timeout` error.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;

const MAX_CONCURRENCY: usize = 10_000;
const MAX_DURATION_SECS: u64 = 3_600;
const MAX_DATA_BYTES: usize = 60 * 1024;
/// A publisher waits this long after a failed request, so that a dead or
/// refusing server is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Idle time between runs, so one run's closing connections and queued work
/// do not land in the next one's window.
const PAUSE_BETWEEN_RUNS: Duration = Duration::from_millis(500);
/// Extra validity of a minted token beyond the planned run time.
const TOKEN_MARGIN_SECS: u64 = 3_600;

/// `herald-load publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Publisher counts, comma-separated: one run each, in turn.
    #[arg(long, env = "HERALD_LOAD_CONCURRENCY", value_delimiter = ',', default_values_t = DEFAULT_CONCURRENCY)]
    pub concurrency: Vec<usize>,
    /// Measured seconds per run.
    #[arg(long, env = "HERALD_LOAD_DURATION_SECS", default_value_t = DEFAULT_DURATION_SECS)]
    pub duration_secs: u64,
    /// Seconds of load before each run's measured window (connections open,
    /// caches fill); not measured.
    #[arg(long, env = "HERALD_LOAD_WARMUP_SECS", default_value_t = DEFAULT_WARMUP_SECS)]
    pub warmup_secs: u64,
    /// Most measured publishes per run (the run ends early when reached);
    /// the warm-up has the same cap.
    #[arg(long, env = "HERALD_LOAD_MAX_EVENTS", default_value_t = DEFAULT_MAX_EVENTS)]
    pub max_events: u64,
    /// Topics per run: publisher i publishes to topic i % N (1: all on one).
    #[arg(long, env = "HERALD_LOAD_TOPICS", default_value_t = DEFAULT_TOPICS)]
    pub topics: usize,
    /// Bytes of each event's `data` (its JSON text).
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Seconds one request may take before it counts as a `timeout` error.
    #[arg(long, env = "HERALD_LOAD_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
}

/// The checked settings of a `publish` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct PublishSettings {
    pub concurrency: Vec<usize>,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub max_events: u64,
    pub topics: usize,
    pub data_bytes: usize,
    pub request_timeout_secs: u64,
}

impl Scenario for PublishArgs {
    const NAME: &'static str = "publish";
    type Settings = PublishSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<PublishSettings> {
        if self.concurrency.is_empty()
            || self
                .concurrency
                .iter()
                .any(|&c| c == 0 || c > MAX_CONCURRENCY)
        {
            bail!("--concurrency: each count must be 1..={MAX_CONCURRENCY}");
        }
        if self.duration_secs == 0 || self.duration_secs > MAX_DURATION_SECS {
            bail!("--duration-secs must be 1..={MAX_DURATION_SECS}");
        }
        if self.warmup_secs > MAX_DURATION_SECS {
            bail!("--warmup-secs must be at most {MAX_DURATION_SECS}");
        }
        if self.max_events == 0 {
            bail!("--max-events must be at least 1");
        }
        if self.topics == 0 || self.topics > MAX_CONCURRENCY {
            bail!("--topics must be 1..={MAX_CONCURRENCY}");
        }
        if self.data_bytes > MAX_DATA_BYTES {
            bail!("--data-bytes must be at most {MAX_DATA_BYTES}");
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > MAX_DURATION_SECS {
            bail!("--request-timeout-secs must be 1..={MAX_DURATION_SECS}");
        }
        Ok(PublishSettings {
            concurrency: self.concurrency.clone(),
            duration_secs: self.duration_secs,
            warmup_secs: self.warmup_secs,
            max_events: self.max_events,
            topics: self.topics,
            data_bytes: self.data_bytes,
            request_timeout_secs: self.request_timeout_secs,
        })
    }

    fn token_secs(settings: &PublishSettings) -> u64 {
        let per_run = settings.warmup_secs + settings.duration_secs + settings.request_timeout_secs;
        per_run * settings.concurrency.len() as u64 + TOKEN_MARGIN_SECS
    }

    async fn run(settings: &PublishSettings, target: &mut Target) -> anyhow::Result<Runs> {
        // Fresh topics per invocation, so that a reused server or database
        // starts every run at seq 1 and runs never share a topic.
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::with_capacity(settings.concurrency.len());
        for (i, &publishers) in settings.concurrency.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(PAUSE_BETWEEN_RUNS).await;
            }
            let run_tag = format!("{tag}.r{i}");
            runs.push(run_once(settings, target, publishers, &run_tag).await?);
            if !target.is_running() {
                bail!("the server exited during the run with {publishers} publishers");
            }
        }
        Ok(Runs::Publish(runs))
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// Concurrent publishers.
    pub publishers: usize,
    /// Topics they published to.
    pub topics: usize,
    /// Publishes answered `201` that started in the measured window.
    pub events: u64,
    /// The window: from its start until the last publisher stopped (its
    /// last request, started before the end, included).
    pub elapsed_secs: f64,
    /// `events / elapsed_secs`.
    pub events_per_sec: f64,
    /// Latency of those publishes, from sending the request to the end of
    /// the answer's body.
    pub latency: Latency,
    /// Failed requests over the whole run, warm-up included: the HTTP
    /// status of a non-201 answer, or `timeout`, `connect`, `request`,
    /// `body` (transport failures), `unreadable_answer` (a 201 whose body is
    /// not a receipt for the event's topic).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub failed: u64,
    /// Receipts whose seq was not above the previous one of the same
    /// publisher on the same topic (must be 0).
    pub order_violations: u64,
    /// Receipts whose seq was checked (warm-up included).
    pub receipts_checked: u64,
    /// `duration` or `max_events`.
    pub stopped_by: &'static str,
    /// Server CPU time (user + system) in the window, when measured.
    pub server_cpu_ms: Option<f64>,
    /// `server_cpu_ms` per 1,000 events.
    pub server_cpu_ms_per_1k_events: Option<f64>,
    /// `server_cpu_ms / elapsed`: cores the server kept busy on average.
    pub server_cores_busy: Option<f64>,
    /// The server's CPU in the window by thread name, largest first.
    pub server_threads: Vec<ThreadGroupCpu>,
    /// The database server's CPU time in the window (`--db-pid`: the
    /// process and its live children), when measured.
    pub db_cpu_ms: Option<f64>,
    /// `db_cpu_ms` per 1,000 events.
    pub db_cpu_ms_per_1k_events: Option<f64>,
    /// Cores the database server kept busy on average.
    pub db_cores_busy: Option<f64>,
    /// This process's CPU time in the window.
    pub client_cpu_ms: f64,
    /// `client_cpu_ms` per 1,000 events.
    pub client_cpu_ms_per_1k_events: Option<f64>,
    /// Cores the load generator kept busy on average.
    pub client_cores_busy: f64,
}

/// The table for a list of runs, with error and thread details below it.
pub fn render(runs: &[RunFigures]) -> String {
    let mut table = Table::new(&[
        "publishers",
        "topics",
        "events",
        "events/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "srv CPU-ms/1k",
        "srv cores",
        "db CPU-ms/1k",
        "db cores",
        "client CPU-ms/1k",
        "client cores",
    ]);
    for r in runs {
        table.row(vec![
            r.publishers.to_string(),
            r.topics.to_string(),
            r.events.to_string(),
            format!("{:.0}", r.events_per_sec),
            format!("{:.2}", r.latency.p50_ms),
            format!("{:.2}", r.latency.p90_ms),
            format!("{:.2}", r.latency.p99_ms),
            format!("{:.2}", r.latency.max_ms),
            (r.failed + r.order_violations).to_string(),
            fmt_opt(r.server_cpu_ms_per_1k_events, 1),
            fmt_opt(r.server_cores_busy, 2),
            fmt_opt(r.db_cpu_ms_per_1k_events, 1),
            fmt_opt(r.db_cores_busy, 2),
            fmt_opt(r.client_cpu_ms_per_1k_events, 1),
            format!("{:.2}", r.client_cores_busy),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mut notes = Vec::new();
        if !r.errors.is_empty() {
            notes.push(format!("errors {}", fmt_counts(&r.errors)));
        }
        if r.order_violations > 0 {
            notes.push(format!("{} seqs out of order", r.order_violations));
        }
        if r.stopped_by != "duration" {
            notes.push(format!("stopped by {}", r.stopped_by));
        }
        if !r.server_threads.is_empty() {
            notes.push(fmt_server_threads(&r.server_threads));
        }
        if !notes.is_empty() {
            out.push_str(&format!(
                "\n{} publishers: {}",
                r.publishers,
                notes.join("\n  ")
            ));
        }
    }
    out.push('\n');
    out
}

/// What every publisher of a run shares.
struct Shared {
    url: String,
    authorization: HeaderValue,
    measure_from: Instant,
    measure_until: Instant,
    warmup_budget: AtomicU64,
    budget: AtomicU64,
    pad: String,
    data_bytes: usize,
}

/// What one publisher counted.
struct Tally {
    latency: Histogram<u64>,
    events: u64,
    errors: BTreeMap<String, u64>,
    order_violations: u64,
    receipts_checked: u64,
}

impl Tally {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// CPU counters and the time they were read.
struct Sample {
    at: Instant,
    server: Option<(Duration, ThreadSample)>,
    db: Option<Duration>,
    client: Duration,
}

impl Sample {
    fn take(server_pid: Option<u32>, db_pid: Option<u32>) -> anyhow::Result<Sample> {
        let server = match server_pid {
            Some(pid) => Some((
                cpu::process_cpu(pid).context("reading the server's CPU time")?,
                cpu::thread_sample(pid),
            )),
            None => None,
        };
        let db = match db_pid {
            Some(pid) => {
                Some(cpu::process_tree_cpu(pid).context("reading the database's CPU time")?)
            }
            None => None,
        };
        Ok(Sample {
            at: Instant::now(),
            server,
            db,
            client: cpu::own_cpu()?,
        })
    }
}

/// Takes one unit of `budget`; false when it is spent.
fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

/// The JSON body of publisher `index`'s `n`th event: `data` is padded to
/// `data_bytes` (or just over, when the counters alone are longer).
fn event_body(topic: &str, index: usize, n: u64, pad: &str, data_bytes: usize) -> String {
    let bare = format!(r#"{{"publisher":{index},"n":{n},"pad":""}}"#);
    let fill = data_bytes.saturating_sub(bare.len()).min(pad.len());
    format!(
        r#"{{"topic":"{topic}","data":{{"publisher":{index},"n":{n},"pad":"{}"}}}}"#,
        &pad[..fill]
    )
}

/// The publishers of a run, under way.
struct Publishing {
    shared: Arc<Shared>,
    tasks: JoinSet<Tally>,
}

/// What the publishers counted, and the CPU counters at the window's edges.
struct Published {
    tallies: Vec<Tally>,
    before: Sample,
    after: Sample,
}

async fn run_once(
    settings: &PublishSettings,
    target: &Target,
    publishers: usize,
    run_tag: &str,
) -> anyhow::Result<RunFigures> {
    let Publishing { shared, tasks } = start(settings, target, publishers, run_tag)?;
    let published = join(settings, target, tasks, &shared).await?;
    measure(settings, publishers, &shared, published)
}

/// Starts `publishers` publishers, each with its own connection, over
/// `--topics` topics.
fn start(
    settings: &PublishSettings,
    target: &Target,
    publishers: usize,
    run_tag: &str,
) -> anyhow::Result<Publishing> {
    let clients = (0..publishers)
        .map(|_| http_client(Duration::from_secs(settings.request_timeout_secs)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let authorization = authorization(target)?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(settings.warmup_secs);
    let measure_until = measure_from + Duration::from_secs(settings.duration_secs);
    let shared = Arc::new(Shared {
        url: format!("{}/v1/publish", target.base_url),
        authorization,
        measure_from,
        measure_until,
        warmup_budget: AtomicU64::new(settings.max_events),
        budget: AtomicU64::new(settings.max_events),
        pad: "x".repeat(settings.data_bytes),
        data_bytes: settings.data_bytes,
    });
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let topic = format!(
            "{TOPIC_PREFIX}.publish.{run_tag}.c{publishers}.t{}",
            index % settings.topics
        );
        tasks.spawn(publisher(shared.clone(), client, index, topic));
    }
    Ok(Publishing { shared, tasks })
}

/// Reads the counters when the window starts, waits for every publisher
/// to stop, and reads them again.
async fn join(
    settings: &PublishSettings,
    target: &Target,
    tasks: JoinSet<Tally>,
    shared: &Shared,
) -> anyhow::Result<Published> {
    let (measure_from, measure_until) = (shared.measure_from, shared.measure_until);
    // Read the counters at the window's start from a thread of its own: a
    // task could be polled late while the publishers keep the runtime busy.
    let (pid, db_pid) = (target.pid, target.db_pid);
    let before = tokio::task::spawn_blocking(move || {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        Sample::take(pid, db_pid)
    });
    let stop_by = measure_until + Duration::from_secs(settings.request_timeout_secs) + STOP_SLACK;
    let tallies = join_publishers(tasks, stop_by).await?;
    let after = Sample::take(pid, db_pid)?;
    let before = before.await.context("the sampling thread panicked")??;
    Ok(Published {
        tallies,
        before,
        after,
    })
}

/// The run's figures, from what the publishers counted.
fn measure(
    settings: &PublishSettings,
    publishers: usize,
    shared: &Shared,
    published: Published,
) -> anyhow::Result<RunFigures> {
    let Published {
        tallies,
        before,
        after,
    } = published;
    let mut latency = latency_histogram();
    let mut errors = BTreeMap::new();
    let (mut events, mut order_violations, mut receipts_checked) = (0, 0, 0);
    for tally in tallies {
        latency
            .add(&tally.latency)
            .expect("every histogram has the same bounds");
        events += tally.events;
        order_violations += tally.order_violations;
        receipts_checked += tally.receipts_checked;
        for (kind, n) in tally.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    let elapsed_secs = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let per_1k = |ms: f64| (events > 0).then(|| ms * 1_000.0 / events as f64);
    let server_cpu_ms = match (&before.server, &after.server) {
        (Some((b, _)), Some((a, _))) => Some(a.saturating_sub(*b).as_secs_f64() * 1_000.0),
        _ => None,
    };
    let server_threads = match (&before.server, &after.server) {
        (Some((_, b)), Some((_, a))) => b.since(a)?,
        _ => Vec::new(),
    };
    let db_cpu_ms = match (before.db, after.db) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64() * 1_000.0),
        _ => None,
    };
    let client_cpu_ms = after.client.saturating_sub(before.client).as_secs_f64() * 1_000.0;
    Ok(RunFigures {
        publishers,
        topics: settings.topics.min(publishers),
        events,
        elapsed_secs,
        events_per_sec: events as f64 / elapsed_secs,
        latency: Latency::from_histogram(&latency),
        failed: errors.values().sum(),
        errors,
        order_violations,
        receipts_checked,
        stopped_by: if shared.budget.load(Ordering::Relaxed) == 0 {
            "max_events"
        } else {
            "duration"
        },
        server_cpu_ms_per_1k_events: server_cpu_ms.and_then(per_1k),
        server_cores_busy: server_cpu_ms.map(|ms| ms / 1_000.0 / elapsed_secs),
        server_cpu_ms,
        server_threads,
        db_cpu_ms_per_1k_events: db_cpu_ms.and_then(per_1k),
        db_cores_busy: db_cpu_ms.map(|ms| ms / 1_000.0 / elapsed_secs),
        db_cpu_ms,
        client_cpu_ms,
        client_cpu_ms_per_1k_events: per_1k(client_cpu_ms),
        client_cores_busy: client_cpu_ms / 1_000.0 / elapsed_secs,
    })
}

/// One publisher: publish, wait for the answer, check it, repeat, until the
/// window ends or the run's budget is spent.
async fn publisher(
    shared: Arc<Shared>,
    client: reqwest::Client,
    index: usize,
    topic: String,
) -> Tally {
    let mut tally = Tally {
        latency: latency_histogram(),
        events: 0,
        errors: BTreeMap::new(),
        order_violations: 0,
        receipts_checked: 0,
    };
    let mut last_seq: Option<u64> = None;
    let mut n: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= shared.measure_until {
            break;
        }
        let measured = now >= shared.measure_from;
        if measured && !take(&shared.budget) {
            break;
        }
        if !measured && !take(&shared.warmup_budget) {
            tokio::time::sleep_until(shared.measure_from.into()).await;
            continue;
        }
        n += 1;
        let body = event_body(&topic, index, n, &shared.pad, shared.data_bytes);
        let sent = Instant::now();
        let answer = match client
            .post(&shared.url)
            .header(AUTHORIZATION, shared.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let latency = sent.elapsed();
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tally.error(classify(&e));
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if status != StatusCode::CREATED {
            tally.error(status.as_str());
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        }
        match serde_json::from_slice::<Receipt>(&body) {
            Ok(receipt) if receipt.topic == topic => {
                if last_seq.is_some_and(|last| receipt.seq <= last) {
                    tally.order_violations += 1;
                }
                last_seq = Some(receipt.seq);
                tally.receipts_checked += 1;
            }
            _ => {
                tally.error("unreadable_answer");
                continue;
            }
        }
        if measured {
            tally.events += 1;
            tally
                .latency
                .saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_padded_to_the_asked_size() {
        let pad = "x".repeat(100);
        let body = event_body("load.t0", 3, 12, &pad, 100);
        let value: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
        assert_eq!(value["topic"], "load.t0");
        assert_eq!(value["data"].to_string().len(), 100);
    }

    #[test]
    fn a_budget_is_spent_exactly() {
        let budget = AtomicU64::new(2);
        assert!(take(&budget));
        assert!(take(&budget));
        assert!(!take(&budget));
    }
}
