//! Tests of the test harness itself: the private Postgres and NATS servers
//! start, hand out what they promise, die and come back on demand, and leave
//! nothing behind, even when the test process is killed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use herald_tests::nats::NatsServer;
use herald_tests::pg::{self, PgServer};
use herald_tests::procs;

/// Generous bound for anything that should happen within a second or two.
const BOUND: Duration = Duration::from_secs(20);

/// Runs one SQL command with `psql` against `url`, tuples only, unaligned.
fn psql(url: &str, sql: &str) -> anyhow::Result<Output> {
    procs::run_with_timeout(
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "5"),
        BOUND,
    )
}

/// `psql` succeeds with `sql` on `url` and prints `expected`.
fn assert_query(url: &str, sql: &str, expected: &str) -> anyhow::Result<()> {
    let output = psql(url, sql)?;
    procs::check_output(&format!("psql {url} -c {sql:?}"), &output)?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        printed.trim() == expected,
        "{sql:?} on {url} printed {printed:?}, expected {expected:?}"
    );
    Ok(())
}

/// Whether `/proc/PID` is gone, i.e. the process has exited and been reaped.
fn proc_entry_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The command line of process `pid`, with spaces for separators.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn pg_server_hands_out_distinct_databases_that_survive_a_kill_and_restart() -> anyhow::Result<()> {
    let mut server = PgServer::start()?;
    let port = server.port();
    let first = server.create_database()?;
    let second = server.create_database()?;
    ensure!(first != second, "two databases share the URL {first}");
    for url in [&first, &second] {
        ensure!(
            url.starts_with(&format!("postgres://postgres@127.0.0.1:{port}/")),
            "unexpected URL {url}"
        );
        assert_query(url, "select 1", "1")?;
    }
    assert_query(
        &first,
        "create table kept (x int); insert into kept values (42); select x from kept",
        "42",
    )?;

    server.kill();
    ensure!(
        !procs::port_is_open(port),
        "port {port} still accepts connections after kill"
    );
    ensure!(server.pid().is_none(), "a killed server reports a pid");
    ensure!(
        !psql(&first, "select 1")?.status.success(),
        "psql reached a killed server"
    );

    server.restart()?;
    ensure!(
        server.port() == port,
        "restart moved the server to another port"
    );
    ensure!(
        procs::port_is_open(port),
        "port {port} is closed after restart"
    );
    assert_query(&first, "select x from kept", "42")?;
    assert_query(&second, "select 1", "1")?;
    Ok(())
}

#[test]
fn killing_pg_takes_its_backends_down_with_the_postmaster() -> anyhow::Result<()> {
    let mut server = PgServer::start()?;
    let url = server.create_database()?;
    let database = url
        .rsplit('/')
        .next()
        .context("a URL has a path")?
        .to_owned();
    let postmaster = server.pid().context("a started server has a pid")?;

    let mut client = Command::new("psql")
        .args(["-X", "-q", "-d", &url, "-c", "select pg_sleep(60)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting psql")?;
    let mut backend = None;
    let found = procs::wait_until("the psql backend", BOUND, || {
        backend = procs::children_of(postmaster)
            .into_iter()
            .find(|&pid| cmdline(pid).contains(&database));
        Ok(backend.is_some())
    });
    let children = procs::children_of(postmaster);
    server.kill();
    let client_exited = procs::wait_child(&mut client, BOUND);
    procs::kill_child(&mut client);
    found?;

    ensure!(client_exited?, "psql still waits on a killed server");
    ensure!(
        proc_entry_gone(postmaster),
        "the postmaster {postmaster} outlived kill"
    );
    let survivors: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&pid| procs::is_alive(pid))
        .collect();
    ensure!(
        survivors.is_empty(),
        "children {survivors:?} of postmaster {postmaster} (among them backend {backend:?}) outlived kill"
    );
    Ok(())
}

#[test]
fn nats_server_stop_closes_the_port_and_restart_reopens_it() -> anyhow::Result<()> {
    let mut server = NatsServer::start()?;
    let port = server.port();
    ensure!(server.url() == format!("nats://127.0.0.1:{port}"));
    ensure!(
        procs::port_is_open(port),
        "port {port} is closed after start"
    );
    let first_pid = server.pid().context("a started server has a pid")?;

    server.stop();
    ensure!(!procs::port_is_open(port), "port {port} is open after stop");
    ensure!(
        proc_entry_gone(first_pid),
        "nats-server {first_pid} outlived stop"
    );

    server.restart()?;
    ensure!(
        server.port() == port,
        "restart moved the server to another port"
    );
    ensure!(
        procs::port_is_open(port),
        "port {port} is closed after restart"
    );
    Ok(())
}

#[test]
fn dropping_servers_ends_their_processes_and_removes_their_folders() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let nats = NatsServer::start()?;
    let postmaster = pg.pid().context("a started server has a pid")?;
    let nats_pid = nats.pid().context("a started server has a pid")?;
    let children = procs::children_of(postmaster);
    ensure!(
        !children.is_empty(),
        "postmaster {postmaster} has no children"
    );
    let dirs = [pg.temp_dir().to_path_buf(), nats.temp_dir().to_path_buf()];

    drop(pg);
    drop(nats);

    procs::wait_until("the dropped servers' processes to go", BOUND, || {
        Ok(proc_entry_gone(postmaster)
            && proc_entry_gone(nats_pid)
            && !children.iter().any(|&pid| procs::is_alive(pid)))
    })?;
    for dir in &dirs {
        ensure!(!dir.exists(), "{} outlived its server", dir.display());
    }
    Ok(())
}

#[test]
fn shared_pg_is_one_server_for_the_whole_test_binary() -> anyhow::Result<()> {
    let first = pg::shared();
    let second = pg::shared();
    ensure!(
        std::ptr::eq(first, second),
        "shared() started a second server"
    );
    let a = first.create_database()?;
    let b = second.create_database()?;
    ensure!(a != b, "two databases share the URL {a}");
    assert_query(&a, "select 1", "1")?;
    assert_query(&b, "select 1", "1")?;
    Ok(())
}

/// Set in the environment of the child process of
/// `watchdogs_clean_up_after_a_test_process_that_aborts`.
const CHILD_ENV: &str = "HERALD_HARNESS_WATCHDOG_CHILD";

#[test]
#[ignore = "runs only as the child of watchdogs_clean_up_after_a_test_process_that_aborts"]
fn watchdog_child_starts_servers_then_aborts() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    // The shared server lives in a static and is never dropped; the other
    // two are not dropped because abort() runs no destructors.
    let shared = pg::shared();
    let own = PgServer::start()?;
    let nats = NatsServer::start()?;
    let mut out = std::io::stdout().lock();
    for (pid, dir) in [
        (shared.pid(), shared.temp_dir()),
        (own.pid(), own.temp_dir()),
        (nats.pid(), nats.temp_dir()),
    ] {
        let pid = pid.context("a started server has a pid")?;
        let children: Vec<String> = procs::children_of(pid).iter().map(u32::to_string).collect();
        writeln!(out, "SERVER {pid} {} {}", dir.display(), children.join(","))?;
    }
    out.flush()?;
    std::process::abort();
}

#[test]
fn watchdogs_clean_up_after_a_test_process_that_aborts() -> anyhow::Result<()> {
    let output = procs::run_with_timeout(
        Command::new(std::env::current_exe()?)
            .args(["--exact", "watchdog_child_starts_servers_then_aborts"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1"),
        Duration::from_secs(120),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut pids = Vec::new();
    let mut dirs = Vec::new();
    for line in stdout.lines() {
        // libtest may print "test NAME ... " on the same line first.
        let Some((_, rest)) = line.split_once("SERVER ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (Some(pid), Some(dir), Some(children)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("malformed line from the child: {line:?}");
        };
        pids.push(pid.parse::<u32>()?);
        for child in children.split(',').filter(|child| !child.is_empty()) {
            pids.push(child.parse::<u32>()?);
        }
        dirs.push(std::path::PathBuf::from(dir));
    }
    ensure!(
        dirs.len() == 3,
        "the child did not report its three servers ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(!output.status.success(), "the child did not abort");

    procs::wait_until("the aborted child's servers to go", BOUND, || {
        Ok(!pids.iter().any(|&pid| procs::is_alive(pid)) && !dirs.iter().any(|dir| dir.exists()))
    })
    .with_context(|| {
        let alive: Vec<&u32> = pids.iter().filter(|&&pid| procs::is_alive(pid)).collect();
        let left: Vec<&std::path::PathBuf> = dirs.iter().filter(|dir| dir.exists()).collect();
        format!("still alive: {alive:?}; still on disk: {left:?}")
    })
}
