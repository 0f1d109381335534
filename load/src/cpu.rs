//! CPU time of a process and of each of its threads, read from
//! `/proc/PID/stat` (utime + stime, in clock ticks of `getconf CLK_TCK`).
//!
//! The kernel counts in ticks (usually 10 ms), so a figure over a window of
//! a few seconds is exact to about a percent.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

/// Clock ticks per second, as `getconf CLK_TCK` reports it (asked once).
pub fn ticks_per_sec() -> anyhow::Result<u64> {
    static TICKS: OnceLock<u64> = OnceLock::new();
    if let Some(ticks) = TICKS.get() {
        return Ok(*ticks);
    }
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running `getconf CLK_TCK`")?;
    if !output.status.success() {
        bail!("`getconf CLK_TCK` failed: {}", output.status);
    }
    let ticks: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("`getconf CLK_TCK` printed a number")?;
    if ticks == 0 {
        bail!("`getconf CLK_TCK` printed 0");
    }
    Ok(*TICKS.get_or_init(|| ticks))
}

/// The command name (the thread's name, for a task's `stat`), utime and
/// stime, in ticks, of one `stat` file's text.
fn parse_stat(stat: &str) -> Option<(String, u64, u64)> {
    // The name is in parentheses and may itself contain ") ".
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name, field 3 of proc(5) (the state) is index 0, so utime
    // (field 14) is index 11 and stime (field 15) index 12.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime, stime))
}

fn ticks_to_duration(ticks: u64) -> anyhow::Result<Duration> {
    let per_sec = ticks_per_sec()?;
    Ok(Duration::from_secs(ticks / per_sec)
        + Duration::from_nanos((ticks % per_sec) * 1_000_000_000 / per_sec))
}

/// CPU time (user + system, all threads) that process `pid` has used so far.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (_, utime, stime) = parse_stat(&stat).with_context(|| format!("parsing {path}"))?;
    ticks_to_duration(utime + stime)
}

/// CPU time (user + system, all threads) that processes `pids` (the nodes
/// of a cluster) have used so far, summed.
pub fn processes_cpu(pids: &[u32]) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for &pid in pids {
        total += process_cpu(pid)?;
    }
    Ok(total)
}

/// CPU time used so far by process `pid` and its live children (for a
/// Postgres postmaster: its backends and background workers). Children that
/// exited are not counted.
pub fn process_tree_cpu(pid: u32) -> anyhow::Result<Duration> {
    let mut total = process_cpu(pid)?;
    let parent = pid.to_string();
    for entry in std::fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
    {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the name, index 1 is the parent's id (field 4 of proc(5)).
        let is_child = stat
            .rfind(')')
            .and_then(|close| {
                stat[close + 1..]
                    .split_whitespace()
                    .nth(1)
                    .map(|p| p == parent)
            })
            .unwrap_or(false);
        if let (true, Some((_, utime, stime))) = (is_child && child != pid, parse_stat(&stat)) {
            total += ticks_to_duration(utime + stime)?;
        }
    }
    Ok(total)
}

/// CPU time this process has used so far.
pub fn own_cpu() -> anyhow::Result<Duration> {
    process_cpu(std::process::id())
}

/// CPU time the whole machine has spent busy so far (all cores: every
/// state of the first line of `/proc/stat` but `idle` and `iowait`). Over a
/// window, this minus the server's and this process's CPU is what other
/// processes and kernel work charged to no process (interrupts, softirq)
/// took: on a shared machine, a sign that figures are disturbed.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let busy = parse_machine_busy(&stat).context("parsing /proc/stat")?;
    ticks_to_duration(busy)
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already
    // inside user and nice).
    let total: u64 = fields.iter().take(8).sum();
    Some(total - fields.get(3)? - fields.get(4).unwrap_or(&0))
}

/// A snapshot of each live thread of a process: thread id to (name, utime,
/// stime).
#[derive(Debug, Clone, Default)]
pub struct ThreadSample(BTreeMap<u32, (String, u64, u64)>);

/// Reads every thread of `pid`. Threads that exit while it reads are skipped.
pub fn thread_sample(pid: u32) -> ThreadSample {
    let mut sample = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return ThreadSample(sample);
    };
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(parsed) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            sample.insert(tid, parsed);
        }
    }
    ThreadSample(sample)
}

/// Reads every thread of every process of `pids` into one sample (thread
/// ids are unique across processes, so threads of the same name in
/// different nodes count together).
pub fn threads_sample(pids: &[u32]) -> ThreadSample {
    let mut all = ThreadSample::default();
    for &pid in pids {
        all.0.append(&mut thread_sample(pid).0);
    }
    all
}

/// CPU used by one group of threads between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadGroupCpu {
    /// The threads' name with digits replaced by `#`, so that a pool's
    /// threads (`worker-0`, `worker-1`) count together.
    pub name: String,
    /// How many threads of that name used CPU in the window.
    pub threads: usize,
    /// Their CPU time (user + system) in the window, in milliseconds.
    pub cpu_ms: f64,
    /// The part of it spent in the kernel (system calls: sockets, fsync, futexes).
    pub system_ms: f64,
}

impl ThreadSample {
    /// CPU used per thread group from `self` (earlier) to `later`, largest
    /// first; threads born in between count from zero.
    pub fn since(&self, later: &ThreadSample) -> anyhow::Result<Vec<ThreadGroupCpu>> {
        let mut groups: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        for (tid, (name, utime, stime)) in &later.0 {
            let (user_before, system_before) = self.0.get(tid).map_or((0, 0), |(_, u, s)| (*u, *s));
            let user = utime.saturating_sub(user_before);
            let system = stime.saturating_sub(system_before);
            if user + system == 0 {
                continue;
            }
            let key: String = name
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            let group = groups.entry(key).or_default();
            group.0 += 1;
            group.1 += user;
            group.2 += system;
        }
        let ms = |ticks| ticks_to_duration(ticks).map(|d| d.as_secs_f64() * 1_000.0);
        let mut out = Vec::with_capacity(groups.len());
        for (name, (threads, user, system)) in groups {
            out.push(ThreadGroupCpu {
                name,
                threads,
                cpu_ms: ms(user + system)?,
                system_ms: ms(system)?,
            });
        }
        out.sort_by(|a, b| b.cpu_ms.total_cmp(&a.cpu_ms));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_parenthesis_in_the_name_parses() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(stat), Some(("a) b".to_owned(), 7, 3)));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(161));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        own_cpu().expect("/proc/self/stat is readable on Linux");
    }
}
