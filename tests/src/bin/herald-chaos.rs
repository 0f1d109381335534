//! `herald-chaos`: the long chaos run, the same harness and checker as the
//! suite's short one (`herald_tests::chaos`), sized from the command line.
//! Prints one progress line per fault, then the verdict line and its
//! details; exits 1 when the checker found a violation. See
//! docs/RELIABILITY.md.
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::{Context, bail};
use herald_tests::chaos::{self, Config};

const USAGE: &str = "usage: herald-chaos [--duration SECS] [--subscribers N] [--seed N] \
[--topics N] [--rate EVENTS_PER_SEC] [--publishers N]

Starts a private Postgres, a private nats-server and three Herald nodes
(herald-test-server, next to this binary: build both with
`cargo build -p herald-tests --bins`), runs subscribers and publishers while
injecting faults for --duration seconds, then checks every delivery.
Defaults: --duration 300 --subscribers 300 --topics 8 --rate 30 --publishers 4,
--seed from the clock (printed, to replay a schedule).";

fn main() -> anyhow::Result<()> {
    let mut config = Config::short(0);
    config.duration = Duration::from_secs(300);
    config.subscribers = 300;
    config.topics = 8;
    config.seed = chrono::Utc::now().timestamp_micros().unsigned_abs();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || -> anyhow::Result<u64> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("{flag} takes a positive whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--duration" => config.duration = Duration::from_secs(number()?.min(24 * 3_600)),
            "--subscribers" => config.subscribers = number()?.min(5_000) as usize,
            "--seed" => config.seed = value.parse().with_context(|| format!("--seed {value:?}"))?,
            "--topics" => config.topics = number()?.min(1_000) as usize,
            "--rate" => config.publish_rate = number()?.min(10_000) as f64,
            "--publishers" => config.publishers = number()?.min(64) as usize,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    println!(
        "herald-chaos: seed={} duration={}s subscribers={} topics={} rate={}/s publishers={}",
        config.seed,
        config.duration.as_secs(),
        config.subscribers,
        config.topics,
        config.publish_rate,
        config.publishers
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("building the runtime")?;
    let verdict = runtime.block_on(chaos::run(&config, &|line| println!("chaos: {line}")))?;
    println!("{verdict}\n{}", verdict.details());
    if !verdict.ok() {
        std::process::exit(1);
    }
    Ok(())
}
