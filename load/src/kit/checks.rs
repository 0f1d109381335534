//! Checks of the arguments several scenarios share, made before anything
//! starts.

use anyhow::bail;

use crate::client::Sources;

/// Longest duration or timeout a scenario accepts, in seconds.
pub const MAX_SECS: u64 = 3_600;
/// Most connections a scenario opens at once.
pub const MAX_OPEN_CONCURRENCY: usize = 4_096;

/// Checks that each named duration (`--name`, seconds) is 1..=[`MAX_SECS`].
pub fn check_secs(named: &[(&str, u64)]) -> anyhow::Result<()> {
    for (name, secs) in named {
        if *secs == 0 || *secs > MAX_SECS {
            bail!("{name} must be 1..={MAX_SECS}");
        }
    }
    Ok(())
}

/// Checks `--open-concurrency` and `--source-ips`, shared by the scenarios
/// that open many connections.
pub fn check_connecting(open_concurrency: usize, source_ips: u8) -> anyhow::Result<()> {
    if open_concurrency == 0 || open_concurrency > MAX_OPEN_CONCURRENCY {
        bail!("--open-concurrency must be 1..={MAX_OPEN_CONCURRENCY}");
    }
    Sources::new(source_ips)?;
    Ok(())
}
