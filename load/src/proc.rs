//! Memory and open files of a process, from `/proc`, and this process's
//! open-file limit (one descriptor per connection: a scenario with thousands
//! of connections needs it raised, and a server this tool starts inherits it).

use anyhow::{Context, bail};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Resident memory (`VmRSS` of `/proc/PID/status`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS").map(|kib| kib * 1024)
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, key).with_context(|| format!("no {key} in {path}"))
}

fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        v.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Open file descriptors of process `pid` (entries of `/proc/PID/fd`); `None`
/// when they cannot be listed (another user's process).
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count())
}

/// This process's open-file limit: (soft, hard); `None` is unlimited.
pub fn fd_limit() -> (Option<u64>, Option<u64>) {
    let limit = getrlimit(Resource::Nofile);
    (limit.current, limit.maximum)
}

/// Raises this process's soft open-file limit to what `needed` descriptors
/// require, up to the hard limit, and fails when even that is too low.
/// Processes started afterwards (a local Herald) inherit the new limit.
/// Returns the soft limit in force.
pub fn ensure_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let (soft, hard) = fd_limit();
    let soft = soft.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let hard_value = hard.unwrap_or(u64::MAX);
    if hard_value < needed {
        bail!(
            "{needed} open files are needed but the hard limit is {hard_value} \
             (`ulimit -Hn`); lower the count or raise the limit"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    )
    .context("raising the open-file limit (setrlimit RLIMIT_NOFILE)")?;
    Ok(hard_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse_in_kib() {
        let status = "Name:\therald\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(12_345));
        assert_eq!(parse_status_kib(status, "VmHWM"), None);
    }

    #[test]
    fn this_process_has_a_resident_size_and_open_files() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("/proc/self/status is readable") > 0);
        assert!(open_fds(pid).is_some_and(|n| n >= 3));
    }
}
