//! A private `nats-server` for tests, on a free port of 127.0.0.1, that
//! failure tests can stop (SIGKILL) and restart on the same port. It never
//! touches the machine's own NATS.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::procs::{self, Watchdog};

/// How long a start or restart may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop may take to leave no process and a closed port.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start` tries when another process takes the port
/// between choosing it and the server binding it.
const PORT_ATTEMPTS: usize = 3;
/// Log lines quoted in start-up errors.
const LOG_LINES: usize = 40;

/// A running (or deliberately stopped) private `nats-server`. Dropping it
/// kills the server and removes its folder; if the test process dies first,
/// a [`Watchdog`] does the same.
#[derive(Debug)]
pub struct NatsServer {
    /// Holds `nats.log`; removed after `Drop` has killed the server.
    dir: TempDir,
    binary: PathBuf,
    port: u16,
    /// The HTTP monitoring port (`/subsz`, `/connz`).
    monitor_port: u16,
    /// The server process, while it runs.
    server: Option<Child>,
    /// Guards `dir` from creation and the server process while it runs.
    watchdog: Watchdog,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT` (no
    /// JetStream) on free ports and returns once the port accepts TCP connections. Fails after
    /// about 30 s with the server's log.
    pub fn start() -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("herald-nats-")
            .tempdir()
            .context("creating a temporary folder for NATS")?;
        let watchdog = Watchdog::spawn(Some(dir.path()))?;
        let mut server = NatsServer {
            dir,
            binary: binary(),
            port: 0,
            monitor_port: 0,
            server: None,
            watchdog,
        };
        let mut attempt = 1;
        loop {
            server.port = procs::free_port();
            server.monitor_port = procs::free_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(_) if attempt < PORT_ATTEMPTS && server.lost_port_race() => {
                    // Another process took the port first; start the log
                    // afresh so the next attempt is judged on its own.
                    File::create(server.log_path()).context("truncating the NATS log")?;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The TCP port the server listens on, on 127.0.0.1; it stays the same
    /// across `stop` and `restart`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`: the server's HTTP monitoring endpoint, where
    /// `/subsz?subs=1` lists every subscription.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The process id of the server, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The temporary folder holding the server's log (`nats.log`); removed
    /// when the server is dropped.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL and returns once it has exited and the
    /// port refuses connections. Does nothing if it is not running.
    ///
    /// # Panics
    ///
    /// If the port is still open 10 s after the server exited: the failure
    /// test calling this could not mean anything after that.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        procs::kill_child(&mut server);
        let closed = self
            .watchdog
            .unwatch()
            .and_then(|()| procs::wait_port_closed(self.port, STOP_TIMEOUT));
        if let Err(error) = closed {
            panic!(
                "could not stop the test NATS on port {}: {error:#}",
                self.port
            );
        }
    }

    /// Starts the server again on the same port (stopping it first if it
    /// runs) and returns once the port accepts TCP connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts `nats-server` on `self.port` and waits until the port is open.
    fn launch(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        // Only what this launch logs counts as its readiness.
        let log_start = log.metadata().map_or(0, |meta| meta.len());
        let mut server = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Out of the test run's process group, so that a Ctrl-C leaves
            // the cleanup to the watchdog.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        if let Err(error) = self.watchdog.watch(server.id(), "KILL", STOP_TIMEOUT) {
            procs::kill_child(&mut server);
            return Err(error);
        }
        let port = self.port;
        let log_path = self.log_path();
        let ready = procs::wait_until("NATS to accept connections", START_TIMEOUT, || {
            if let Some(status) = server.try_wait()? {
                anyhow::bail!("nats-server exited with {status}");
            }
            // An open port alone could be another process that won the
            // race for it; "Server is ready" in our log says it is ours.
            Ok(logged_since(&log_path, log_start, "Server is ready") && procs::port_is_open(port))
        });
        if let Err(error) = ready {
            procs::kill_child(&mut server);
            self.watchdog.unwatch()?;
            return Err(anyhow::anyhow!(
                "NATS on port {} did not start: {error:#}\nThe end of {}:\n{}",
                self.port,
                self.log_path().display(),
                procs::tail(&self.log_path(), LOG_LINES)
            ));
        }
        self.server = Some(server);
        Ok(())
    }

    /// Whether the last start-up failed because the port was taken.
    fn lost_port_race(&self) -> bool {
        std::fs::read_to_string(self.log_path())
            .is_ok_and(|log| log.contains("address already in use"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            procs::kill_child(&mut server);
        }
    }
}

/// Whether the file at `path` contains `needle` after its first `offset`
/// bytes.
fn logged_since(path: &Path, offset: u64, needle: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        let start = usize::try_from(offset).map_or(bytes.len(), |start| start.min(bytes.len()));
        String::from_utf8_lossy(&bytes[start..]).contains(needle)
    })
}

/// `nats-server` from `PATH`, else `/usr/sbin/nats-server`.
fn binary() -> PathBuf {
    procs::find_in_path("nats-server").unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}
