//! The `herald-load` command line: one subcommand per scenario, and the
//! sequence every scenario shares: check settings, start the target, run,
//! stop the target, print the table, write the JSON record.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};

use crate::machine::Machine;
use crate::report::Report;
use crate::scenarios::{Scenario, acks, conns, fanout, poll_cost, publish, soak, storm, topics};
use crate::target::Target;

/// Load generator threads, by default: one, so that on a small machine the
/// client takes as little as possible from a local server.
pub const DEFAULT_CLIENT_THREADS: usize = 1;
/// Load generator threads of `fanout`, by default: its subscribers read
/// every delivery, as much work as the server's writing them.
pub const DEFAULT_FANOUT_CLIENT_THREADS: usize = 2;
/// Most load generator threads.
const MAX_CLIENT_THREADS: usize = 256;
/// Server log lines quoted in a report.
const LOG_SAMPLE_LINES: usize = 5;

/// herald-load: measure a real Herald process under load.
#[derive(Debug, Parser)]
#[command(name = "herald-load", version, about, long_about = None)]
pub struct Cli {
    /// Threads of the load generator (1: all connections on one thread);
    /// default 1, or 2 for `fanout`. A local server shares the machine's
    /// cores with them.
    #[arg(long, env = "HERALD_LOAD_CLIENT_THREADS", global = true)]
    pub client_threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Concurrent publishers, each looping `POST /v1/publish` with one event.
    Publish(publish::PublishArgs),
    /// N idle WebSocket or SSE subscribers: connection rate and server memory per connection.
    Conns(conns::ConnsArgs),
    /// S WebSocket subscribers on one topic, M events published: deliveries/s,
    /// publish-to-delivery latency, loss, server CPU per delivery.
    Fanout(fanout::FanoutArgs),
    /// T topics with K WebSocket subscribers each (the per-user pattern),
    /// events spread over them: deliveries/s, latency, loss, CPU per delivery.
    Topics(topics::TopicsArgs),
    /// N WebSocket clients disconnect together and reconnect with their
    /// cursors while publishing continues: time until all are resumed, loss.
    Storm(storm::StormArgs),
    /// The same stream over WebSocket, SSE, long and short polling: bytes
    /// per delivered event, requests per minute, server CPU, latency.
    PollCost(poll_cost::PollCostArgs),
    /// `fanout` held for 10 minutes or more, sampling the server's memory and
    /// open descriptors over time: no growth after warm-up.
    Soak(soak::SoakArgs),
    /// N WebSocket subscribers (each its own `sub`) on one topic at a rate,
    /// without and with an `ack` for every event: server CPU per delivery
    /// and acknowledgment store writes per second.
    Acks(acks::AcksArgs),
    /// Draw SVG plots from JSON records of earlier runs: every latency
    /// distribution in one plot, every `conns` run's memory in another.
    Plot(PlotArgs),
}

/// `herald-load plot`.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// Directory to write `latency.svg` and `memory.svg` into.
    #[arg(long)]
    pub out: PathBuf,
    /// JSON records written by `--json`.
    #[arg(required = true)]
    pub records: Vec<PathBuf>,
}

impl Command {
    /// Load generator threads when `--client-threads` is not given.
    pub fn default_client_threads(&self) -> usize {
        match self {
            Command::Fanout(_) | Command::Topics(_) | Command::Storm(_) | Command::Soak(_) => {
                DEFAULT_FANOUT_CLIENT_THREADS
            }
            Command::Publish(_)
            | Command::Conns(_)
            | Command::PollCost(_)
            | Command::Acks(_)
            | Command::Plot(_) => DEFAULT_CLIENT_THREADS,
        }
    }
}

/// Where a report goes.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Also write the JSON record to this file.
    #[arg(long, env = "HERALD_LOAD_JSON")]
    pub json: Option<PathBuf>,
    /// Free text kept in the JSON record (for example the Postgres settings).
    #[arg(long, env = "HERALD_LOAD_NOTE")]
    pub note: Option<String>,
    /// Also draw SVG plots into this directory: latency distributions
    /// (`SCENARIO-latency.svg`, ...), memory per connection for `conns`.
    #[arg(long, env = "HERALD_LOAD_PLOTS")]
    pub plots: Option<PathBuf>,
}

impl Cli {
    /// Load generator threads: `--client-threads`, else the scenario's default.
    pub fn client_threads(&self) -> usize {
        self.client_threads
            .unwrap_or_else(|| self.command.default_client_threads())
    }

    /// The Tokio runtime the load generator runs on.
    pub fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let threads = self.client_threads();
        if threads == 0 || threads > MAX_CLIENT_THREADS {
            bail!("--client-threads must be 1..={MAX_CLIENT_THREADS}");
        }
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        builder.enable_all().build().context("building the runtime")
    }
}

/// `herald-load plot`: draws the plots of earlier records; prints the
/// files written.
pub fn plot_records(args: &PlotArgs) -> anyhow::Result<()> {
    for path in crate::plot::from_records(&args.records, &args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs the chosen scenario, prints its table and writes its record.
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    let threads = cli.client_threads();
    match cli.command {
        Command::Publish(args) => execute(&args, threads).await,
        Command::Conns(args) => execute(&args, threads).await,
        Command::Fanout(args) => execute(&args, threads).await,
        Command::Topics(args) => execute(&args, threads).await,
        Command::Storm(args) => execute(&args, threads).await,
        Command::PollCost(args) => execute(&args, threads).await,
        Command::Soak(args) => execute(&args, threads).await,
        Command::Acks(args) => execute(&args, threads).await,
        Command::Plot(_) => bail!("`plot` runs no scenario: use `plot_records`"),
    }
}

async fn execute<S: Scenario>(scenario: &S, client_threads: usize) -> anyhow::Result<Report> {
    let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let settings = scenario.settings()?;
    let plan = scenario.target().plan()?;
    let fds = S::fds_needed(&settings);
    if fds > 0 {
        crate::proc::ensure_fd_limit(fds)?;
    }
    let db_pid = scenario.target().db_pid;
    let mut target = Target::start(plan, db_pid, S::token_secs(&settings)).await?;
    let outcome = tokio::select! {
        runs = S::run(&settings, &mut target) => runs,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let info = target.info.clone();
    let log = target.stop();
    let runs = outcome?;
    let output = scenario.output();
    let report = Report {
        tool: "herald-load",
        tool_version: env!("CARGO_PKG_VERSION"),
        scenario: S::NAME,
        date,
        machine: Machine::describe(),
        target: info,
        client_threads,
        settings: serde_json::to_value(&settings).context("encoding the settings")?,
        note: output.note.clone(),
        runs,
        server_log_lines: log.len(),
        server_log_sample: log.into_iter().take(LOG_SAMPLE_LINES).collect(),
    };
    print!("{}", report.render());
    if let Some(path) = &output.json {
        report.write_json(path)?;
        println!("\nwrote {}", path.display());
    }
    if let Some(dir) = &output.plots {
        for path in crate::plot::write_all(&report, dir)? {
            println!("wrote {}", path.display());
        }
    }
    Ok(report)
}
