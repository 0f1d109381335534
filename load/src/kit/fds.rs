//! Open-file budgets: what this process keeps besides its connections, and
//! whether the server's limit holds the connections a run opens.

use anyhow::bail;

/// Descriptors this process needs besides one per connection.
pub const SPARE_FDS: u64 = 100;

/// Fails early when the server's open-file limit cannot hold `count`
/// connections (read from `/proc/PID/limits`; skipped when unreadable).
pub fn check_server_fd_limit(pid: u32, count: usize) -> anyhow::Result<()> {
    let Ok(limits) = std::fs::read_to_string(format!("/proc/{pid}/limits")) else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft
        && soft < count as u64 + SPARE_FDS
    {
        bail!(
            "the server (pid {pid}) may open {soft} files, not enough for {count} connections; \
             raise its limit (`ulimit -n`) before starting it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_fd_check_reads_proc_limits() {
        // This process surely allows a handful of files.
        check_server_fd_limit(std::process::id(), 1).expect("a few files are allowed");
    }
}
