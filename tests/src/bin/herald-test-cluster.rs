//! A throwaway Herald cluster for tests written outside Rust (the browser
//! tests in `tests/browser/`): one node on SQLite, or several nodes sharing a
//! private Postgres and a private `nats-server`, all on free ports of
//! 127.0.0.1. It prints one JSON line describing the cluster, keeps
//! everything up until its standard input closes, then stops it all and
//! removes its files.
//!
//! ```text
//! herald-test-cluster [--nodes N] [--store sqlite|postgres] [--env HERALD_X=V]...
//! ```
//!
//! The line: `{"nodes":[{"url","port","pid","log"}],"secret","tokens":{"root"},
//! "postgres":{"url","pid"}|null,"nats":{"url","pid"}|null,"dir"}`. `secret`
//! is the HS256 key every node checks tokens with; `tokens.root` may
//! subscribe and publish everywhere and is an admin, for an hour. A node
//! that a test stops with SIGTERM is left stopped (it is reaped, not
//! restarted).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald::auth::{Claims, HeraldClaims, Minter};
use herald_tests::nats::NatsServer;
use herald_tests::pg::PgServer;
use herald_tests::procs::{self, Watchdog};
use serde_json::{Value, json};

/// The HS256 secret every node is started with.
const SECRET: &str = "test-secret-for-herald-browser-tests";
/// How long a node may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to die after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the printed root token lives.
const ROOT_TOKEN_SECS: u64 = 3600;

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    nodes: usize,
    postgres: bool,
    env: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 1,
        postgres: false,
        env: Vec::new(),
    };
    let mut store = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value (see the module documentation)"))
        };
        match arg.as_str() {
            "--nodes" => {
                args.nodes = value("--nodes")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .context("--nodes is a number from 1 to 16")?
            }
            "--store" => store = Some(value("--store")?),
            "--env" => {
                let pair = value("--env")?;
                let (key, val) = pair
                    .split_once('=')
                    .filter(|(k, _)| k.starts_with("HERALD_") || *k == "RUST_LOG")
                    .with_context(|| format!("--env takes HERALD_NAME=value, not {pair:?}"))?;
                args.env.push((key.to_owned(), val.to_owned()));
            }
            other => bail!(
                "unknown argument {other:?}; usage: herald-test-cluster [--nodes N] \
                 [--store sqlite|postgres] [--env HERALD_X=V]..."
            ),
        }
    }
    args.postgres = match store.as_deref() {
        None => args.nodes > 1,
        Some("postgres") => true,
        Some("sqlite") if args.nodes == 1 => false,
        Some("sqlite") => bail!("several nodes cannot share a SQLite file: use --store postgres"),
        Some(other) => bail!("--store is sqlite or postgres, not {other:?}"),
    };
    Ok(args)
}

/// One running `herald serve`, guarded by a watchdog.
struct Node {
    url: String,
    port: u16,
    child: Child,
    log: PathBuf,
    _watchdog: Watchdog,
}

/// The `herald` binary built into this package, next to this executable.
fn herald_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let binary = exe
        .parent()
        .context("this executable lives in a folder")?
        .join("herald-test-server");
    if !procs::is_executable(&binary) {
        bail!(
            "{} is missing: build it with `cargo build -p herald-tests --bins`",
            binary.display()
        );
    }
    Ok(binary)
}

fn start_node(
    binary: &Path,
    dir: &Path,
    index: usize,
    database_url: &str,
    nats_url: Option<&str>,
    env: &[(String, String)],
) -> anyhow::Result<Node> {
    let log = dir.join(format!("node-{index}.log"));
    let log_file = std::fs::File::create(&log).context("creating a node's log")?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_JWT_SECRET", SECRET)
        .env("HERALD_WORKERS", "2")
        .env("HERALD_LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    if let Some(url) = nats_url {
        command.env("HERALD_NATS_URL", url);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().context("starting herald")?;
    let mut watchdog = Watchdog::spawn(None)?;
    watchdog.watch(child.id(), "KILL", STOP_TIMEOUT)?;
    let stdout = child.stdout.take().context("herald's stdout is piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading so that the node never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let Ok(url) = rx.recv_timeout(START_TIMEOUT) else {
        procs::kill_child(&mut child);
        bail!(
            "node {index} did not start within {START_TIMEOUT:?}; its log:\n{}",
            procs::tail(&log, 40)
        );
    };
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the listening line ends in a port")?;
    Ok(Node {
        url,
        port,
        child,
        log,
        _watchdog: watchdog,
    })
}

fn root_token() -> anyhow::Result<String> {
    let now = herald::auth::token::now_secs();
    let claims = Claims {
        sub: "root".into(),
        exp: now + ROOT_TOKEN_SECS,
        iat: Some(now),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: true,
        },
        ..Claims::default()
    };
    Ok(Minter::hs256(SECRET.as_bytes()).mint(&claims)?)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let binary = herald_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("herald-cluster-")
        .tempdir()
        .context("creating a temporary folder")?;
    let dir_guard = Watchdog::spawn(Some(dir.path()))?;

    let postgres = if args.postgres {
        Some(PgServer::start()?)
    } else {
        None
    };
    let database_url = match &postgres {
        Some(pg) => pg.create_database()?,
        None => format!("sqlite://{}/herald.db", dir.path().display()),
    };
    let nats = if args.nodes > 1 {
        Some(NatsServer::start()?)
    } else {
        None
    };
    let nats_url = nats.as_ref().map(NatsServer::url);

    let mut nodes = Vec::new();
    for index in 0..args.nodes {
        // The first node migrates the store; the others start after it.
        let node = start_node(
            &binary,
            dir.path(),
            index,
            &database_url,
            nats_url.as_deref(),
            &args.env,
        );
        match node {
            Ok(node) => nodes.push(node),
            Err(error) => {
                for node in &mut nodes {
                    procs::kill_child(&mut node.child);
                }
                return Err(error);
            }
        }
    }

    let line = json!({
        "nodes": nodes.iter().map(|n| json!({
            "url": n.url,
            "port": n.port,
            "pid": n.child.id(),
            "log": n.log,
        })).collect::<Vec<Value>>(),
        "secret": SECRET,
        "tokens": {"root": root_token()?},
        "postgres": postgres.as_ref().map(|pg| json!({
            "url": database_url,
            "port": pg.port(),
            "pid": pg.pid(),
        })),
        "nats": nats.as_ref().map(|n| json!({"url": n.url(), "pid": n.pid()})),
        "dir": dir.path(),
    });
    println!("{line}");

    // Up until the test closes our standard input (or exits).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);

    for node in &mut nodes {
        procs::kill_child(&mut node.child);
    }
    drop(nodes);
    drop(nats);
    drop(postgres);
    drop(dir_guard);
    Ok(())
}
