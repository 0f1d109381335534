//! `acks`: what acknowledgments cost. N WebSocket subscribers on one topic,
//! each with its own `sub` (a token minted per subscriber), events
//! published at `--rate` for `--duration-secs`; one run with subscribers
//! that only read, one with subscribers that send an `ack` frame for every
//! event they receive, one with subscribers that acknowledge the latest
//! event at most every `--batch-ms` (as `/client.js` does, 100 ms), and
//! one more without, so that the baseline brackets the others. The report gives, per run, deliveries, server CPU
//! per million deliveries, and the acknowledgments the server received and
//! wrote to its store (from `/metrics`): store writes per second should be
//! bounded by subscribers × topics / `HERALD_ACK_FLUSH_MS`, not by the
//! event rate times the subscribers.
//!
//! A subscriber stops at the end event (`{"end":true}`, published after
//! the last one); the window runs from the first publish until every
//! subscriber has it, or `--drain-secs` after the last publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::{self, DEFAULT_SOURCE_IPS, Endpoint, Sources, WsStream};
use crate::kit::checks::{check_connecting, check_secs};
use crate::report::{Runs, Table, fmt_opt};
use crate::target::{Secret, TOPIC_PREFIX, Target, TargetArgs};

/// Subscribers, by default.
pub const DEFAULT_SUBSCRIBERS: usize = 1_000;
/// Events per second, by default.
pub const DEFAULT_RATE: f64 = 100.0;
/// Seconds of publishing per run, by default.
pub const DEFAULT_DURATION_SECS: u64 = 30;
/// Seconds after the last publish that subscribers may take, by default.
pub const DEFAULT_DRAIN_SECS: u64 = 30;
/// Subscribers being opened at once, by default.
pub const DEFAULT_OPEN_CONCURRENCY: usize = 64;
/// Least time between two acknowledgments of a batching subscriber, by
/// default (what `/client.js` waits).
pub const DEFAULT_BATCH_MS: u64 = 100;

const MAX_SUBSCRIBERS: usize = 50_000;
/// Read buffer per subscriber: frames are small.
const READ_BUFFER: usize = 8 * 1024;

/// `herald-load acks`.
#[derive(Debug, Clone, Args)]
pub struct AcksArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// WebSocket subscribers, each its own `sub`.
    #[arg(long, env = "HERALD_LOAD_SUBSCRIBERS", default_value_t = DEFAULT_SUBSCRIBERS)]
    pub subscribers: usize,
    /// Events published per second.
    #[arg(long, env = "HERALD_LOAD_RATE", default_value_t = DEFAULT_RATE)]
    pub rate: f64,
    /// Seconds of publishing per run.
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
    /// Milliseconds a batching subscriber waits between acknowledgments.
    #[arg(long, env = "HERALD_LOAD_BATCH_MS", default_value_t = DEFAULT_BATCH_MS)]
    pub batch_ms: u64,
}

/// The checked settings of an `acks` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct AcksSettings {
    pub subscribers: usize,
    pub rate: f64,
    pub duration_secs: u64,
    pub drain_secs: u64,
    pub open_concurrency: usize,
    pub source_ips: u8,
    pub batch_ms: u64,
}

/// How subscribers acknowledge in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acking {
    /// Not at all.
    Off,
    /// An `ack` frame for every event.
    EveryEvent,
    /// The latest event, at most once per this many milliseconds (and the
    /// last one).
    Batched(u64),
}

impl Acking {
    fn name(self) -> String {
        match self {
            Acking::Off => "off".into(),
            Acking::EveryEvent => "every event".into(),
            Acking::Batched(ms) => format!("every {ms} ms"),
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AcksFigures {
    /// How subscribers acknowledged.
    pub acking: Acking,
    pub subscribers: usize,
    /// Events published (the end event included).
    pub events: u64,
    /// Events received, over all subscribers.
    pub deliveries: u64,
    /// Subscribers that did not receive the end event in time.
    pub unfinished: u64,
    /// Publishes that failed.
    pub failed_publishes: u64,
    /// The measured window, in seconds.
    pub elapsed_secs: f64,
    /// Server CPU over the window (every node), in seconds.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU seconds per million deliveries.
    pub cpu_secs_per_million: Option<f64>,
    /// `herald_acks_received_total` over the window (every node).
    pub acks_received: f64,
    /// `herald_acks_written_total` over the window: store rows written.
    pub acks_written: f64,
    /// Store rows written per second of the window.
    pub store_writes_per_sec: f64,
}

impl AcksFigures {
    /// Unfinished subscribers and failed publishes.
    pub fn failures(&self) -> u64 {
        self.unfinished + self.failed_publishes
    }
}

/// The table of runs, with the CPU overhead of acknowledging.
pub fn render(runs: &[AcksFigures]) -> String {
    let mut table = Table::new(&[
        "acks",
        "subs",
        "events",
        "deliveries",
        "unfinished",
        "secs",
        "cpu s",
        "cpu s/M deliv",
        "acks recv",
        "acks written",
        "store writes/s",
    ]);
    for r in runs {
        table.row(vec![
            r.acking.name(),
            r.subscribers.to_string(),
            r.events.to_string(),
            r.deliveries.to_string(),
            r.unfinished.to_string(),
            format!("{:.1}", r.elapsed_secs),
            fmt_opt(r.server_cpu_secs, 2),
            fmt_opt(r.cpu_secs_per_million, 1),
            format!("{:.0}", r.acks_received),
            format!("{:.0}", r.acks_written),
            format!("{:.1}", r.store_writes_per_sec),
        ]);
    }
    let mut out = table.render();
    // The runs without acknowledgments come first and last: their mean is
    // the baseline, so a warm-up or a drift over the invocation weighs on
    // both sides.
    let baseline: Vec<f64> = runs
        .iter()
        .filter(|r| r.acking == Acking::Off)
        .filter_map(|r| r.cpu_secs_per_million)
        .collect();
    let off = (!baseline.is_empty())
        .then(|| baseline.iter().sum::<f64>() / baseline.len() as f64)
        .filter(|off| *off > 0.0);
    for r in runs.iter().filter(|r| r.acking != Acking::Off) {
        if let (Some(off), Some(on)) = (off, r.cpu_secs_per_million) {
            out.push_str(&format!(
                "CPU per delivery, acknowledging {}: {:+.1}% against without (mean of the runs without)\n",
                r.acking.name(),
                (on / off - 1.0) * 100.0
            ));
        }
    }
    out
}

impl Scenario for AcksArgs {
    const NAME: &'static str = "acks";
    type Settings = AcksSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<AcksSettings> {
        if self.subscribers == 0 || self.subscribers > MAX_SUBSCRIBERS {
            bail!("--subscribers must be 1..={MAX_SUBSCRIBERS}");
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            bail!("--rate must be above 0 and at most 100000 events per second");
        }
        check_secs(&[
            ("--duration-secs", self.duration_secs),
            ("--drain-secs", self.drain_secs),
        ])?;
        check_connecting(self.open_concurrency, self.source_ips)?;
        Ok(AcksSettings {
            subscribers: self.subscribers,
            rate: self.rate,
            duration_secs: self.duration_secs,
            drain_secs: self.drain_secs,
            open_concurrency: self.open_concurrency,
            source_ips: self.source_ips,
            batch_ms: self.batch_ms,
        })
    }

    fn token_secs(settings: &AcksSettings) -> u64 {
        2 * (settings.duration_secs + settings.drain_secs) + 600
    }

    fn fds_needed(settings: &AcksSettings) -> u64 {
        settings.subscribers as u64 + crate::kit::fds::SPARE_FDS
    }

    async fn run(settings: &AcksSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let secret = target.jwt_secret.clone().context(
            "the acks scenario mints a token per subscriber: give --jwt-secret with --url",
        )?;
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::new();
        let modes = [
            Acking::Off,
            Acking::EveryEvent,
            Acking::Batched(settings.batch_ms),
            Acking::Off,
        ];
        for (i, acking) in modes.into_iter().enumerate() {
            if !runs.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let topic = format!("{TOPIC_PREFIX}.acks.{tag}.r{i}");
            runs.push(run_once(settings, target, &secret, &topic, acking).await?);
            if !target.is_running() {
                bail!("the server exited during the run");
            }
        }
        Ok(Runs::Acks(runs))
    }
}

/// A token for subscriber `i`, allowed to subscribe to everything.
fn subscriber_token(secret: &Secret, i: usize, secs: u64) -> anyhow::Result<Secret> {
    let now = herald::auth::token::now_secs();
    let token = herald::auth::Minter::hs256(secret.expose().as_bytes())
        .mint(&herald::auth::Claims {
            sub: format!("load-subscriber-{i}"),
            exp: now + secs,
            iat: Some(now),
            herald: herald::auth::HeraldClaims {
                subscribe: vec![">".into()],
                publish: Vec::new(),
                admin: false,
            },
            ..Default::default()
        })
        .context("minting a subscriber token")?;
    token
        .parse::<Secret>()
        .map_err(|e| anyhow::anyhow!("a minted token: {e}"))
}

/// Sums a counter over every node's `/metrics`.
async fn counter(http: &reqwest::Client, nodes: &[String], name: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for base in nodes {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .with_context(|| format!("scraping {base}/metrics"))?
            .text()
            .await?;
        total += text
            .lines()
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (series == name)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// The `seq` of an event frame.
fn seq_of(frame: &str) -> Option<u64> {
    let at = frame.find(r#""seq":"#)? + 6;
    let digits: String = frame[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads events until the end event, acknowledging as `acking` says.
async fn subscriber(mut ws: WsStream, topic: Arc<str>, acking: Acking, delivered: Arc<AtomicU64>) {
    let mut last_ack = Instant::now();
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if !text.contains(r#""op":"event""#) {
            continue;
        }
        let Some(seq) = seq_of(&text) else {
            continue;
        };
        delivered.fetch_add(1, Ordering::Relaxed);
        let end = text.contains(r#""end":true"#);
        let due = match acking {
            Acking::Off => false,
            Acking::EveryEvent => true,
            Acking::Batched(ms) => end || last_ack.elapsed() >= Duration::from_millis(ms),
        };
        if due {
            last_ack = Instant::now();
            let ack = format!(r#"{{"op":"ack","cursor":"{topic}:{seq}"}}"#);
            if ws.send(Message::text(ack)).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

async fn run_once(
    settings: &AcksSettings,
    target: &Target,
    secret: &Secret,
    topic: &str,
    acking: Acking,
) -> anyhow::Result<AcksFigures> {
    let http = reqwest::Client::new();
    let sources = Sources::new(settings.source_ips)?;
    let token_secs = <AcksArgs as Scenario>::token_secs(settings);
    let urls = target.subscriber_urls().to_vec();
    let delivered = Arc::new(AtomicU64::new(0));
    let topic_arc: Arc<str> = topic.into();

    // Open every subscriber before the first publish.
    let gate = Arc::new(Semaphore::new(settings.open_concurrency));
    let mut opening = JoinSet::new();
    for i in 0..settings.subscribers {
        let token = subscriber_token(secret, i, token_secs)?;
        let endpoint = Endpoint::resolve(&urls[i % urls.len()], &token).await?;
        let gate = gate.clone();
        let topic = topic.to_owned();
        let source = sources.nth(i);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            client::ws_subscribe(&endpoint, source, &topic, READ_BUFFER).await
        });
    }
    let mut readers = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        let ws = opened
            .context("an opening task panicked")?
            .map_err(|e| anyhow::anyhow!("opening a subscriber failed: {}", e.0))?;
        readers.spawn(subscriber(ws, topic_arc.clone(), acking, delivered.clone()));
    }

    let received_before = counter(&http, &target.node_urls, "herald_acks_received_total").await?;
    let written_before = counter(&http, &target.node_urls, "herald_acks_written_total").await?;
    let cpu_before = crate::cpu::processes_cpu(&target.pids).ok();
    let started = Instant::now();

    // Publish at the rate for the duration, then the end event.
    let publish_url = format!("{}/v1/publish", target.base_url);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = started + Duration::from_secs(settings.duration_secs);
    let mut events = 0u64;
    let mut failed = 0u64;
    let mut end = false;
    loop {
        tick.tick().await;
        end = end || Instant::now() >= until;
        let data = if end {
            serde_json::json!({"end": true})
        } else {
            serde_json::json!({"n": events})
        };
        let answer = http
            .post(&publish_url)
            .bearer_auth(target.token.expose())
            .json(&serde_json::json!({"topic": topic, "data": data}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => events += 1,
            _ if end => bail!("publishing the end event failed"),
            _ => failed += 1,
        }
        if end {
            break;
        }
    }

    // Until every subscriber has the end event, within the drain time.
    let drain = tokio::time::sleep(Duration::from_secs(settings.drain_secs));
    tokio::pin!(drain);
    let mut finished = 0u64;
    loop {
        tokio::select! {
            joined = readers.join_next() => match joined {
                Some(_) => finished += 1,
                None => break,
            },
            () = &mut drain => break,
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = crate::cpu::processes_cpu(&target.pids).ok();
    readers.abort_all();
    // Written acknowledgments trail by one flush interval: let it run.
    if acking != Acking::Off {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let received =
        counter(&http, &target.node_urls, "herald_acks_received_total").await? - received_before;
    let written =
        counter(&http, &target.node_urls, "herald_acks_written_total").await? - written_before;

    let deliveries = delivered.load(Ordering::Relaxed);
    let server_cpu_secs = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if !target.pids.is_empty() => {
            Some(after.saturating_sub(before).as_secs_f64())
        }
        _ => None,
    };
    Ok(AcksFigures {
        acking,
        subscribers: settings.subscribers,
        events,
        deliveries,
        unfinished: settings.subscribers as u64 - finished,
        failed_publishes: failed,
        elapsed_secs: elapsed.as_secs_f64(),
        server_cpu_secs,
        cpu_secs_per_million: server_cpu_secs
            .filter(|_| deliveries > 0)
            .map(|cpu| cpu / deliveries as f64 * 1e6),
        acks_received: received,
        acks_written: written,
        store_writes_per_sec: written / elapsed.as_secs_f64(),
    })
}
