//! Defaults that several scenarios share, so that a `--data-bytes` or a
//! `--drain-secs` means the same everywhere unless a scenario says
//! otherwise.

/// Size of each event's `data` (its JSON text), by default.
pub const DEFAULT_DATA_BYTES: usize = 100;
/// Most seconds of publishing per run, by default.
pub const DEFAULT_DURATION_SECS: u64 = 120;
/// Seconds after the last publish that subscribers may take to receive
/// everything, by default.
pub const DEFAULT_DRAIN_SECS: u64 = 30;
/// Subscribers being opened at once, by default.
pub const DEFAULT_OPEN_CONCURRENCY: usize = 64;
/// Seconds one subscriber may take to open, by default.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Seconds opening all subscribers may take, by default.
pub const DEFAULT_OPEN_TIMEOUT_SECS: u64 = 300;
/// Seconds one publish may take before it counts as a `timeout` error.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
