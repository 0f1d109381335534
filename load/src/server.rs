//! A local `herald serve` process started for a load run: on port 0 of
//! 127.0.0.1, with a random HS256 secret, its JSON log in a file, its
//! address read from the `listening on http://ADDR` line of its standard
//! output. It is SIGKILLed when the run ends, or when its handle is dropped
//! on any error path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// The line `herald serve` prints once it is bound, before the address.
const LISTENING_PREFIX: &str = "listening on ";

/// How long the process may take to exit after SIGKILL before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often an exit is polled for while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `herald` binary.
    pub bin: PathBuf,
    /// Its `HERALD_DATABASE_URL`.
    pub database_url: String,
    /// Its `HERALD_JWT_SECRET`.
    pub jwt_secret: String,
    /// Further `HERALD_*` settings.
    pub env: Vec<(String, String)>,
    /// Where its standard error (the JSON log) goes.
    pub log_path: PathBuf,
    /// How long it may take to print its address.
    pub start_timeout: Duration,
}

/// A running `herald serve`, killed when dropped.
pub struct LocalHerald {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the server printed it.
    pub base_url: String,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log_path: PathBuf,
}

impl LocalHerald {
    /// Starts the server and waits for its address. Blocks (up to
    /// `launch.start_timeout`).
    pub fn start(launch: &Launch) -> anyhow::Result<LocalHerald> {
        let log = std::fs::File::create(&launch.log_path)
            .with_context(|| format!("creating {}", launch.log_path.display()))?;
        let mut command = Command::new(&launch.bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            // Only the settings chosen here: a HERALD_NATS_URL or a
            // database URL in the caller's environment must not leak in.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HERALD_JWT_SECRET", &launch.jwt_secret)
            .env("HERALD_DATABASE_URL", &launch.database_url)
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .expect("stdout was set to piped just above");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("herald-stdout".into())
            .spawn(move || {
                // Keep reading until the process exits, so that it never
                // blocks on a full pipe; only the address line matters.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            })
            .context("starting the thread that reads herald's output")?;
        let mut server = LocalHerald {
            child,
            base_url: String::new(),
            pid,
            log_path: launch.log_path.clone(),
        };
        match rx.recv_timeout(launch.start_timeout) {
            Ok(addr) if addr.starts_with("http://127.0.0.1:") => {
                server.base_url = addr;
                Ok(server)
            }
            Ok(addr) => bail!("herald printed an address that is not 127.0.0.1: {addr}"),
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                bail!(
                    "herald did not print its address within {:?} ({}); its log:\n{}",
                    launch.start_timeout,
                    status.map_or("still running".to_owned(), |s| format!("exited: {s}")),
                    tail(&server.log_path, 30)
                )
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The lines of its log (each a warning or an error, at `RUST_LOG=warn`).
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// SIGKILLs the process and reaps it (bounded).
    pub fn kill(&mut self) {
        // `kill` fails only when the child has already been reaped.
        let _ = self.child.kill();
        let deadline = std::time::Instant::now() + KILL_WAIT;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for LocalHerald {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
