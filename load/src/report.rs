//! What a scenario measured: the envelope every report shares (machine,
//! date, target, settings), latency summaries from an HDR histogram, the
//! human table and the JSON record.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::ThreadGroupCpu;
use crate::kit::fanout_run::{self, FanoutFigures};
use crate::machine::Machine;
use crate::scenarios::{acks, conns, poll_cost, publish, soak, storm};
use crate::target::TargetInfo;

/// Smallest latency a histogram tracks, in microseconds.
const HISTOGRAM_LOW_US: u64 = 1;
/// Largest latency a histogram tracks, in microseconds (one minute); longer
/// ones are recorded as this.
const HISTOGRAM_HIGH_US: u64 = 60_000_000;
/// Significant decimal digits a histogram keeps.
const HISTOGRAM_SIGFIGS: u8 = 3;

/// A latency histogram in microseconds, 1 µs to one minute, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOW_US, HISTOGRAM_HIGH_US, HISTOGRAM_SIGFIGS)
        .expect("the bounds are constants that hdrhistogram accepts")
}

/// The quantiles of [`Latency::curve_ms`]: the median to the maximum.
pub const CURVE_QUANTILES: [f64; 10] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The latency at each of [`CURVE_QUANTILES`], for plots.
    pub curve_ms: [f64; CURVE_QUANTILES.len()],
}

impl Latency {
    /// Summarizes a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            curve_ms: CURVE_QUANTILES.map(|q| ms(h.value_at_quantile(q))),
        }
    }
}

/// Each scenario's runs, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Runs {
    Publish(Vec<publish::RunFigures>),
    Conns(Vec<conns::ConnsFigures>),
    Fanout(Vec<FanoutFigures>),
    Topics(Vec<FanoutFigures>),
    Storm(Vec<storm::StormFigures>),
    PollCost(Vec<poll_cost::PollCostFigures>),
    Soak(Vec<soak::SoakFigures>),
    Acks(Vec<acks::AcksFigures>),
}

/// One invocation's record.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// The scenario's name (the subcommand).
    pub scenario: &'static str,
    /// When the invocation started (RFC 3339, UTC).
    pub date: String,
    pub machine: Machine,
    pub target: TargetInfo,
    /// Load generator threads (the client shares the machine with a local server).
    pub client_threads: usize,
    /// The scenario's settings.
    pub settings: serde_json::Value,
    /// Free text from `--note`.
    pub note: Option<String>,
    pub runs: Runs,
    /// Lines the server logged (warnings and errors), when it was started here.
    pub server_log_lines: usize,
    /// The first few of them.
    pub server_log_sample: Vec<String>,
}

impl Report {
    /// Failed requests plus correctness violations over all runs
    /// (`conns`: connections that failed to open or dropped while held;
    /// `fanout`: lost, duplicated or reordered seqs, failed publishes,
    /// unfinished subscribers).
    pub fn failures(&self) -> u64 {
        match &self.runs {
            Runs::Publish(runs) => runs.iter().map(|r| r.failed + r.order_violations).sum(),
            Runs::Conns(runs) => runs.iter().map(|r| r.failed + r.dropped_while_held).sum(),
            Runs::Fanout(runs) | Runs::Topics(runs) => {
                runs.iter().map(FanoutFigures::failures).sum()
            }
            Runs::Storm(runs) => runs.iter().map(storm::StormFigures::failures).sum(),
            Runs::PollCost(runs) => runs.iter().map(poll_cost::PollCostFigures::failures).sum(),
            Runs::Soak(runs) => runs.iter().map(soak::SoakFigures::failures).sum(),
            Runs::Acks(runs) => runs.iter().map(acks::AcksFigures::failures).sum(),
        }
    }

    /// The human table, with a header naming what was measured.
    pub fn render(&self) -> String {
        let mut out = format!(
            "herald-load {}: {} store, {} bus, {} ({}); {} cores ({}), client {} thread(s) on the same machine\n\n",
            self.scenario,
            self.target.store,
            self.target.bus,
            self.target.base_url,
            self.target.mode,
            self.machine.nproc,
            self.machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.client_threads,
        );
        match &self.runs {
            Runs::Publish(runs) => out.push_str(&publish::render(runs)),
            Runs::Conns(runs) => out.push_str(&conns::render(runs)),
            Runs::Fanout(runs) | Runs::Topics(runs) => out.push_str(&fanout_run::render(runs)),
            Runs::Storm(runs) => out.push_str(&storm::render(runs)),
            Runs::PollCost(runs) => out.push_str(&poll_cost::render(runs)),
            Runs::Soak(runs) => out.push_str(&soak::render(runs)),
            Runs::Acks(runs) => out.push_str(&acks::render(runs)),
        }
        if self.server_log_lines > 0 {
            out.push_str(&format!(
                "\nthe server logged {} warning/error line(s); the first:\n",
                self.server_log_lines
            ));
            for line in &self.server_log_sample {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Writes the JSON record to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("encoding the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// A plain text table: right-aligned columns under a header.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(&format!("{cell:>w$}"));
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A number with `decimals` places, or `-` when absent.
pub fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Counts by kind as `kind: n, kind: n`.
pub fn fmt_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's CPU by thread, the four largest groups, as a note.
pub fn fmt_server_threads(threads: &[ThreadGroupCpu]) -> String {
    let top: Vec<String> = threads
        .iter()
        .take(4)
        .map(|t| {
            format!(
                "{} x{} {:.0} ms ({:.0} sys)",
                t.name, t.threads, t.cpu_ms, t.system_ms
            )
        })
        .collect();
    format!("server CPU by thread: {}", top.join("; "))
}
