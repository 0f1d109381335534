//! Process plumbing shared by the private test servers (`pg`, `nats`): free
//! ports, bounded waits on ports and processes, signals, running helper
//! commands with a deadline, and the [`Watchdog`] that kills a server and
//! removes its files when the test process ends without doing so itself.
//!
//! Signals are sent with the `kill` command rather than `libc::kill`, so this
//! crate needs no `unsafe`.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often bounded waits re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A port on 127.0.0.1 that was free a moment ago: bound to port 0, read
/// back, released. Another process may take it before the caller binds it;
/// callers that cannot bind it should pick another.
///
/// # Panics
///
/// If no port can be bound at all (no loopback interface, no file handles).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` right now.
pub fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// Polls `ready` every few milliseconds until it returns `Ok(true)`, it
/// returns an error, or `timeout` passes (an error naming `what`).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until 127.0.0.1:`port` accepts TCP connections.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("127.0.0.1:{port} to accept connections"),
        timeout,
        || Ok(port_is_open(port)),
    )
}

/// Waits until 127.0.0.1:`port` refuses TCP connections.
pub fn wait_port_closed(port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("127.0.0.1:{port} to refuse connections"),
        timeout,
        || Ok(!port_is_open(port)),
    )
}

/// The fields of `/proc/PID/stat` after the command name, so that field 3
/// of proc(5) (the state) is index 0. `None` if there is no such process.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether process `pid` exists and has not exited (a zombie counts as
/// exited: it holds no resources and only waits to be reaped).
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// Whether process `pid` is stopped by a signal (state `T`).
pub fn is_stopped(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state == "T"))
}

/// When process `pid` started, in clock ticks since boot (proc(5) field 22),
/// which tells a process apart from a later one that reuses its id.
fn start_ticks(pid: u32) -> Option<String> {
    stat_fields(pid)?.get(19).cloned()
}

/// The ids of the live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            stat_fields(candidate).is_some_and(|fields| {
                fields.first().is_some_and(|state| state != "Z")
                    && fields.get(1).is_some_and(|ppid| ppid == &pid.to_string())
            })
        })
        .collect()
}

/// Waits until none of `pids` is alive.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> anyhow::Result<()> {
    wait_until(&format!("processes {pids:?} to exit"), timeout, || {
        Ok(!pids.iter().any(|&pid| is_alive(pid)))
    })
}

/// Sends signal `signal` (a name such as `"QUIT"` or `"KILL"`) to `pids`.
/// Processes that are already gone are not an error.
pub fn signal(pids: &[u32], signal: &str) -> anyhow::Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut command = Command::new("kill");
    command.arg("-s").arg(signal).arg("--");
    command.args(pids.iter().map(u32::to_string));
    // The exit status is non-zero when some process was already gone, which
    // is exactly what a caller cleaning up wants to ignore.
    run_with_timeout(&mut command, Duration::from_secs(10))
        .with_context(|| format!("sending SIG{signal} to {pids:?}"))?;
    Ok(())
}

/// Waits up to `timeout` for `child` to exit, reaping it. `Ok(false)` if it
/// is still running at the deadline.
pub fn wait_child(child: &mut Child, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child
            .try_wait()
            .context("waiting for a child process")?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILLs `child` (a no-op if it has exited) and reaps it, bounded.
pub fn kill_child(child: &mut Child) {
    // `kill` fails only when the child was already reaped; either way it is
    // gone or going, and the wait below settles it.
    let _ = child.kill();
    let _ = wait_child(child, Duration::from_secs(10));
}

/// Runs `command` to completion with stdin closed and its output captured,
/// SIGKILLing it if it is still running after `timeout`. A non-zero exit
/// status is not an error here; callers inspect `Output::status`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run(command, timeout, None)
}

/// Like [`run_with_timeout`], with `watchdog` guarding the command while it
/// runs: if this process dies, the command gets SIGTERM, then SIGKILL.
pub fn run_guarded(
    command: &mut Command,
    timeout: Duration,
    watchdog: &mut Watchdog,
) -> anyhow::Result<Output> {
    let output = run(command, timeout, Some(watchdog));
    watchdog.unwatch()?;
    output
}

fn run(
    command: &mut Command,
    timeout: Duration,
    watchdog: Option<&mut Watchdog>,
) -> anyhow::Result<Output> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {description}"))?;
    let pid = child.id();
    if let Some(watchdog) = watchdog
        && let Err(error) = watchdog.watch(pid, "TERM", Duration::from_secs(5))
    {
        kill_child(&mut child);
        return Err(error);
    }
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        // The receiver is gone only if the caller already gave up on it.
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.with_context(|| format!("waiting for {description}")),
        Err(_) => {
            // The child is not reaped until the waiting thread sees it exit,
            // so `pid` still names it.
            let _ = signal(&[pid], "KILL");
            bail!("{description} did not finish within {timeout:?}")
        }
    }
}

/// Turns a finished command's output into an error unless it succeeded.
pub fn check_output(what: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The effective user id of this process, from `/proc/self/status`.
pub fn effective_uid() -> anyhow::Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no effective uid in /proc/self/status")
}

/// The first executable file called `name` in the folders on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file that someone may execute.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The last `lines` lines of the file at `path`, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the watchdog runs. Each line on stdin names the process to guard
/// ("PID START SIGNAL TENTHS"; an empty line guards none). At end of file
/// (every write end is gone: the test process has exited) it sends the
/// guarded process SIGNAL, gives it TENTHS tenths of a second, SIGKILLs it,
/// and removes `$1`. The process is only signalled while it is still the
/// one that started at START, so a recycled pid is never hit.
const WATCHDOG_SCRIPT: &str = r#"
dir=$1
pid= start= sig= tenths=
ours() {
    [ -n "$pid" ] || return 1
    s=$(cat /proc/"$pid"/stat 2>/dev/null) || return 1
    s=${s##*") "}
    set -- $s
    [ "$1" != Z ] || return 1
    shift 19
    [ "$1" = "$start" ]
}
while read -r p s g t; do pid=$p start=$s sig=$g tenths=$t; done
if ours; then
    kill -s "$sig" "$pid" 2>/dev/null
    i=0
    while ours && [ "$i" -lt "$tenths" ]; do sleep 0.1; i=$((i + 1)); done
    if ours; then kill -s KILL "$pid" 2>/dev/null; fi
fi
# A child of the guarded process may still be writing for a moment.
i=0
while [ -n "$dir" ] && [ -e "$dir" ] && [ "$i" -lt 5 ]; do
    rm -rf -- "$dir" 2>/dev/null || sleep 0.2
    i=$((i + 1))
done
"#;

/// Cleans up after a test server if the test process exits (returns,
/// panics, or is killed, even by SIGKILL) without doing so itself: kills the
/// process it is told to guard, then removes the server's folder. Statics are
/// never dropped and `PR_SET_PDEATHSIG` does not survive the uid change
/// needed to run Postgres, so a separate `sh` process holds the read end of a
/// pipe whose only write end lives in this process; the kernel closes it
/// when this process dies, however it dies.
///
/// Create it before the folder has anything in it, and [`watch`] each
/// process that writes there as soon as it is spawned. Dropping the
/// `Watchdog` disarms it (kills and reaps the `sh`), for when the owner has
/// cleaned up itself.
///
/// [`watch`]: Watchdog::watch
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    /// The write end of the pipe, held so that it closes only when this
    /// process exits or the watchdog is disarmed.
    arm: ChildStdin,
}

impl Watchdog {
    /// Starts a watchdog that removes `remove_dir` (if given) when this
    /// process exits, guarding no process yet.
    pub fn spawn(remove_dir: Option<&Path>) -> anyhow::Result<Watchdog> {
        use std::os::unix::process::CommandExt;
        let dir = remove_dir.map(Path::as_os_str).unwrap_or_default();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("herald-test-watchdog")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so a Ctrl-C aimed at the test run does
            // not kill the watchdog before it has cleaned up.
            .process_group(0)
            .spawn()
            .context("starting the watchdog shell")?;
        let arm = child
            .stdin
            .take()
            .expect("stdin was configured as a pipe just above");
        Ok(Watchdog { child, arm })
    }

    /// Guards process `pid` (instead of any earlier one): if this process
    /// exits, `pid` gets `signal` (e.g. `"QUIT"`), then SIGKILL after
    /// `grace`.
    pub fn watch(&mut self, pid: u32, signal: &str, grace: Duration) -> anyhow::Result<()> {
        let start = start_ticks(pid).with_context(|| format!("process {pid} is not running"))?;
        let tenths = grace.as_millis().div_ceil(100);
        self.tell(&format!("{pid} {start} {signal} {tenths}\n"))
    }

    /// Guards no process any more (its owner has stopped it).
    pub fn unwatch(&mut self) -> anyhow::Result<()> {
        self.tell("\n")
    }

    fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        // One short write is atomic on a pipe, so the script never reads
        // half a line.
        self.arm
            .write_all(line.as_bytes())
            .context("writing to the watchdog")
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}
