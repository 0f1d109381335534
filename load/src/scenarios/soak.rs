//! `soak`: the `fanout` scenario held for a long time (10 minutes by
//! default), with the server's resident memory and open descriptors
//! sampled every `--sample-secs` into a time series. The report compares
//! the start, the end of a warm-up (`--warmup-secs`) and the end, and
//! fits a line through the samples after the warm-up: a server that
//! leaks shows a slope; one that does not stays flat. Same subscribers,
//! publishers and checks as `fanout` (everything delivered once, in order);
//! the JSON record holds the samples, and `--plots DIR` draws them
//! (`soak-memory-0.svg`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde::Serialize;
use tokio::sync::watch;

use super::Scenario;
use crate::cli::OutputArgs;
use crate::client::DEFAULT_SOURCE_IPS;
use crate::kit::checks::check_secs;
use crate::kit::defaults::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_DATA_BYTES, DEFAULT_DRAIN_SECS, DEFAULT_OPEN_CONCURRENCY,
    DEFAULT_OPEN_TIMEOUT_SECS, DEFAULT_REQUEST_TIMEOUT_SECS,
};
use crate::kit::fanout_run::{self, FanoutFigures, FanoutSettings};
use crate::kit::publishing::Rate;
use crate::kit::subscribing::subscriber_endpoints;
use crate::report::{Runs, Table};
use crate::target::{TOPIC_PREFIX, Target, TargetArgs};

/// Seconds of publishing, by default.
pub const DEFAULT_DURATION_SECS: u64 = 600;
/// Seconds after the start before memory is expected to be flat, by default.
pub const DEFAULT_WARMUP_SECS: u64 = 120;
/// Seconds between samples, by default.
pub const DEFAULT_SAMPLE_SECS: u64 = 5;
/// Subscribers, by default.
pub const DEFAULT_SUBSCRIBERS: usize = 1_000;
/// Events per second, by default.
pub const DEFAULT_RATE: f64 = 100.0;

/// `herald-load soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// WebSocket subscribers on the one topic.
    #[arg(long, env = "HERALD_LOAD_SUBSCRIBERS", default_value_t = DEFAULT_SUBSCRIBERS)]
    pub subscribers: usize,
    /// Events published per second.
    #[arg(long, env = "HERALD_LOAD_RATE", default_value_t = DEFAULT_RATE)]
    pub rate: f64,
    /// Concurrent publishers.
    #[arg(long, env = "HERALD_LOAD_PUBLISHERS", default_value_t = 2)]
    pub publishers: usize,
    /// Bytes of each event's `data`.
    #[arg(long, env = "HERALD_LOAD_DATA_BYTES", default_value_t = DEFAULT_DATA_BYTES)]
    pub data_bytes: usize,
    /// Seconds of publishing.
    #[arg(long, env = "HERALD_LOAD_DURATION_SECS", default_value_t = DEFAULT_DURATION_SECS)]
    pub duration_secs: u64,
    /// Seconds from the start (subscribers opening included) after which
    /// memory and descriptors should no longer grow.
    #[arg(long, env = "HERALD_LOAD_WARMUP_SECS", default_value_t = DEFAULT_WARMUP_SECS)]
    pub warmup_secs: u64,
    /// Seconds between two samples of the server's memory and descriptors.
    #[arg(long, env = "HERALD_LOAD_SAMPLE_SECS", default_value_t = DEFAULT_SAMPLE_SECS)]
    pub sample_secs: u64,
    /// Seconds after the last publish that subscribers may take to receive
    /// everything.
    #[arg(long, env = "HERALD_LOAD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// Subscribers being opened at once.
    #[arg(long, env = "HERALD_LOAD_OPEN_CONCURRENCY", default_value_t = DEFAULT_OPEN_CONCURRENCY)]
    pub open_concurrency: usize,
    /// Source addresses: subscribers are spread over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, env = "HERALD_LOAD_SOURCE_IPS", default_value_t = DEFAULT_SOURCE_IPS)]
    pub source_ips: u8,
}

/// The checked settings of a `soak` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSettings {
    pub warmup_secs: u64,
    pub sample_secs: u64,
    /// What the fan-out run underneath uses.
    pub fanout: FanoutSettings,
}

impl Scenario for SoakArgs {
    const NAME: &'static str = "soak";
    type Settings = SoakSettings;

    fn target(&self) -> &TargetArgs {
        &self.target
    }

    fn output(&self) -> &OutputArgs {
        &self.output
    }

    fn settings(&self) -> anyhow::Result<SoakSettings> {
        check_secs(&[
            ("--warmup-secs", self.warmup_secs),
            ("--sample-secs", self.sample_secs),
        ])?;
        if self.warmup_secs >= self.duration_secs {
            anyhow::bail!("--warmup-secs must be shorter than --duration-secs");
        }
        let rate = Rate::PerSec(self.rate);
        // Enough events that the duration, not the count, ends publishing.
        let events = (self.rate * self.duration_secs as f64).ceil() as u64 + 1;
        let fanout = FanoutSettings {
            subscribers: vec![self.subscribers],
            rate: vec![rate],
            events,
            publishers: self.publishers,
            data_bytes: self.data_bytes,
            duration_secs: self.duration_secs,
            drain_secs: self.drain_secs,
            open_concurrency: self.open_concurrency,
            source_ips: self.source_ips,
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            open_timeout_secs: DEFAULT_OPEN_TIMEOUT_SECS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
        }
        .checked()?;
        Ok(SoakSettings {
            warmup_secs: self.warmup_secs,
            sample_secs: self.sample_secs,
            fanout,
        })
    }

    fn token_secs(settings: &SoakSettings) -> u64 {
        settings.fanout.token_secs()
    }

    fn fds_needed(settings: &SoakSettings) -> u64 {
        settings.fanout.fds_needed()
    }

    async fn run(settings: &SoakSettings, target: &mut Target) -> anyhow::Result<Runs> {
        let endpoints = subscriber_endpoints(target).await?;
        let tag = format!("{:08x}", rand::random::<u32>());
        let topics = vec![format!("{TOPIC_PREFIX}.soak.{tag}")];
        let pids = target.pids.clone();
        let every = Duration::from_secs(settings.sample_secs);
        let start = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let sampler = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let sample = Sample::take(&pids, start);
                    lock(&samples).push(sample);
                }
            })
        };
        let subscribers = settings.fanout.subscribers[0];
        let rate = settings.fanout.rate[0];
        let outcome = fanout_run::run_once(
            &settings.fanout,
            target,
            &endpoints,
            subscribers,
            rate,
            &topics,
        )
        .await;
        stop.send_replace(true);
        sampler.await.context("the sampler panicked")?;
        // The sampler's last sample is the run's end (subscribers still
        // connected: the fan-out run closes them only as it returns).
        let samples = std::mem::take(&mut *lock(&samples));
        // Once they are gone: what a server keeps after its clients left.
        tokio::time::sleep(every).await;
        let after_close = Sample::take(&target.pids, start);
        let fanout = outcome?;
        Ok(Runs::Soak(vec![SoakFigures::new(
            fanout,
            samples,
            after_close,
            settings.warmup_secs,
            settings.sample_secs,
        )]))
    }
}

/// Locks the shared samples (a panic while holding them leaves them usable).
fn lock(samples: &Mutex<Vec<Sample>>) -> MutexGuard<'_, Vec<Sample>> {
    samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One sample of the server (summed over its nodes).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the run started (before the subscribers opened).
    pub secs: f64,
    /// Resident memory, bytes (`None` when it could not be read).
    pub rss_bytes: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
}

impl Sample {
    fn take(pids: &[u32], start: Instant) -> Sample {
        let mut rss = Some(0u64);
        let mut fds = Some(0u64);
        for &pid in pids {
            rss = rss
                .zip(crate::proc::rss_bytes(pid).ok())
                .map(|(a, b)| a + b);
            fds = fds
                .zip(crate::proc::open_fds(pid))
                .map(|(a, b)| a + b as u64);
        }
        if pids.is_empty() {
            (rss, fds) = (None, None);
        }
        Sample {
            secs: start.elapsed().as_secs_f64(),
            rss_bytes: rss,
            fds,
        }
    }
}

/// One measure (memory or descriptors) at the start, after the warm-up and
/// at the end, and how it moved after the warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Trend {
    /// The first sample.
    pub start: f64,
    /// The first sample at or after the warm-up.
    pub after_warmup: f64,
    /// The last sample.
    pub end: f64,
    /// The highest sample after the warm-up.
    pub max_after_warmup: f64,
    /// `end - after_warmup`.
    pub growth: f64,
    /// Least-squares slope of the samples after the warm-up, per minute.
    pub slope_per_min: f64,
}

impl Trend {
    /// The trend of `(secs, value)` points, `warmup_secs` into the run.
    pub fn of(points: &[(f64, f64)], warmup_secs: f64) -> Trend {
        let Some(&(_, start)) = points.first() else {
            return Trend::default();
        };
        let after: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(t, _)| *t >= warmup_secs)
            .collect();
        let Some(&(_, after_warmup)) = after.first() else {
            return Trend {
                start,
                ..Trend::default()
            };
        };
        let end = after.last().map_or(after_warmup, |p| p.1);
        let max_after_warmup = after.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let n = after.len() as f64;
        let mean_t = after.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_v = after.iter().map(|p| p.1).sum::<f64>() / n;
        let covariance: f64 = after.iter().map(|(t, v)| (t - mean_t) * (v - mean_v)).sum();
        let variance: f64 = after.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
        let slope = if variance > 0.0 {
            covariance / variance
        } else {
            0.0
        };
        Trend {
            start,
            after_warmup,
            end,
            max_after_warmup,
            growth: end - after_warmup,
            slope_per_min: slope * 60.0,
        }
    }
}

/// What a soak run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakFigures {
    pub warmup_secs: u64,
    pub sample_secs: u64,
    /// Resident memory, bytes.
    pub rss: Trend,
    /// Open descriptors.
    pub fds: Trend,
    /// Every sample while subscribers were connected, in order.
    pub samples: Vec<Sample>,
    /// One sample a `--sample-secs` after every subscriber closed.
    pub after_close: Sample,
    /// The fan-out run underneath: deliveries, latency, loss, CPU.
    pub fanout: FanoutFigures,
}

impl SoakFigures {
    fn new(
        fanout: FanoutFigures,
        samples: Vec<Sample>,
        after_close: Sample,
        warmup_secs: u64,
        sample_secs: u64,
    ) -> SoakFigures {
        let series = |pick: fn(&Sample) -> Option<u64>| -> Vec<(f64, f64)> {
            samples
                .iter()
                .filter_map(|s| pick(s).map(|v| (s.secs, v as f64)))
                .collect()
        };
        let warmup = warmup_secs as f64;
        SoakFigures {
            warmup_secs,
            sample_secs,
            rss: Trend::of(&series(|s| s.rss_bytes), warmup),
            fds: Trend::of(&series(|s| s.fds), warmup),
            samples,
            after_close,
            fanout,
        }
    }

    /// Correctness failures of the fan-out run underneath.
    pub fn failures(&self) -> u64 {
        self.fanout.failures()
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The table for soak runs: memory and descriptors, then the fan-out table.
pub fn render(runs: &[SoakFigures]) -> String {
    let mut table = Table::new(&[
        "measure",
        "start",
        "after warm-up",
        "end",
        "max after warm-up",
        "growth",
        "slope/min",
    ]);
    for r in runs {
        let mib = |v: f64| format!("{:.1} MiB", v / MIB);
        table.row(vec![
            "server RSS".into(),
            mib(r.rss.start),
            mib(r.rss.after_warmup),
            mib(r.rss.end),
            mib(r.rss.max_after_warmup),
            mib(r.rss.growth),
            format!("{:.3} MiB", r.rss.slope_per_min / MIB),
        ]);
        table.row(vec![
            "server fds".into(),
            format!("{:.0}", r.fds.start),
            format!("{:.0}", r.fds.after_warmup),
            format!("{:.0}", r.fds.end),
            format!("{:.0}", r.fds.max_after_warmup),
            format!("{:.0}", r.fds.growth),
            format!("{:.2}", r.fds.slope_per_min),
        ]);
    }
    let mut out = table.render();
    for r in runs {
        let mib = |v: Option<u64>| v.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / MIB));
        let fds = |v: Option<u64>| v.map_or("?".into(), |n| n.to_string());
        out.push_str(&format!(
            "{} samples every {} s; warm-up {} s; after every subscriber closed: RSS {}, {} fds\n\n",
            r.samples.len(),
            r.sample_secs,
            r.warmup_secs,
            mib(r.after_close.rss_bytes),
            fds(r.after_close.fds)
        ));
    }
    let fanouts: Vec<FanoutFigures> = runs.iter().map(|r| r.fanout.clone()).collect();
    out.push_str(&fanout_run::render(&fanouts));
    out
}

/// Draws the server's resident memory (MiB, left axis) and open
/// descriptors (right axis) against time, with the warm-up marked.
pub fn memory_svg(path: &std::path::Path, run: &SoakFigures) -> anyhow::Result<()> {
    let draw_error = |e: &dyn std::fmt::Debug| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    let rss: Vec<(f64, f64)> = run
        .samples
        .iter()
        .filter_map(|s| s.rss_bytes.map(|b| (s.secs, b as f64 / MIB)))
        .collect();
    let fds: Vec<(f64, f64)> = run
        .samples
        .iter()
        .filter_map(|s| s.fds.map(|n| (s.secs, n as f64)))
        .collect();
    let t_max = run.samples.last().map_or(1.0, |s| s.secs.max(1.0));
    let rss_max = rss.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let fds_max = fds.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "soak: server memory and descriptors over time",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rss_max)
        .map_err(|e| draw_error(&e))?
        .set_secondary_coord(0.0..t_max, 0.0..fds_max);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS MiB")
        .draw()
        .map_err(|e| draw_error(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("open descriptors")
        .draw()
        .map_err(|e| draw_error(&e))?;
    let warmup = run.warmup_secs as f64;
    chart
        .draw_series(LineSeries::new(
            [(warmup, 0.0), (warmup, rss_max)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| draw_error(&e))?
        .label("end of warm-up");
    chart
        .draw_series(LineSeries::new(rss, BLUE.stroke_width(2)))
        .map_err(|e| draw_error(&e))?
        .label("RSS (MiB)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(fds, RED.stroke_width(2)))
        .map_err(|e| draw_error(&e))?
        .label("open descriptors")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_error(&e))?;
    root.present().map_err(|e| draw_error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_has_no_slope_and_a_growing_one_does() {
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64 * 5.0, if i < 4 { i as f64 } else { 100.0 }))
            .collect();
        let trend = Trend::of(&flat, 20.0);
        assert_eq!(
            (trend.start, trend.after_warmup, trend.end),
            (0.0, 100.0, 100.0)
        );
        assert_eq!(trend.growth, 0.0);
        assert!(trend.slope_per_min.abs() < 1e-9);

        let growing: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 * 6.0, i as f64 * 6.0)).collect();
        let trend = Trend::of(&growing, 30.0);
        assert!((trend.slope_per_min - 60.0).abs() < 1e-6, "{trend:?}");
        assert_eq!(trend.max_after_warmup, 114.0);
    }
}
