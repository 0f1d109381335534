//! The chaos run: three Herald nodes on a private Postgres and NATS, a few
//! hundred subscribers over WebSocket, SSE, long and short polling, and
//! publishers with idempotency ids at a steady rate, while a seeded
//! schedule of faults runs (nodes killed, paused, drained; NATS and
//! Postgres killed; one node's link to NATS cut or stalled; clients
//! disconnected). At the end, with everything healed, every subscriber is
//! given time to catch up, the store is read directly, and the
//! [`checker`] counts violations. Used by the suite's short run
//! (`tests/tests/api/chaos.rs`) and by the long-run command
//! (`src/bin/herald-chaos.rs`). See docs/RELIABILITY.md.
//!
//! - [`rng`]: the seeded random numbers behind every choice
//! - [`proxy`]: the TCP proxy that cuts or stalls a node's link to NATS
//! - [`cluster`]: the nodes, Postgres, NATS, and the faults
//! - [`publisher`]: publishers that retry with their idempotency id
//! - [`subscriber`]: subscribers that keep their cursor and resume elsewhere
//! - [`checker`]: the rules and the counts

pub mod checker;
pub mod cluster;
pub mod proxy;
pub mod publisher;
pub mod rng;
pub mod subscriber;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use herald::auth::{Claims, HeraldClaims};
use herald::topic::Topic;
use tokio::sync::{Notify, watch};

use self::checker::{Check, Stored};
use self::cluster::{Cluster, FaultKind};
use self::publisher::PublisherSettings;
use self::rng::Rng;
use self::subscriber::{Context as SubscriberContext, Progress, Transport};

/// How a chaos run is sized.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed of every random choice.
    pub seed: u64,
    /// How long faults are injected (publishing runs as long); at least one
    /// fault of every kind runs even if that takes longer.
    pub duration: Duration,
    /// Subscribers, spread evenly over the four transports.
    pub subscribers: usize,
    /// Topics; each subscriber follows one or two of them.
    pub topics: usize,
    /// Publishers.
    pub publishers: usize,
    /// Publishes per second, over all publishers.
    pub publish_rate: f64,
    /// Nodes.
    pub nodes: usize,
    /// `HERALD_HEARTBEAT_SECS` of the nodes.
    pub heartbeat_secs: u64,
    /// `HERALD_DRAIN_SECS` of the nodes.
    pub drain_secs: u64,
    /// How long a publish is retried before it is given up.
    pub retry_for: Duration,
    /// How long subscribers may take to catch up once everything is healed.
    pub converge_timeout: Duration,
}

impl Config {
    /// The suite's short run: 35 s, 200 subscribers.
    pub fn short(seed: u64) -> Config {
        Config {
            seed,
            duration: Duration::from_secs(35),
            subscribers: 200,
            topics: 6,
            publishers: 4,
            publish_rate: 30.0,
            nodes: 3,
            heartbeat_secs: 2,
            drain_secs: 2,
            retry_for: Duration::from_secs(30),
            converge_timeout: Duration::from_secs(90),
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub seed: u64,
    pub check: Check,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Connections or poll runs that ended, by reason, over all subscribers.
    pub ends: BTreeMap<String, u64>,
    /// Unexpected things subscribers noted (first few).
    pub notes: Vec<String>,
    /// Subscribers by transport.
    pub transports: BTreeMap<&'static str, usize>,
    /// Wall time of the run, from the first publish to the check.
    pub elapsed: Duration,
    /// How long subscribers took to catch up after the last fault healed.
    pub converged_in: Duration,
}

impl Verdict {
    /// Whether no violation was found.
    pub fn ok(&self) -> bool {
        self.check.violations.total() == 0
    }

    /// Faults injected.
    pub fn fault_count(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl fmt::Display for Verdict {
    /// The one verdict line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.check;
        write!(
            f,
            "chaos verdict: {} seed={} attempted={} acknowledged={} retried={} gave_up={} stored={} delivered={} redelivered={} resets={} faults={} violations: {}",
            if self.ok() { "ok" } else { "FAIL" },
            self.seed,
            c.attempted,
            c.acknowledged,
            c.retried,
            c.gave_up,
            c.stored,
            c.delivered,
            c.redelivered,
            c.resets,
            self.fault_count(),
            c.violations
        )
    }
}

impl Verdict {
    /// The details under the verdict line: faults, subscribers, how
    /// connections ended, and the first violations.
    pub fn details(&self) -> String {
        let mut out = String::new();
        let join = |m: &BTreeMap<&'static str, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!("faults: {}\n", join(&self.faults)));
        out.push_str(&format!(
            "publish requests retried, by cause: {}\n",
            self.check
                .publish_failures
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        out.push_str(&format!(
            "subscribers: {}\n",
            self.transports
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        out.push_str(&format!(
            "elapsed: {:.1} s, caught up {:.1} s after the last fault healed\n",
            self.elapsed.as_secs_f64(),
            self.converged_in.as_secs_f64()
        ));
        out.push_str("connection ends:");
        for (reason, n) in &self.ends {
            out.push_str(&format!(" [{reason}]={n}"));
        }
        out.push('\n');
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for example in &self.check.examples {
            out.push_str(&format!("violation: {example}\n"));
        }
        out
    }
}

/// A token allowed everything, valid for the run.
fn token(valid_secs: u64) -> String {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    crate::app::token_with(Claims {
        sub: "chaos".into(),
        exp: now + valid_secs,
        iat: Some(now),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: false,
        },
        ..Claims::default()
    })
}

/// Runs the chaos run described by `config`; `progress` gets a line now and
/// then (each fault, each phase). Needs a multi-threaded Tokio runtime.
pub async fn run(config: &Config, progress: &(dyn Fn(&str) + Sync)) -> anyhow::Result<Verdict> {
    let rng = Rng::new(config.seed);
    let heartbeat = Duration::from_secs(config.heartbeat_secs);
    let settings = [
        ("HERALD_HEARTBEAT_SECS", config.heartbeat_secs.to_string()),
        ("HERALD_DRAIN_SECS", config.drain_secs.to_string()),
    ];
    let mut cluster = Cluster::start(config.nodes, &settings).await?;
    let outcome = drive(config, &rng, heartbeat, &mut cluster, progress).await;
    if outcome.is_err() {
        cluster.heal_all();
    }
    outcome
}

async fn drive(
    config: &Config,
    rng: &Rng,
    heartbeat: Duration,
    cluster: &mut Cluster,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Verdict> {
    let nodes = Arc::new(cluster.urls());
    let run_tag = format!("{:x}", rng.split(u64::MAX).next_u64() & 0xffff_ffff);
    let topics: Arc<Vec<String>> = Arc::new(
        (0..config.topics)
            .map(|t| format!("chaos.{run_tag}.t{t}"))
            .collect(),
    );
    let token = token(config.duration.as_secs() * 4 + 3_600);
    let (stop_subscribers, subscribers_stop) = watch::channel(false);
    let (stop_publishers, publishers_stop) = watch::channel(false);

    // Subscribers: transports in turn, one or two topics each.
    let context = SubscriberContext {
        nodes: nodes.clone(),
        topics: topics.clone(),
        token: token.clone(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client builds"),
        idle: heartbeat * 5,
        long_poll_wait_secs: 10,
    };
    let mut choose = rng.split(1);
    let mut progresses = Vec::new();
    let mut drops = Vec::new();
    let mut subscriber_tasks = Vec::new();
    let mut transports: BTreeMap<&'static str, usize> = BTreeMap::new();
    for index in 0..config.subscribers {
        let transport = Transport::ALL[index % Transport::ALL.len()];
        *transports.entry(transport.name()).or_default() += 1;
        let first = choose.below(config.topics);
        let mut mine = vec![first];
        if config.topics > 1 && choose.chance(0.5) {
            mine.push(choose.other_than(config.topics, first));
        }
        let state = Arc::new(Progress::new(mine.len()));
        let drop_now = Arc::new(Notify::new());
        progresses.push((state.clone(), mine.clone()));
        drops.push(drop_now.clone());
        subscriber_tasks.push(tokio::spawn(subscriber::run(
            index,
            transport,
            mine,
            context.clone(),
            state,
            drop_now,
            subscribers_stop.clone(),
            rng.split(1_000 + index as u64),
        )));
    }
    wait_for(
        "every subscriber's first connection or poll",
        Duration::from_secs(60),
        || {
            progresses
                .iter()
                .all(|(p, _)| p.started.load(Ordering::Relaxed))
        },
    )
    .await?;
    progress(&format!(
        "{} subscribers connected to {} nodes; publishing at {}/s",
        config.subscribers, config.nodes, config.publish_rate
    ));

    // Publishers.
    let started = tokio::time::Instant::now();
    let mut publisher_tasks = Vec::new();
    for index in 0..config.publishers {
        publisher_tasks.push(tokio::spawn(publisher::run(
            index,
            nodes.clone(),
            topics.clone(),
            token.clone(),
            PublisherSettings {
                rate_per_sec: config.publish_rate / config.publishers as f64,
                retry_for: config.retry_for,
            },
            rng.split(100 + index as u64),
            publishers_stop.clone(),
        )));
    }

    // Faults, one after the other, for the duration (every kind at least once).
    let mut schedule_rng = rng.split(2);
    let planned = cluster::schedule(&mut schedule_rng, config.nodes, heartbeat, 1_000);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut drop_rng = rng.split(3);
    // A little traffic before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, fault) in planned.iter().enumerate() {
        if n >= FaultKind::ALL.len() && started.elapsed() >= config.duration {
            break;
        }
        progress(&format!(
            "{:>5.1} s fault {}: {} node={} hold={:?} share={:.2}",
            started.elapsed().as_secs_f64(),
            n + 1,
            fault.kind.name(),
            fault.node,
            fault.hold,
            fault.share
        ));
        if fault.kind == FaultKind::ClientDrops {
            for drop_now in &drops {
                if drop_rng.chance(fault.share) {
                    drop_now.notify_one();
                }
            }
        }
        cluster
            .inject(fault)
            .await
            .with_context(|| format!("fault {} ({})", n + 1, fault.kind.name()))?;
        *faults.entry(fault.kind.name()).or_default() += 1;
        tokio::time::sleep(fault.pause_after).await;
    }
    cluster.wait_healthy().await?;
    let healed = tokio::time::Instant::now();

    // Stop publishing; every publish in hand finishes (or gives up).
    stop_publishers.send_replace(true);
    let mut publishes = Vec::new();
    for task in publisher_tasks {
        publishes.extend(task.await.context("a publisher panicked")?);
    }
    progress(&format!(
        "{:>5.1} s publishers stopped after {} publishes; waiting for subscribers to catch up",
        started.elapsed().as_secs_f64(),
        publishes.len()
    ));

    // Every subscriber catches up with the store's heads.
    let store = herald::store::open(&cluster.database_url)
        .await
        .context("opening the store to check it")?;
    let parsed: Vec<Topic> = topics
        .iter()
        .map(|t| Topic::parse(t).context("a run topic is valid"))
        .collect::<anyhow::Result<_>>()?;
    // A paused node may commit a publish it was sent before its pause
    // (answered elsewhere since, under the same id) after the publishers
    // stopped: wait until the heads stand still while everyone is caught up.
    let converge_deadline = tokio::time::Instant::now() + config.converge_timeout;
    loop {
        let heads = store.heads(&parsed).await.context("reading the heads")?;
        let left = converge_deadline.saturating_duration_since(tokio::time::Instant::now());
        let caught_up = wait_for("every subscriber to catch up with the store", left, || {
            progresses.iter().all(|(p, mine)| {
                mine.iter()
                    .enumerate()
                    .all(|(i, &t)| p.have[i].load(Ordering::Relaxed) >= heads[t])
            })
        })
        .await;
        if let Err(error) = caught_up {
            // Not fatal: the checker says who is missing what.
            progress(&format!("{error:#}"));
            break;
        }
        if store.heads(&parsed).await.context("reading the heads")? == heads {
            break;
        }
    }
    let converged_in = healed.elapsed();
    stop_subscribers.send_replace(true);
    let mut logs = Vec::new();
    for task in subscriber_tasks {
        logs.push(task.await.context("a subscriber panicked")?);
    }

    // The store, read directly, in pages.
    let mut stored = Vec::new();
    for topic in &parsed {
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &Stored| e.seq);
            let read = store
                .read_since(topic, after, 10_000)
                .await
                .context("reading the store")?;
            if read.events.is_empty() {
                break;
            }
            events.extend(read.events.into_iter().map(|e| Stored {
                seq: e.seq,
                id: e.id,
            }));
        }
        stored.push(events);
    }

    let check = checker::check(&topics, &stored, &publishes, &logs);
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut notes = Vec::new();
    for log in &logs {
        for (reason, n) in &log.ends {
            *ends
                .entry(format!("{} {reason}", log.transport.name()))
                .or_default() += n;
        }
        for note in &log.notes {
            if notes.len() < 20 {
                notes.push(format!("subscriber {}: {note}", log.index));
            }
        }
    }
    Ok(Verdict {
        seed: config.seed,
        check,
        faults,
        ends,
        notes,
        transports,
        elapsed: started.elapsed(),
        converged_in,
    })
}

/// Polls `done` every 50 ms until it holds, or fails after `timeout`.
async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
