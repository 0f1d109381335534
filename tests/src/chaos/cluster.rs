//! The system under test and the faults the run injects into it: three
//! Herald nodes (the real binary) on a private Postgres and a private
//! `nats-server`, the last node reaching NATS through a [`LinkProxy`].

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::proxy::{LinkMode, LinkProxy};
use super::rng::Rng;
use crate::app::{Backend, Options, TestApp, spawn_with};
use crate::nats::NatsServer;
use crate::pg::PgServer;
use crate::procs;

/// How long the cluster may take to be ready again after a fault.
const HEAL_TIMEOUT: Duration = Duration::from_secs(60);

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a node, restart it after a while.
    KillNode,
    /// SIGSTOP a node for longer than a heartbeat, then SIGCONT.
    PauseNode,
    /// SIGTERM a node (it drains and exits 0), then restart it.
    DrainNode,
    /// SIGKILL `nats-server`, restart it after a while.
    KillNats,
    /// SIGKILL Postgres (every process, no checkpoint), restart it: crash recovery.
    KillPostgres,
    /// Close the proxied node's NATS connections and refuse new ones, then heal.
    CutLink,
    /// Stop forwarding bytes between the proxied node and NATS, then heal.
    StallLink,
    /// Disconnect a random part of the subscribers; they resume elsewhere.
    ClientDrops,
}

impl FaultKind {
    /// Every kind: each runs at least once per run.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillNode,
        FaultKind::PauseNode,
        FaultKind::DrainNode,
        FaultKind::KillNats,
        FaultKind::KillPostgres,
        FaultKind::CutLink,
        FaultKind::StallLink,
        FaultKind::ClientDrops,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillNode => "kill_node",
            FaultKind::PauseNode => "pause_node",
            FaultKind::DrainNode => "drain_node",
            FaultKind::KillNats => "kill_nats",
            FaultKind::KillPostgres => "kill_postgres",
            FaultKind::CutLink => "cut_link",
            FaultKind::StallLink => "stall_link",
            FaultKind::ClientDrops => "client_drops",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// The node it hits (node and link faults).
    pub node: usize,
    /// How long the fault lasts before it heals (a node down, paused, a
    /// link cut), or for `ClientDrops` nothing.
    pub hold: Duration,
    /// For `ClientDrops`: the share of subscribers told to disconnect.
    pub share: f64,
    /// Quiet time after the cluster is healthy again.
    pub pause_after: Duration,
}

/// The fault schedule of a run, drawn from `rng`: every kind once, in a
/// random order, then random kinds; `heartbeat` sizes the pauses (longer
/// than one heartbeat).
pub fn schedule(rng: &mut Rng, nodes: usize, heartbeat: Duration, count: usize) -> Vec<Fault> {
    let mut kinds = FaultKind::ALL.to_vec();
    rng.shuffle(&mut kinds);
    while kinds.len() < count {
        kinds.push(FaultKind::ALL[rng.below(FaultKind::ALL.len())]);
    }
    kinds
        .into_iter()
        .map(|kind| {
            let hold = match kind {
                FaultKind::PauseNode => rng.duration(heartbeat * 3 / 2, heartbeat * 3),
                FaultKind::DrainNode | FaultKind::ClientDrops => Duration::ZERO,
                _ => rng.duration(Duration::from_millis(1000), Duration::from_millis(3500)),
            };
            let node = rng.below(nodes);
            Fault {
                kind,
                // The link faults hit the node behind the proxy: the last.
                node: match kind {
                    FaultKind::CutLink | FaultKind::StallLink => nodes - 1,
                    _ => node,
                },
                hold,
                share: rng.between(5, 20) as f64 / 100.0,
                pause_after: rng.duration(Duration::from_millis(300), Duration::from_millis(1500)),
            }
        })
        .collect()
}

/// Three nodes, Postgres, NATS and the proxy; everything is stopped when
/// dropped.
pub struct Cluster {
    pub nodes: Vec<TestApp>,
    pub pg: PgServer,
    pub nats: NatsServer,
    pub proxy: LinkProxy,
    /// The database every node uses.
    pub database_url: String,
    /// The node whose NATS traffic goes through the proxy.
    pub proxied: usize,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts Postgres, NATS, the proxy and `nodes` nodes (the last one
    /// behind the proxy) with `settings`, each ready before this returns.
    pub async fn start(nodes: usize, settings: &[(&str, String)]) -> anyhow::Result<Cluster> {
        let pg = tokio::task::block_in_place(PgServer::start)?;
        let database_url = pg.create_database()?;
        let nats = tokio::task::block_in_place(NatsServer::start)?;
        let proxy = LinkProxy::start(nats.port()).await?;
        let proxied = nodes - 1;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            pg,
            nats,
            proxy,
            database_url,
            proxied,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client builds"),
        };
        for i in 0..nodes {
            let nats_url = if i == proxied {
                cluster.proxy.url()
            } else {
                cluster.nats.url()
            };
            let mut options = Options::new(Backend::Url(cluster.database_url.clone()))
                .env("HERALD_NATS_URL", nats_url);
            for (key, value) in settings {
                options = options.env(key, value);
            }
            let node = spawn_with(options).await;
            cluster.nodes.push(node);
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// The nodes' base URLs (they keep their ports across restarts).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.base_url.clone()).collect()
    }

    /// Whether node `i` is ready (`/readyz` answers `200`: store up, not
    /// draining) with its NATS bus connected (`/healthz`; readiness itself
    /// does not depend on NATS).
    pub async fn is_ready(&self, i: usize) -> bool {
        let base = &self.nodes[i].base_url;
        let ready = matches!(
            self.http.get(format!("{base}/readyz")).send().await,
            Ok(response) if response.status() == 200
        );
        if !ready {
            return false;
        }
        match self.http.get(format!("{base}/healthz")).send().await {
            Ok(response) => response.json::<Value>().await.is_ok_and(|body| {
                body["bus"]["kind"] == "nats" && body["bus"]["ok"] == Value::Bool(true)
            }),
            Err(_) => false,
        }
    }

    /// Waits (bounded) until node `i` is ready.
    pub async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + HEAL_TIMEOUT;
        while !self.is_ready(i).await {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "node {i} not ready within {HEAL_TIMEOUT:?}; the end of its log:\n{}",
                    procs::tail(&self.nodes[i].log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits (bounded) until every node is ready.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// Injects `fault` (other than `ClientDrops`, which the run handles),
    /// holds it, heals it, and returns once every node is ready again.
    pub async fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        let node = fault.node;
        match fault.kind {
            FaultKind::KillNode => {
                tokio::task::block_in_place(|| self.nodes[node].kill());
                tokio::time::sleep(fault.hold).await;
                self.nodes[node]
                    .restart()
                    .await
                    .context("restarting a killed node")?;
            }
            FaultKind::PauseNode => {
                let pid = self.nodes[node].pid().context("the node runs")?;
                procs::signal(&[pid], "STOP")?;
                tokio::time::sleep(fault.hold).await;
                procs::signal(&[pid], "CONT")?;
            }
            FaultKind::DrainNode => {
                let app = &mut self.nodes[node];
                let status = tokio::task::block_in_place(|| {
                    app.signal_and_wait("TERM", Duration::from_secs(30))
                })?;
                anyhow::ensure!(
                    status.code() == Some(0),
                    "a drained node exited with {status}"
                );
                app.restart().await.context("restarting a drained node")?;
            }
            FaultKind::KillNats => {
                tokio::task::block_in_place(|| self.nats.stop());
                tokio::time::sleep(fault.hold).await;
                tokio::task::block_in_place(|| self.nats.restart()).context("restarting NATS")?;
            }
            FaultKind::KillPostgres => {
                tokio::task::block_in_place(|| self.pg.kill());
                tokio::time::sleep(fault.hold).await;
                tokio::task::block_in_place(|| self.pg.restart()).context("restarting Postgres")?;
            }
            FaultKind::CutLink | FaultKind::StallLink => {
                let mode = if fault.kind == FaultKind::CutLink {
                    LinkMode::Cut
                } else {
                    LinkMode::Stall
                };
                self.proxy.set(mode);
                tokio::time::sleep(fault.hold).await;
                self.proxy.set(LinkMode::Pass);
            }
            FaultKind::ClientDrops => {}
        }
        self.wait_healthy().await
    }

    /// Undoes whatever a failed run may have left: continues every node,
    /// heals the link.
    pub fn heal_all(&self) {
        self.proxy.set(LinkMode::Pass);
        let pids: Vec<u32> = self.nodes.iter().filter_map(TestApp::pid).collect();
        let _ = procs::signal(&pids, "CONT");
    }
}
