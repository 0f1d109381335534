//! What the machine is, for the record: a figure means little without the
//! cores and memory it was measured on.

use serde::Serialize;

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores this process may use (`nproc`).
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub mem_total_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
}

impl Machine {
    /// Reads the machine's description; a missing piece is `None`.
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name").map(str::to_owned),
            mem_total_bytes: field(&meminfo, "MemTotal").and_then(kib_to_bytes),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
        }
    }
}

/// The value of the first `key: value` line whose key is `key`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// `"24684128 kB"` to bytes.
fn kib_to_bytes(value: &str) -> Option<u64> {
    let kib: u64 = value.strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24684128 kB\nMemFree:  1 kB\n";
        assert_eq!(
            field(meminfo, "MemTotal").and_then(kib_to_bytes),
            Some(24_684_128 * 1024)
        );
    }
}
