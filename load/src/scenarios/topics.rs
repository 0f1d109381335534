//! `topics`: many topics with few subscribers each, the per-user
//! notification pattern (`user.<id>.inbox`, one or two devices per user).
//! T topics, K WebSocket subscribers on each (T × K connections), events
//! published at `--rate` spread evenly over the topics (event n on topic
//! n % T), by `--publishers` concurrent publishers. Each subscriber checks
//! its topic's seqs (lost, duplicated, out of order) and measures
//! publish-to-delivery latency; the report gives deliveries per second,
//! latency and server CPU per million deliveries, as `fanout` does.
//!
//! It is the fan-out run ([`crate::kit::fanout_run`]) that `fanout` is: the only differences are the topic
//! count and that one end event is published per topic (in batches of
//! 1,000, one transaction each). With several nodes, publishes go to the
//! first and subscribers are spread over the others.

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::{DEFAULT_SOURCE_IPS, Sources};
use crate::kit::defaults::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_DATA_BYTES, DEFAULT_DRAIN_SECS, DEFAULT_DURATION_SECS,
    DEFAULT_OPEN_CONCURRENCY, DEFAULT_OPEN_TIMEOUT_SECS, DEFAULT_REQUEST_TIMEOUT_SECS,
};
use crate::kit::fanout_run::{FanoutSettings, run_once};
use crate::kit::fds::{SPARE_FDS, check_server_fd_limit};
use crate::kit::publishing::Rate;
use crate::kit::subscribing::subscriber_endpoints;
use crate::report::Runs;
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Topic counts, one run each, by default.
pub const DEFAULT_TOPICS: [usize; 1] = [1_000];
/// Subscribers per topic, by default (a user's devices).
pub const DEFAULT_SUBSCRIBERS_PER_TOPIC: usize = 2;
/// Publishing rate over all topics, events per second, by default.
pub const DEFAULT_RATE: f64 = 500.0;
/// Events published per run, by default.
pub const DEFAULT_EVENTS: u64 = 10_000;
/// Concurrent publishers, by default: events to different topics are
/// independent, so several services publish at once.
pub const DEFAULT_PUBLISHERS: usize = 8;

const MAX_CONNECTIONS: usize = 50_000;
const MAX_TOPICS: usize = 50_000;

/// `herald-load topics`.
#[derive(Debug, Clone, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Topic counts, comma-separated: runs for each, in turn.
    #[arg(long, env = "HERALD_LOAD_TOPICS", value_delimiter = ',', default_values_t = DEFAULT_TOPICS)]
    pub topics: Vec<usize>,
    /// WebSocket subscribers on each topic.
    #[arg(long, env = "HERALD_LOAD_SUBSCRIBERS_PER_TOPIC", default_value_t = DEFAULT_SUBSCRIBERS_PER_TOPIC)]
    pub subscribers_per_topic: usize,
    /// Publishing rates over all topics, comma-separated: `max` or events
    /// per second; one run per rate for each topic count.
    #[arg(long, env = "HERALD_LOAD_RATE", value_delimiter = ',', default_values_t = [Rate::PerSec(DEFAULT_RATE)])]
    pub rate: Vec<Rate>,
    /// Events published per run, over all topics.
    #[arg(long, env = "HERALD_LOAD_EVENTS", default_value_t = DEFAULT_EVENTS)]
    pub events: u64,
    /// Concurrent publishers, each with one HTTP/1.1 connection.
    #[arg(long, env = "HERALD_LOAD_PUBLISHERS", default_value_t = DEFAULT_PUBLISHERS)]
    pub publishers: usize,
    /// Bytes of each event's `data`.
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Most seconds of publishing per run.
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
    /// Seconds one subscriber may take to open.
    #[arg(long, env = "HERALD_LOAD_CONNECT_TIMEOUT_SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,
    /// Seconds opening all subscribers may take.
    #[arg(long, env = "HERALD_LOAD_OPEN_TIMEOUT_SECS", default_value_t = DEFAULT_OPEN_TIMEOUT_SECS)]
    pub open_timeout_secs: u64,
    /// Seconds one publish may take before it counts as a `timeout` error.
    #[arg(long, env = "HERALD_LOAD_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
}

/// The checked settings of a `topics` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct TopicsSettings {
    /// `--topics`.
    pub topics: Vec<usize>,
    /// `--subscribers-per-topic`.
    pub subscribers_per_topic: usize,
    /// The engine's settings (its `subscribers` are T × K for each T).
    pub run: FanoutSettings,
}

impl Scenario for TopicsArgs {
    const NAME: &'static str = "topics";
    type Settings = TopicsSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<TopicsSettings> {
        if self.topics.is_empty() || self.topics.iter().any(|&t| t == 0 || t > MAX_TOPICS) {
            bail!("--topics: each count must be 1..={MAX_TOPICS}");
        }
        if self.subscribers_per_topic == 0 {
            bail!("--subscribers-per-topic must be at least 1");
        }
        let mut subscribers = Vec::new();
        for &t in &self.topics {
            let s = t
                .checked_mul(self.subscribers_per_topic)
                .filter(|&s| s <= MAX_CONNECTIONS);
            let Some(s) = s else {
                bail!(
                    "--topics {t} x --subscribers-per-topic {} is more than {MAX_CONNECTIONS} connections",
                    self.subscribers_per_topic
                );
            };
            subscribers.push(s);
        }
        let run = FanoutSettings {
            subscribers,
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
        .checked()?;
        Sources::new(self.source_ips)?;
        Ok(TopicsSettings {
            topics: self.topics.clone(),
            subscribers_per_topic: self.subscribers_per_topic,
            run,
        })
    }

    fn token_secs(settings: &TopicsSettings) -> u64 {
        settings.run.token_secs()
    }

    fn fds_needed(settings: &TopicsSettings) -> u64 {
        settings.run.fds_needed().max(SPARE_FDS)
    }

    async fn run(settings: &TopicsSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        for &pid in &target.pids {
            let most = settings.run.most_subscribers();
            check_server_fd_limit(pid, most + settings.run.publishers)?;
        }
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut runs = Vec::new();
        for (&topics, &subscribers) in settings.topics.iter().zip(&settings.run.subscribers) {
            for &rate in &settings.run.rate {
                if !runs.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                let run = runs.len();
                let names: Vec<String> = (0..topics)
                    .map(|i| format!("{TOPIC_PREFIX}.topics.{tag}.r{run}.u{i}"))
                    .collect();
                runs.push(
                    run_once(&settings.run, target, &endpoints, subscribers, rate, &names).await?,
                );
                if !target.is_running() {
                    bail!("the server exited during the run with {topics} topics");
                }
            }
        }
        Ok(Runs::Topics(runs))
    }
}
