//! A private, throwaway PostgreSQL cluster for tests: `initdb` into a fresh
//! temporary folder, `postgres` on a free port of 127.0.0.1, fresh databases
//! on demand, and abrupt kills and restarts for failure tests. It never
//! touches the machine's own Postgres.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as
//! root they run as the `postgres` OS user, in a folder owned by it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::procs::{self, Watchdog};

/// How long a start or restart may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a kill or stop may take to leave no process and a closed port.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `psql` may take to create a database.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh ports `start` tries when another process takes the port
/// between choosing it and the server binding it.
const PORT_ATTEMPTS: usize = 3;
/// Log lines quoted in start-up errors.
const LOG_LINES: usize = 40;

/// A running (or deliberately killed) private PostgreSQL cluster. Dropping it
/// stops the server and removes all of its files; if the test process dies
/// first, a [`Watchdog`] does the same.
#[derive(Debug)]
pub struct PgServer {
    /// Holds `data/` (the cluster), `sock/` (its Unix socket) and
    /// `postgres.log`; removed after `Drop` has stopped the server.
    dir: TempDir,
    bin_dir: PathBuf,
    run_as: Option<OsUser>,
    port: u16,
    /// The server process, while it runs.
    postmaster: Option<Child>,
    /// Guards `dir` from creation and whichever process writes to it.
    watchdog: Watchdog,
}

/// An OS user to run the Postgres programs as.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl PgServer {
    /// Creates a cluster with `initdb` in a fresh temporary folder (trust
    /// authentication, superuser `postgres`, UTF8, no fsync during `initdb`)
    /// and starts `postgres` on a free port of 127.0.0.1, returning once it
    /// accepts connections. Fails after about 30 s with the server's log.
    pub fn start() -> anyhow::Result<PgServer> {
        let bin_dir = bin_dir();
        let run_as = if procs::effective_uid()? == 0 {
            Some(OsUser::lookup("postgres")?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .context("creating a temporary folder for Postgres")?;
        let watchdog = Watchdog::spawn(Some(dir.path()))?;
        std::fs::create_dir(dir.path().join("sock")).context("creating the socket folder")?;
        if let Some(user) = &run_as {
            for path in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("giving {} to {}", path.display(), user.name))?;
            }
        }
        let mut server = PgServer {
            dir,
            bin_dir,
            run_as,
            port: 0,
            postmaster: None,
            watchdog,
        };
        server.initdb()?;
        let mut attempt = 1;
        loop {
            server.port = procs::free_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(_) if attempt < PORT_ATTEMPTS && server.lost_port_race() => {
                    // Another process took the port first; start the log
                    // afresh so the next attempt is judged on its own.
                    File::create(server.log_path()).context("truncating the Postgres log")?;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The TCP port the server listens on, on 127.0.0.1; it stays the same
    /// across `kill` and `restart`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the postmaster, if the server is running.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The temporary folder holding the cluster, its socket and its log
    /// (`postgres.log`); removed when the server is dropped.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a fresh, uniquely named, empty database and returns its URL,
    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn create_database(&self) -> anyhow::Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "herald_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let output = procs::run_with_timeout(
            Command::new(self.client("psql"))
                .arg("-X")
                .arg("-q")
                .arg("-v")
                .arg("ON_ERROR_STOP=1")
                .arg("-d")
                .arg(self.url("postgres"))
                .arg("-c")
                .arg(format!("CREATE DATABASE \"{name}\""))
                .env("PGCONNECT_TIMEOUT", "10"),
            PSQL_TIMEOUT,
        )?;
        procs::check_output(&format!("creating database {name}"), &output)?;
        Ok(self.url(&name))
    }

    /// Runs `sql` (one or more statements, in one transaction) on the
    /// database at `database_url` with `psql`.
    pub fn execute(&self, database_url: &str, sql: &str) -> anyhow::Result<()> {
        let output = procs::run_with_timeout(
            Command::new(self.client("psql"))
                .arg("-X")
                .arg("-q")
                .arg("-1")
                .arg("-v")
                .arg("ON_ERROR_STOP=1")
                .arg("-d")
                .arg(database_url)
                .arg("-c")
                .arg(sql)
                .env("PGCONNECT_TIMEOUT", "10"),
            PSQL_TIMEOUT,
        )?;
        procs::check_output("running SQL", &output)
    }

    /// Kills the server abruptly, as a crash would: the postmaster and every
    /// process it started get SIGKILL, with no shutdown checkpoint. Returns
    /// once all of them are gone and the port refuses connections. Does
    /// nothing if the server is not running.
    ///
    /// # Panics
    ///
    /// If the processes do not die or the port stays open within 10 s: the
    /// failure test calling this could not mean anything after that.
    pub fn kill(&mut self) {
        let Some(postmaster) = self.postmaster.take() else {
            return;
        };
        if let Err(error) = self.crash(postmaster, true) {
            panic!(
                "could not kill the test Postgres on port {}: {error:#}",
                self.port
            );
        }
    }

    /// Starts the server again on the same data folder and port (killing it
    /// first if it runs) and returns once it accepts connections, after any
    /// crash recovery.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A client program from the server's bin folder, or from `PATH`.
    fn client(&self, name: &str) -> PathBuf {
        let candidate = self.bin_dir.join(name);
        if procs::is_executable(&candidate) {
            candidate
        } else {
            PathBuf::from(name)
        }
    }

    /// A command running server program `name`, as the `postgres` user when
    /// this process is root.
    fn server_command(&self, name: &str) -> Command {
        let program = self.bin_dir.join(name);
        let mut command = match &self.run_as {
            Some(user) => {
                // `setpriv` execs the program, so the child's pid is the
                // program's own; `runuser` would stay in between as parent.
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                command
            }
            None => Command::new(program),
        };
        // Postgres may not be allowed into the caller's working folder.
        command.current_dir(self.dir.path());
        command
    }

    fn initdb(&mut self) -> anyhow::Result<()> {
        let output = procs::run_guarded(
            self.server_command("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-U")
                .arg("postgres")
                .arg("--auth=trust")
                .arg("--encoding=UTF8")
                .arg("--locale=C")
                .arg("--no-sync"),
            INITDB_TIMEOUT,
            &mut self.watchdog,
        )?;
        procs::check_output("initdb", &output)
    }

    /// Starts `postgres` on `self.port` and waits until it accepts
    /// connections.
    fn launch(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let log = self.open_log()?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mut postmaster = self
            .server_command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=on"])
            .args(["-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=300"])
            .args(["-c", "shared_buffers=128MB"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Out of the test run's process group, so that a Ctrl-C leaves
            // the shutdown to the watchdog.
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        // An immediate shutdown: the postmaster SIGQUITs its children, waits
        // for them and removes its shared memory.
        if let Err(error) = self.watchdog.watch(postmaster.id(), "QUIT", STOP_TIMEOUT) {
            procs::kill_child(&mut postmaster);
            return Err(error);
        }
        self.postmaster = Some(postmaster);
        if let Err(error) = self.wait_ready() {
            if let Some(postmaster) = self.postmaster.take() {
                // Already failing; the start-up error is the one to report.
                // Another process may hold the port, so do not wait for it.
                let _ = self.crash(postmaster, false);
            }
            return Err(anyhow::anyhow!(
                "Postgres on port {} did not start: {error:#}\nThe end of {}:\n{}",
                self.port,
                self.log_path().display(),
                procs::tail(&self.log_path(), LOG_LINES)
            ));
        }
        Ok(())
    }

    fn open_log(&self) -> anyhow::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))
    }

    /// Polls `pg_isready` until the server accepts connections, failing early
    /// if the postmaster exits.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let pg_isready = self.client("pg_isready");
        let port = self.port.to_string();
        let Some(postmaster) = self.postmaster.as_mut() else {
            bail!("the server is not running");
        };
        procs::wait_until("Postgres to accept connections", START_TIMEOUT, || {
            if let Some(status) = postmaster.try_wait()? {
                bail!("postgres exited with {status}");
            }
            let output = procs::run_with_timeout(
                Command::new(&pg_isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port])
                    .args(["-U", "postgres", "-d", "postgres", "-t", "2"]),
                Duration::from_secs(10),
            )?;
            Ok(output.status.success())
        })
    }

    /// Whether the last start-up failed because the port was taken.
    fn lost_port_race(&self) -> bool {
        std::fs::read_to_string(self.log_path())
            .is_ok_and(|log| log.contains("could not bind") || log.contains("already in use"))
    }

    /// SIGKILLs the postmaster and all of its children at once, then waits
    /// until they are gone and, if `wait_port`, until the port is closed.
    fn crash(&mut self, mut postmaster: Child, wait_port: bool) -> anyhow::Result<()> {
        let pid = postmaster.id();
        // Backends make themselves process-group leaders, so a group kill
        // would miss them; find them as children instead. Stopping the
        // postmaster first means it cannot fork more while we look. Until we
        // reap it, `pid` names the postmaster even if it has exited; once
        // reaped it may name some other process, which we leave alone.
        let mut exited = postmaster.try_wait()?.is_some();
        let mut stopped = Ok(());
        if !exited {
            procs::signal(&[pid], "STOP")?;
            stopped = procs::wait_until("the postmaster to stop", STOP_TIMEOUT, || {
                exited = postmaster.try_wait()?.is_some();
                Ok(exited || procs::is_stopped(pid))
            });
        }
        if !exited {
            let children = procs::children_of(pid);
            let mut victims = vec![pid];
            victims.extend(&children);
            procs::signal(&victims, "KILL")?;
            stopped?;
            if !procs::wait_child(&mut postmaster, STOP_TIMEOUT)? {
                bail!("the postmaster {pid} survived SIGKILL");
            }
            procs::wait_gone(&children, STOP_TIMEOUT)?;
        }
        self.watchdog.unwatch()?;
        self.remove_shared_memory();
        if wait_port {
            procs::wait_port_closed(self.port, STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// Removes the System V shared memory segment a killed postmaster leaves
    /// behind. A restart would remove it too (nothing is attached), but a
    /// cluster that is killed and then dropped would leak it.
    fn remove_shared_memory(&self) {
        // Line 7 of postmaster.pid is "KEY ID" of the segment.
        let Ok(pid_file) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return;
        };
        let Some(id) = pid_file
            .lines()
            .nth(6)
            .and_then(|line| line.split_whitespace().nth(1))
            .filter(|id| id.parse::<u64>().is_ok())
        else {
            return;
        };
        // Best effort: the segment may already be gone.
        let _ = procs::run_with_timeout(
            Command::new("ipcrm").arg("-m").arg(id),
            Duration::from_secs(10),
        );
    }

    /// Stops the server with an immediate shutdown (SIGQUIT), falling back to
    /// SIGKILL if it takes too long.
    fn shut_down(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let quit = procs::signal(&[postmaster.id()], "QUIT").is_ok();
        if quit && matches!(procs::wait_child(&mut postmaster, STOP_TIMEOUT), Ok(true)) {
            return;
        }
        // Nothing to report to from a drop; the folder goes away regardless.
        let _ = self.crash(postmaster, true);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl OsUser {
    /// Looks `name` up with `getent passwd`.
    fn lookup(name: &str) -> anyhow::Result<OsUser> {
        let output = procs::run_with_timeout(
            Command::new("getent").arg("passwd").arg(name),
            Duration::from_secs(10),
        )?;
        procs::check_output(
            &format!("looking up OS user {name} (Postgres will not run as root)"),
            &output,
        )?;
        let entry = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<&str> = entry.trim().split(':').collect();
        let (Some(uid), Some(gid)) = (
            fields.get(2).and_then(|uid| uid.parse().ok()),
            fields.get(3).and_then(|gid| gid.parse().ok()),
        ) else {
            bail!("unexpected passwd entry for {name}: {entry}");
        };
        Ok(OsUser {
            name: name.to_owned(),
            uid,
            gid,
        })
    }
}

/// The folder holding `initdb` and `postgres`: `pg_config --bindir`, else
/// `/usr/lib/postgresql/15/bin`, else the highest `/usr/lib/postgresql/*/bin`,
/// else the folder of `postgres` on `PATH`.
fn bin_dir() -> PathBuf {
    let has_server = |dir: &Path| {
        procs::is_executable(&dir.join("postgres")) && procs::is_executable(&dir.join("initdb"))
    };
    let from_pg_config = procs::run_with_timeout(
        Command::new("pg_config").arg("--bindir"),
        Duration::from_secs(10),
    )
    .ok()
    .filter(|output| output.status.success())
    .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| has_server(dir)) {
        return dir;
    }
    let debian_15 = PathBuf::from("/usr/lib/postgresql/15/bin");
    if has_server(&debian_15) {
        return debian_15;
    }
    let highest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path().join("bin");
            has_server(&dir).then_some((version, dir))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, dir)) = highest {
        return dir;
    }
    procs::find_in_path("postgres")
        .and_then(|postgres| postgres.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// One cluster shared by all the tests of a test binary, started on first
/// use; tests take fresh databases from it with
/// [`create_database`](PgServer::create_database). It is never dropped: its
/// watchdog stops it and removes its files when the test binary exits.
///
/// # Panics
///
/// If the cluster cannot be started.
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        PgServer::start()
            .unwrap_or_else(|error| panic!("could not start the shared test Postgres: {error:#}"))
    })
}
