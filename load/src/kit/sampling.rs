//! Measuring a run: the clock events carry, the shared latency histograms
//! subscribers record into, and the CPU counters read at the edges of a
//! window (server, this process, the machine, the database).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::cpu::{self, ThreadGroupCpu, ThreadSample};
use crate::report::latency_histogram;

/// Shared latency histograms (subscriber i records into i % SHARDS).
const SHARDS: usize = 16;
/// Latencies a subscriber keeps before recording them into its shard.
pub(crate) const BATCH: usize = 64;

/// Nanoseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The run's latency histograms, shared by subscribers in batches.
pub(crate) struct Shards(Vec<Mutex<Histogram<u64>>>);

impl Shards {
    pub(crate) fn new() -> Shards {
        Shards(
            (0..SHARDS)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        )
    }

    pub(crate) fn record(&self, shard: usize, values: &mut Vec<u64>) {
        let mut h = self.0[shard % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &v in values.iter() {
            h.saturating_record(v);
        }
        values.clear();
    }

    /// Keeps the latency of an event sent at `sent_ns` in `batch`, and
    /// records the batch into `shard` once it is full.
    pub(crate) fn keep(&self, shard: usize, batch: &mut Vec<u64>, sent_ns: u64) {
        batch.push(now_ns().saturating_sub(sent_ns) / 1_000);
        if batch.len() == BATCH {
            self.record(shard, batch);
        }
    }

    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.0 {
            let h = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.add(&*h).expect("every histogram has the same bounds");
        }
        all
    }
}

/// CPU counters and the time they were read.
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) server: Option<(Duration, ThreadSample)>,
    pub(crate) client: Duration,
    pub(crate) machine: Duration,
    /// The database server's CPU (postmaster and live children), when
    /// `--db-pid` is given.
    pub(crate) db: Option<Duration>,
}

impl Sample {
    /// Reads the CPU of every server process in `server_pids` (empty: not
    /// measured), this process's, and the machine's.
    pub(crate) fn take(server_pids: &[u32]) -> anyhow::Result<Sample> {
        let server = if server_pids.is_empty() {
            None
        } else {
            Some((
                cpu::processes_cpu(server_pids).context("reading the server's CPU time")?,
                cpu::threads_sample(server_pids),
            ))
        };
        Ok(Sample {
            db: None,
            at: Instant::now(),
            server,
            client: cpu::own_cpu()?,
            machine: cpu::machine_busy()?,
        })
    }

    /// [`Sample::take`] plus the database server's CPU (`db_pid`).
    pub(crate) fn take_with_db(server_pids: &[u32], db_pid: Option<u32>) -> anyhow::Result<Sample> {
        let mut sample = Sample::take(server_pids)?;
        sample.db = db_pid
            .map(cpu::process_tree_cpu)
            .transpose()
            .context("reading the database server's CPU time")?;
        Ok(sample)
    }

    /// The server's CPU from this sample to a `later` one, seconds (all
    /// nodes), when measured.
    pub(crate) fn server_cpu_until(&self, later: &Sample) -> Option<f64> {
        match (&self.server, &later.server) {
            (Some((b, _)), Some((a, _))) => Some(a.saturating_sub(*b).as_secs_f64()),
            _ => None,
        }
    }

    /// What the counters moved by from this sample to a `later` one.
    pub(crate) fn until(&self, later: &Sample) -> anyhow::Result<Spent> {
        let server_cpu_secs = self.server_cpu_until(later);
        let server_threads = match (&self.server, &later.server) {
            (Some((_, b)), Some((_, a))) => b.since(a)?,
            _ => Vec::new(),
        };
        Ok(Spent {
            secs: later.at.duration_since(self.at).as_secs_f64().max(1e-9),
            server_cpu_secs,
            server_threads,
            client_cpu_secs: later.client.saturating_sub(self.client).as_secs_f64(),
            machine_secs: later.machine.saturating_sub(self.machine).as_secs_f64(),
            db_cpu_secs: match (self.db, later.db) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64()),
                _ => None,
            },
        })
    }
}

/// The CPU spent between two samples.
pub(crate) struct Spent {
    /// Seconds between the samples (never 0).
    pub(crate) secs: f64,
    /// The server's CPU, seconds (all nodes), when measured.
    pub(crate) server_cpu_secs: Option<f64>,
    /// The server's CPU by thread name, largest first.
    pub(crate) server_threads: Vec<ThreadGroupCpu>,
    /// This process's CPU, seconds.
    pub(crate) client_cpu_secs: f64,
    /// All busy CPU of the machine, seconds.
    pub(crate) machine_secs: f64,
    /// The database server's CPU, seconds, when measured.
    pub(crate) db_cpu_secs: Option<f64>,
}

impl Spent {
    /// CPU seconds of everything else: the machine's busy CPU minus the
    /// server's, this process's and the database's.
    pub(crate) fn other_cpu_secs(&self) -> f64 {
        (self.machine_secs
            - self.client_cpu_secs
            - self.server_cpu_secs.unwrap_or(0.0)
            - self.db_cpu_secs.unwrap_or(0.0))
        .max(0.0)
    }
}
