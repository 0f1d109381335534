//! Figures several scenarios report alike, flattened into each scenario's
//! figures (`#[serde(flatten)]`, so the JSON record keeps plain keys):
//! whether every event arrived once and in order, and what the server
//! spent on it.

use serde::Serialize;

use super::frames::Seqs;
use super::sampling::Spent;
use crate::cpu::ThreadGroupCpu;

/// Whether every subscriber received every event of its topic, once and
/// in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Correctness {
    /// Event frames the subscribers received (end events not counted).
    pub deliveries: u64,
    /// What a lossless run delivers: for each subscriber, the events of its
    /// topic.
    pub deliveries_expected: u64,
    /// Seqs of the topic that a subscriber never received, summed over
    /// subscribers (must be 0).
    pub lost: u64,
    /// Seqs received again (must be 0).
    pub duplicates: u64,
    /// Seqs received after a higher one (must be 0).
    pub order_violations: u64,
    /// `reset` frames received (must be 0 on a fresh topic).
    pub resets: u64,
    /// Subscribers still waiting for their end event when the drain time
    /// was over (their figures are not counted).
    pub unfinished: u64,
}

impl Correctness {
    /// Counts one subscriber that received `deliveries` events with `seqs`
    /// and `resets` resets, from a topic that holds `held` events.
    pub(crate) fn count(&mut self, held: u64, deliveries: u64, seqs: &Seqs, resets: u64) {
        self.deliveries += deliveries;
        self.deliveries_expected += held;
        self.lost += held.saturating_sub(seqs.distinct());
        self.duplicates += seqs.duplicates;
        self.order_violations += seqs.order_violations;
        self.resets += resets;
    }

    /// Lost, duplicated or reordered seqs, and unfinished subscribers.
    pub fn failures(&self) -> u64 {
        self.lost + self.duplicates + self.order_violations + self.unfinished
    }
}

/// What the server spent over a run's window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCost {
    /// Server CPU (user + system) in the window, seconds (all nodes).
    pub server_cpu_secs: Option<f64>,
    /// `server_cpu_secs` per million deliveries.
    pub server_cpu_secs_per_million_deliveries: Option<f64>,
    /// Cores the server kept busy on average.
    pub server_cores_busy: Option<f64>,
    /// The server's CPU in the window by thread name, largest first.
    pub server_threads: Vec<ThreadGroupCpu>,
}

impl ServerCost {
    /// The server's share of `spent`, over `deliveries`.
    pub(crate) fn of(spent: &Spent, deliveries: u64) -> ServerCost {
        ServerCost {
            server_cpu_secs: spent.server_cpu_secs,
            server_cpu_secs_per_million_deliveries: per_million(spent.server_cpu_secs, deliveries),
            server_cores_busy: spent.server_cpu_secs.map(|s| s / spent.secs),
            server_threads: spent.server_threads.clone(),
        }
    }
}

/// `secs` per million `deliveries` (none without deliveries).
pub(crate) fn per_million(secs: Option<f64>, deliveries: u64) -> Option<f64> {
    secs.filter(|_| deliveries > 0)
        .map(|s| s * 1e6 / deliveries as f64)
}
