//! The Herald under load: one this tool starts (the default: a fresh
//! `herald serve` on a throwaway SQLite file, or on `--database-url`), or a
//! running one at `--url`. Either way it is on 127.0.0.1, and the load
//! generator holds a token allowed to publish.
//!
//! A target may have several nodes: `--nodes N` starts N `herald serve`
//! processes sharing one Postgres (`--database-url`) and one NATS
//! (`--nats-url`), and `--url` may be given once per running node.
//! Scenarios publish to the first node and spread their subscribers over
//! the others ([`Target::subscriber_urls`]); the server CPU they report is
//! the sum over every node whose process id is known.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use herald::auth::{Claims, HeraldClaims, Minter};
use serde::Serialize;

use crate::server::{Launch, LocalHerald};

/// How long a started Herald may take to print its address, by default.
pub const DEFAULT_START_TIMEOUT_SECS: u64 = 60;

/// How long a node may take to be ready with its bus connected.
const BUS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long `/readyz` may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the random HS256 secret of a started Herald.
const SECRET_BYTES: usize = 32;

/// The topic prefix every scenario publishes under; a token given with
/// `--token` must allow publishing to `load.>`.
pub const TOPIC_PREFIX: &str = "load";

/// A secret (a signing key or a token) that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Secret, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Secret(s.to_owned()))
    }
}

/// Which Herald to load, and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Base URL of a running Herald, on 127.0.0.1 (for example
    /// http://127.0.0.1:8080); repeat it for the nodes of a cluster (the
    /// first one is published to); unset: start one (or --nodes).
    #[arg(long, env = "HERALD_LOAD_URL", value_delimiter = ',')]
    pub url: Vec<String>,
    /// HS256 secret of the Herald at --url, to mint a token (publish: `>`);
    /// ignored without --url (a started Herald gets a random one).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// A token for the Herald at --url, allowed to publish to `load.>`
    /// (instead of --jwt-secret); ignored without --url.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Process id of the Herald at --url, to measure its CPU time; repeat
    /// it (in the order of the --url's) to sum every node's; unset: not
    /// measured.
    #[arg(
        long,
        env = "HERALD_LOAD_SERVER_PID",
        requires = "url",
        value_delimiter = ','
    )]
    pub server_pid: Vec<u32>,
    /// Herald nodes to start, sharing --database-url (Postgres) and
    /// --nats-url when more than one.
    #[arg(
        long,
        env = "HERALD_LOAD_NODES",
        default_value_t = 1,
        conflicts_with = "url"
    )]
    pub nodes: usize,
    /// NATS server of the started nodes (`nats://127.0.0.1:PORT`), their
    /// `HERALD_NATS_URL`; needed with --nodes 2 or more.
    #[arg(long, env = "HERALD_LOAD_NATS_URL", conflicts_with = "url")]
    pub nats_url: Option<String>,
    /// Process id of the database server (the Postgres postmaster), to
    /// measure its CPU time and its children's (the backends); unset: not
    /// measured.
    #[arg(long, env = "HERALD_LOAD_DB_PID")]
    pub db_pid: Option<u32>,
    /// The `herald` binary to start; default: target/release/herald of this
    /// workspace, else target/debug/herald (`cargo build --release -p herald`).
    #[arg(long, env = "HERALD_LOAD_HERALD_BIN", conflicts_with = "url")]
    pub herald_bin: Option<PathBuf>,
    /// Database of the started Herald (`sqlite://...` or `postgres://...` on
    /// this machine); default: a SQLite file in a temporary directory.
    #[arg(
        long,
        env = "HERALD_LOAD_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "url"
    )]
    pub database_url: Option<String>,
    /// A further setting of the started Herald, KEY=VALUE (repeatable), for
    /// example HERALD_STORE_WRITERS=1.
    #[arg(long = "herald-env", value_name = "KEY=VALUE", value_parser = parse_key_value, conflicts_with = "url")]
    pub herald_env: Vec<(String, String)>,
    /// Seconds the started Herald may take to print its address.
    #[arg(long, env = "HERALD_LOAD_START_TIMEOUT_SECS", default_value_t = DEFAULT_START_TIMEOUT_SECS)]
    pub start_timeout_secs: u64,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if !k.starts_with("HERALD_") && k != "RUST_LOG" {
        return Err(format!(
            "{k} is not a Herald setting (HERALD_* or RUST_LOG)"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// The checked form of [`TargetArgs`].
#[derive(Debug, Clone)]
pub enum TargetPlan {
    /// Start `herald serve`.
    Local {
        bin: PathBuf,
        /// `None`: a SQLite file in a temporary directory.
        database_url: Option<String>,
        env: Vec<(String, String)>,
        start_timeout: Duration,
        /// Nodes to start (1: no NATS).
        nodes: usize,
        /// `HERALD_NATS_URL` of every node.
        nats_url: Option<String>,
    },
    /// Running nodes (the first is published to).
    Remote {
        base_urls: Vec<String>,
        credential: Credential,
        /// One per node, or empty (CPU not measured).
        pids: Vec<u32>,
    },
}

/// How to get a token for a running Herald.
#[derive(Debug, Clone)]
pub enum Credential {
    Secret(Secret),
    Token(Secret),
}

impl TargetArgs {
    /// Checks the arguments; nothing is started yet.
    pub fn plan(&self) -> anyhow::Result<TargetPlan> {
        if !self.url.is_empty() {
            let base_urls = self
                .url
                .iter()
                .map(|url| loopback_http_url(url))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let credential = match (&self.token, &self.jwt_secret) {
                (Some(token), _) => Credential::Token(token.clone()),
                (None, Some(secret)) => Credential::Secret(secret.clone()),
                (None, None) => bail!("--url needs --jwt-secret or --token"),
            };
            if !self.server_pid.is_empty() && self.server_pid.len() != base_urls.len() {
                bail!(
                    "--server-pid: give one per --url ({} urls, {} pids)",
                    base_urls.len(),
                    self.server_pid.len()
                );
            }
            return Ok(TargetPlan::Remote {
                base_urls,
                credential,
                pids: self.server_pid.clone(),
            });
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            bail!("--nodes must be 1..={MAX_NODES}");
        }
        if let Some(url) = &self.nats_url {
            check_nats_url(url)?;
        }
        if self.nodes > 1 {
            let on_postgres = self
                .database_url
                .as_deref()
                .is_some_and(|u| u.starts_with("postgres"));
            if !on_postgres || self.nats_url.is_none() {
                bail!(
                    "--nodes {} needs a shared Postgres (--database-url postgres://...) and \
                     --nats-url nats://127.0.0.1:PORT",
                    self.nodes
                );
            }
        }
        let bin = match &self.herald_bin {
            Some(bin) if bin.is_file() => bin.clone(),
            Some(bin) => bail!("--herald-bin {}: no such file", bin.display()),
            None => default_herald_bin()?,
        };
        if let Some(url) = &self.database_url {
            check_database_url(url)?;
        }
        if self.start_timeout_secs == 0 {
            bail!("--start-timeout-secs must be at least 1");
        }
        Ok(TargetPlan::Local {
            bin,
            database_url: self.database_url.clone(),
            env: self.herald_env.clone(),
            start_timeout: Duration::from_secs(self.start_timeout_secs),
            nodes: self.nodes,
            nats_url: self.nats_url.clone(),
        })
    }
}

/// Most nodes this tool starts.
const MAX_NODES: usize = 16;

/// A NATS URL must be `nats://` to this machine.
fn check_nats_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--nats-url {url:?}"))?;
    if parsed.scheme() != "nats" {
        bail!("--nats-url must be nats://... (got {url:?})");
    }
    if !parsed.host_str().is_some_and(is_loopback_host) {
        bail!("--nats-url must point at this machine (127.0.0.1); got {url:?}");
    }
    Ok(())
}

/// `url` without a trailing slash, if it is `http://` to a loopback address.
fn loopback_http_url(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("--url must be http:// (got {url:?})");
    }
    if !parsed.host_str().is_some_and(is_loopback_host) {
        bail!("--url must point at this machine (127.0.0.1); got {url:?}");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A database URL must be SQLite, or Postgres on this machine.
fn check_database_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--database-url must be sqlite://... or postgres://...");
    }
    let parsed = reqwest::Url::parse(url).context("--database-url is not a URL")?;
    match parsed.host_str() {
        // No host: a Unix socket (`?host=/path`).
        None | Some("") => Ok(()),
        Some(host) if is_loopback_host(host) => Ok(()),
        Some(host) => bail!("--database-url must be a Postgres on this machine, not {host}"),
    }
}

/// `localhost`, or a loopback address (IPv6 in brackets, as URLs write it).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// target/release/herald of this workspace, else target/debug/herald.
fn default_herald_bin() -> anyhow::Result<PathBuf> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    for profile in ["release", "debug"] {
        let bin = target_dir.join(profile).join("herald");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no herald binary in {}/{{release,debug}}: run `cargo build --release -p herald` first, or pass --herald-bin",
        target_dir.display()
    )
}

/// What a report says about the target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// `started` (by this tool) or `url`.
    pub mode: &'static str,
    /// The base URL (of the first node).
    pub base_url: String,
    /// Every node's base URL, the first one first.
    pub nodes: Vec<String>,
    /// The binary, when started here.
    pub herald_bin: Option<String>,
    /// Its `--version`, when started here.
    pub herald_version: Option<String>,
    /// Store kind from `/readyz` (`sqlite`, `postgres`).
    pub store: String,
    /// Bus kind from `/healthz`.
    pub bus: String,
    /// Extra settings it was started with.
    pub herald_env: Vec<String>,
    /// Whether its CPU time is measured.
    pub cpu_measured: bool,
    /// Whether the database server's CPU time is measured (`--db-pid`).
    pub db_cpu_measured: bool,
}

/// A Herald under load.
pub struct Target {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// A bearer token allowed to publish under [`TOPIC_PREFIX`].
    pub token: Secret,
    /// The (first) server's process id, when its CPU can be measured.
    pub pid: Option<u32>,
    /// Every node's base URL, the first one first.
    pub node_urls: Vec<String>,
    /// Every node's process id, when all are known (else empty).
    pub pids: Vec<u32>,
    /// The database server's process id, when its CPU is measured.
    pub db_pid: Option<u32>,
    /// The HS256 signing secret, when known (a started server, or
    /// `--jwt-secret`): scenarios that need a token per client mint them.
    pub jwt_secret: Option<Secret>,
    /// For the report.
    pub info: TargetInfo,
    locals: Vec<LocalHerald>,
    /// Started nodes this run killed on purpose (`storm --kill-node`).
    killed: Vec<usize>,
    // Holds the started server's SQLite file and log; removed on drop,
    // after `local` (fields drop in order).
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts (or reaches) the target and checks that it is ready.
    /// `token_secs` is how long the token must stay valid.
    pub async fn start(
        plan: TargetPlan,
        db_pid: Option<u32>,
        token_secs: u64,
    ) -> anyhow::Result<Target> {
        let mut target = match plan {
            TargetPlan::Local {
                bin,
                database_url,
                env,
                start_timeout,
                nodes,
                nats_url,
            } => {
                let dir = tempfile::Builder::new()
                    .prefix("herald-load-")
                    .tempdir()
                    .context("making a temporary directory")?;
                let database_url = database_url.unwrap_or_else(|| {
                    format!("sqlite://{}", dir.path().join("herald.db").display())
                });
                let secret = random_secret();
                let mut node_env = env.clone();
                if let Some(nats) = &nats_url {
                    node_env.push(("HERALD_NATS_URL".into(), nats.clone()));
                }
                let version = herald_version(&bin);
                let mut locals = Vec::with_capacity(nodes);
                // One after the other: the first applies the migrations.
                for i in 0..nodes {
                    let launch = Launch {
                        bin: bin.clone(),
                        database_url: database_url.clone(),
                        jwt_secret: secret.clone(),
                        env: node_env.clone(),
                        log_path: dir.path().join(if nodes == 1 {
                            "herald.log".to_owned()
                        } else {
                            format!("herald-{}.log", i + 1)
                        }),
                        start_timeout,
                    };
                    let local = tokio::task::spawn_blocking(move || LocalHerald::start(&launch))
                        .await
                        .context("the start-up task panicked")??;
                    locals.push(local);
                }
                let node_urls: Vec<String> = locals.iter().map(|l| l.base_url.clone()).collect();
                Target {
                    base_url: node_urls[0].clone(),
                    token: mint(secret.as_bytes(), token_secs)?,
                    jwt_secret: Some(Secret(secret.clone())),
                    pid: Some(locals[0].pid),
                    pids: locals.iter().map(|l| l.pid).collect(),
                    db_pid: None,
                    info: TargetInfo {
                        mode: "started",
                        base_url: node_urls[0].clone(),
                        nodes: node_urls.clone(),
                        herald_bin: Some(bin.display().to_string()),
                        herald_version: version,
                        store: String::new(),
                        bus: String::new(),
                        herald_env: node_env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                        cpu_measured: true,
                        db_cpu_measured: false,
                    },
                    node_urls,
                    locals,
                    killed: Vec::new(),
                    _dir: Some(dir),
                }
            }
            TargetPlan::Remote {
                base_urls,
                credential,
                pids,
            } => Target {
                jwt_secret: match &credential {
                    Credential::Secret(secret) => Some(secret.clone()),
                    Credential::Token(_) => None,
                },
                token: match credential {
                    Credential::Token(token) => token,
                    Credential::Secret(secret) => mint(secret.expose().as_bytes(), token_secs)?,
                },
                pid: pids.first().copied(),
                db_pid: None,
                info: TargetInfo {
                    mode: "url",
                    base_url: base_urls[0].clone(),
                    nodes: base_urls.clone(),
                    herald_bin: None,
                    herald_version: None,
                    store: String::new(),
                    bus: String::new(),
                    herald_env: Vec::new(),
                    cpu_measured: !pids.is_empty(),
                    db_cpu_measured: false,
                },
                pids,
                base_url: base_urls[0].clone(),
                node_urls: base_urls,
                locals: Vec::new(),
                killed: Vec::new(),
                _dir: None,
            },
        };
        let (store, bus) = target.readiness().await?;
        target.info.store = store;
        target.info.bus = bus;
        if let Some(pid) = db_pid {
            crate::cpu::process_tree_cpu(pid)
                .with_context(|| format!("--db-pid {pid}: reading its CPU time"))?;
            target.db_pid = Some(pid);
            target.info.db_cpu_measured = true;
        }
        Ok(target)
    }

    /// Base URLs subscribers connect to: every node but the first (which
    /// is published to) when there are several, else the only one.
    pub fn subscriber_urls(&self) -> &[String] {
        if self.node_urls.len() > 1 {
            &self.node_urls[1..]
        } else {
            &self.node_urls
        }
    }

    /// Asks every node whether it is ready with its bus up (waiting up to
    /// `BUS_CONNECT_TIMEOUT`); returns the first node's store and bus kinds.
    async fn readiness(&self) -> anyhow::Result<(String, String)> {
        let mut first = None;
        for base in &self.node_urls {
            // A node started here may still be connecting to NATS.
            let deadline = std::time::Instant::now() + BUS_CONNECT_TIMEOUT;
            let kinds = loop {
                match readiness_of(base).await {
                    Ok(kinds) => break kinds,
                    Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            };
            first.get_or_insert(kinds);
        }
        first.context("no node")
    }

    /// Whether every started server is still running (always true for `--url`).
    pub fn is_running(&mut self) -> bool {
        let killed = &self.killed;
        self.locals
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !killed.contains(i))
            .all(|(_, local)| local.is_running())
    }

    /// SIGKILLs started node `i` and reaps it; the other nodes go on.
    /// Only nodes this tool started can be killed, and never the first
    /// (publishers use it).
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        if i == 0 || i >= self.locals.len() {
            bail!(
                "node {} cannot be killed: {} nodes were started here, and the first takes the publishes",
                i + 1,
                self.locals.len()
            );
        }
        self.locals[i].kill();
        self.killed.push(i);
        Ok(())
    }

    /// The process ids of the nodes not killed (empty when not measured).
    pub fn live_pids(&self) -> Vec<u32> {
        self.pids
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.killed.contains(i))
            .map(|(_, pid)| *pid)
            .collect()
    }

    /// Stops the started servers; returns the lines of their logs (warnings
    /// and errors). Nothing to do for `--url`.
    pub fn stop(mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for mut local in self.locals.drain(..) {
            local.kill();
            lines.extend(local.log_lines());
        }
        lines
    }
}

/// Asks `/readyz` of `base` for the store kind and `/healthz` for the bus
/// kind; fails unless the node is ready and its bus is up (a node is ready
/// without NATS, but a measurement across nodes needs it).
async fn readiness_of(base: &str) -> anyhow::Result<(String, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(READY_TIMEOUT)
        .build()
        .context("building an HTTP client")?;
    let mut kinds = Vec::new();
    for (path, part) in [("readyz", "store"), ("healthz", "bus")] {
        let url = format!("{base}/{path}");
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("GET {url}: the body is not JSON"))?;
        if !status.is_success() || body[part]["ok"] == serde_json::Value::Bool(false) {
            bail!("GET {url}: {status}: {body}");
        }
        kinds.push(body[part]["kind"].as_str().unwrap_or("unknown").to_owned());
    }
    let bus = kinds.pop().unwrap_or_default();
    let store = kinds.pop().unwrap_or_default();
    Ok((store, bus))
}

/// `SECRET_BYTES` random bytes as hex.
fn random_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token allowed to publish and subscribe everywhere, valid `secs` seconds.
fn mint(secret: &[u8], secs: u64) -> anyhow::Result<Secret> {
    let now = herald::auth::token::now_secs();
    let token = Minter::hs256(secret)
        .mint(&Claims {
            sub: "herald-load".into(),
            exp: now + secs,
            iat: Some(now),
            herald: HeraldClaims {
                publish: vec![">".into()],
                subscribe: vec![">".into()],
                admin: false,
            },
            ..Default::default()
        })
        .context("minting a token")?;
    Ok(Secret(token))
}

/// `herald --version`, if it answers.
fn herald_version(bin: &Path) -> Option<String> {
    let output = std::process::Command::new(bin)
        .arg("--version")
        .env_clear()
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            loopback_http_url("http://127.0.0.1:8080/").expect("loopback"),
            "http://127.0.0.1:8080"
        );
        assert!(loopback_http_url("http://localhost:8080").is_ok());
        assert!(loopback_http_url("http://10.0.0.1:8080").is_err());
        assert!(loopback_http_url("https://127.0.0.1:8080").is_err());
    }

    #[test]
    fn a_remote_database_is_refused() {
        assert!(check_database_url("sqlite:///tmp/x.db").is_ok());
        assert!(check_database_url("postgres://postgres@127.0.0.1:55432/db").is_ok());
        assert!(check_database_url("postgres://u@db.example.com/db").is_err());
    }

    /// The target arguments of a `fanout` command line.
    fn target_args(args: &[&str]) -> TargetArgs {
        let mut argv = vec!["herald-load", "fanout"];
        argv.extend_from_slice(args);
        let cli = <crate::Cli as clap::Parser>::try_parse_from(argv).expect("valid arguments");
        match cli.command {
            crate::Command::Fanout(f) => f.target,
            _ => unreachable!("a fanout command line"),
        }
    }

    #[test]
    fn several_urls_make_a_cluster_with_one_pid_each() {
        let plan = target_args(&[
            "--url",
            "http://127.0.0.1:8081",
            "--url",
            "http://127.0.0.1:8082",
            "--server-pid",
            "11",
            "--server-pid",
            "12",
            "--jwt-secret",
            "s",
        ])
        .plan()
        .expect("a valid plan");
        let TargetPlan::Remote {
            base_urls, pids, ..
        } = plan
        else {
            panic!("--url plans a remote target");
        };
        assert_eq!(
            base_urls,
            ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
        );
        assert_eq!(pids, [11, 12]);
        let mismatched = target_args(&[
            "--url",
            "http://127.0.0.1:8081",
            "--url",
            "http://127.0.0.1:8082",
            "--server-pid",
            "11",
            "--jwt-secret",
            "s",
        ]);
        assert!(mismatched.plan().is_err(), "one pid for two urls");
    }

    #[test]
    fn several_started_nodes_need_postgres_and_a_local_nats() {
        let bin = std::env::current_exe().expect("the test binary");
        let bin = bin.to_str().expect("a UTF-8 path");
        let pg = "postgres://postgres@127.0.0.1:55432/db";
        let ok = target_args(&[
            "--nodes",
            "3",
            "--database-url",
            pg,
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--herald-bin",
            bin,
        ]);
        assert!(matches!(ok.plan(), Ok(TargetPlan::Local { nodes: 3, .. })));
        for bad in [
            vec!["--nodes", "3", "--nats-url", "nats://127.0.0.1:4222"],
            vec!["--nodes", "3", "--database-url", pg],
            vec![
                "--nodes",
                "3",
                "--database-url",
                pg,
                "--nats-url",
                "nats://10.0.0.1:4222",
            ],
            vec!["--nodes", "0"],
        ] {
            let mut args = bad.clone();
            args.extend(["--herald-bin", bin]);
            assert!(target_args(&args).plan().is_err(), "{bad:?}");
        }
    }
}
