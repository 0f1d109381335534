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
//! publish.
//!
//! When the M events are published (or `--duration-secs` is over), one
//! more event, `{"end":true}`, is published: a subscriber stops when it
//! arrives. Its seq tells how many events the topic holds, which is what
//! every subscriber should have received. The measured window runs from
//! the first publish until the last subscriber has the end event (or
//! `--drain-secs` after the last publish; subscribers still waiting then
//! are counted as `unfinished`).
//!
//! The run itself, which `topics` and `soak` share, is
//! [`crate::kit::fanout_run`].

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::DEFAULT_SOURCE_IPS;
use crate::kit::defaults::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_DATA_BYTES, DEFAULT_DRAIN_SECS, DEFAULT_DURATION_SECS,
    DEFAULT_OPEN_CONCURRENCY, DEFAULT_OPEN_TIMEOUT_SECS, DEFAULT_REQUEST_TIMEOUT_SECS,
};
use crate::kit::fanout_run::{FanoutSettings, run_once};
use crate::kit::fds::check_server_fd_limit;
use crate::kit::publishing::Rate;
use crate::kit::subscribing::subscriber_endpoints;
use crate::report::Runs;
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Subscriber counts, one run each, by default.
pub const DEFAULT_SUBSCRIBERS: [usize; 1] = [1_000];
/// Events published per run, by default.
pub const DEFAULT_EVENTS: u64 = 2_000;
/// Concurrent publishers (each one HTTP/1.1 connection), by default.
pub const DEFAULT_PUBLISHERS: usize = 1;

/// Idle time between runs.
const PAUSE_BETWEEN_RUNS: Duration = Duration::from_secs(1);

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
        FanoutSettings {
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
        }
        .checked()
    }

    fn token_secs(settings: &FanoutSettings) -> u64 {
        settings.token_secs()
    }

    fn fds_needed(settings: &FanoutSettings) -> u64 {
        settings.fds_needed()
    }

    async fn run(settings: &FanoutSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        for &pid in &target.pids {
            check_server_fd_limit(pid, settings.most_subscribers() + settings.publishers)?;
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
