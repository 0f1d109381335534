//! SVG plots of a report (`--plots DIR`): latency distributions (latency
//! against percentile, one line per run, log scales) for every scenario
//! that measures latency, and memory per connection for `conns`. Drawn
//! with `plotters`' SVG backend, without system fonts (text is left to the
//! SVG viewer).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::report::{CURVE_QUANTILES, Latency, Report, Runs};

/// Plot size in pixels.
const SIZE: (u32, u32) = (900, 520);
/// Server memory per idle connection that the project aims for, KiB.
const TARGET_KIB_PER_CONN: f64 = 6.0;

/// Writes every plot of `report` into `dir` (created if missing); returns
/// the files written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = report.scenario;
    let mut written = Vec::new();
    let mut latency = |file: &str, title: String, series: Vec<(String, Latency)>| {
        let path = dir.join(file);
        latency_svg(&path, &title, &series)?;
        written.push(path);
        anyhow::Ok(())
    };
    match &report.runs {
        Runs::Publish(runs) => latency(
            &format!("{name}-latency.svg"),
            "publish: request to 201 answer".into(),
            runs.iter()
                .map(|r| (format!("{} publishers", r.publishers), r.latency))
                .collect(),
        )?,
        Runs::Fanout(runs) | Runs::Topics(runs) => latency(
            &format!("{name}-latency.svg"),
            format!("{name}: publish to delivery"),
            runs.iter()
                .map(|r| {
                    (
                        format!(
                            "{} node(s), {} topic(s), {} subs, rate {}",
                            r.nodes, r.topics, r.subscribers, r.rate
                        ),
                        r.latency,
                    )
                })
                .collect(),
        )?,
        Runs::Storm(runs) => {
            latency(
                &format!("{name}-latency.svg"),
                "storm: publish to delivery (replays included)".into(),
                runs.iter()
                    .map(|r| (format!("{} clients", r.clients), r.latency))
                    .collect(),
            )?;
            latency(
                &format!("{name}-resume.svg"),
                "storm: disconnect to resumed, per client".into(),
                runs.iter()
                    .map(|r| (format!("{} clients", r.clients), r.resume_latency))
                    .collect(),
            )?;
        }
        Runs::PollCost(runs) => latency(
            &format!("{name}-latency.svg"),
            "poll-cost: publish to delivery by transport".into(),
            runs.iter()
                .map(|r| (r.transport.name().to_owned(), r.latency))
                .collect(),
        )?,
        Runs::Soak(runs) => {
            latency(
                &format!("{name}-latency.svg"),
                "soak: publish to delivery".into(),
                runs.iter()
                    .map(|r| (format!("{} subs", r.fanout.subscribers), r.fanout.latency))
                    .collect(),
            )?;
            for (i, run) in runs.iter().enumerate() {
                let path = dir.join(format!("{name}-memory-{i}.svg"));
                crate::scenarios::soak::memory_svg(&path, run)?;
                written.push(path);
            }
        }
        Runs::Conns(runs) => {
            latency(
                &format!("{name}-open.svg"),
                "conns: time to open a connection".into(),
                runs.iter()
                    .map(|r| (format!("{} {}", r.transport, r.count), r.open_latency))
                    .collect(),
            )?;
            let path = dir.join(format!("{name}-memory.svg"));
            let bars: Vec<MemoryBar> = runs
                .iter()
                .map(|r| MemoryBar {
                    label: format!("{} {}", r.transport, r.count),
                    server_kib: r.server_kib_per_conn.unwrap_or(0.0),
                    client_kib: r.client_kib_per_conn.unwrap_or(0.0),
                })
                .collect();
            memory_svg(&path, &bars)?;
            written.push(path);
        }
        // Counts and CPU, no latency distribution: nothing to draw.
        Runs::Acks(_) => {}
    }
    Ok(written)
}

/// Nines of a quantile: 0.9 is 1, 0.99 is 2; the maximum is drawn half a
/// nine after the last finite quantile.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        nines(CURVE_QUANTILES[CURVE_QUANTILES.len() - 2]) + 0.5
    } else {
        -(1.0 - q).log10()
    }
}

/// The percentile at `x` nines, as a label.
fn percentile_label(x: f64) -> String {
    let max = nines(1.0);
    if x >= max - 1e-9 {
        return "max".to_owned();
    }
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Latency against percentile, one line per series.
pub fn latency_svg(path: &Path, title: &str, series: &[(String, Latency)]) -> anyhow::Result<()> {
    let xs: Vec<f64> = CURVE_QUANTILES.iter().map(|&q| nines(q)).collect();
    let values = series.iter().flat_map(|(_, l)| l.curve_ms);
    let (lo, hi) = values.fold((f64::MAX, 0f64), |(lo, hi), v| {
        (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
    });
    let (y_min, y_max) = if hi > 0.0 {
        (lo.min(hi) / 1.5, hi * 1.5)
    } else {
        (0.001, 1.0)
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs[0]..nines(1.0) + 0.1, (y_min..y_max).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(8)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(plot_error)?;
    for (i, (label, latency)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                xs.iter()
                    .zip(latency.curve_ms)
                    .map(|(&x, y)| (x, y.max(y_min))),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// One `conns` run in a memory plot.
#[derive(Debug, Clone)]
pub struct MemoryBar {
    /// What the run was (`ws 10000`).
    pub label: String,
    /// Server KiB per idle connection.
    pub server_kib: f64,
    /// Load generator KiB per connection.
    pub client_kib: f64,
}

/// Server and client memory per idle connection, one pair of bars per run,
/// with the 6 KiB target.
pub fn memory_svg(path: &Path, runs: &[MemoryBar]) -> anyhow::Result<()> {
    let server: Vec<f64> = runs.iter().map(|r| r.server_kib).collect();
    let client: Vec<f64> = runs.iter().map(|r| r.client_kib).collect();
    let y_max = server
        .iter()
        .chain(&client)
        .fold(TARGET_KIB_PER_CONN, |m, &v| m.max(v))
        * 1.3;
    let n = runs.len().max(1) as f64;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("conns: memory per idle connection", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(20)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("KiB per connection")
        .draw()
        .map_err(plot_error)?;
    let server_color = Palette99::pick(0).to_rgba();
    let client_color = Palette99::pick(1).to_rgba();
    chart
        .draw_series(server.iter().enumerate().map(|(i, &v)| {
            let x = i as f64;
            Rectangle::new([(x - 0.35, 0.0), (x - 0.02, v)], server_color.filled())
        }))
        .map_err(plot_error)?
        .label("server (RSS)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], server_color.filled()));
    chart
        .draw_series(client.iter().enumerate().map(|(i, &v)| {
            let x = i as f64;
            Rectangle::new([(x + 0.02, 0.0), (x + 0.35, v)], client_color.filled())
        }))
        .map_err(plot_error)?
        .label("load generator (RSS)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], client_color.filled()));
    chart
        .draw_series(runs.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{}: {:.1} KiB", r.label, r.server_kib),
                (i as f64 - 0.35, server[i] + y_max * 0.04),
                ("sans-serif", 13),
            )
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            [(-0.5, TARGET_KIB_PER_CONN), (n - 0.5, TARGET_KIB_PER_CONN)],
            RED.stroke_width(1),
        ))
        .map_err(plot_error)?
        .label("target: 6 KiB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws plots from JSON records of earlier runs (`herald-load plot`):
/// `latency.svg` with every run of every record that has a latency
/// distribution, and `memory.svg` with every `conns` run. Returns the files
/// written.
pub fn from_records(records: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut series = Vec::new();
    let mut bars = Vec::new();
    for path in records {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let record: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let scenario = record["scenario"].as_str().unwrap_or("?").to_owned();
        let runs = record["runs"].as_array().cloned().unwrap_or_default();
        for run in &runs {
            let label = format!(
                "{scenario}, {} store, {} bus: {}",
                record["target"]["store"].as_str().unwrap_or("?"),
                record["target"]["bus"].as_str().unwrap_or("?"),
                run_label(run)
            );
            let latency = run.get("latency").or_else(|| run.get("open_latency"));
            if let Some(latency) =
                latency.and_then(|l| serde_json::from_value::<Latency>(l.clone()).ok())
                && latency.count > 0
            {
                series.push((label.clone(), latency));
            }
            if scenario == "conns" {
                bars.push(MemoryBar {
                    label: run_label(run),
                    server_kib: run["server_kib_per_conn"].as_f64().unwrap_or(0.0),
                    client_kib: run["client_kib_per_conn"].as_f64().unwrap_or(0.0),
                });
            }
        }
    }
    let mut written = Vec::new();
    if !series.is_empty() {
        let path = dir.join("latency.svg");
        latency_svg(&path, "latency by percentile", &series)?;
        written.push(path);
    }
    if !bars.is_empty() {
        let path = dir.join("memory.svg");
        memory_svg(&path, &bars)?;
        written.push(path);
    }
    Ok(written)
}

/// A short label for a run of a JSON record: the fields that tell runs
/// apart, when present.
fn run_label(run: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for key in [
        "transport",
        "nodes",
        "topics",
        "subscribers",
        "clients",
        "publishers",
        "count",
        "rate",
    ] {
        match &run[key] {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => parts.push(s.clone()),
            v => parts.push(format!("{key} {v}")),
        }
    }
    parts.join(", ")
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_labelled_by_their_nines() {
        assert_eq!(percentile_label(nines(0.5)), "50%");
        assert_eq!(percentile_label(nines(0.99)), "99%");
        assert_eq!(percentile_label(nines(0.999)), "99.9%");
        assert_eq!(percentile_label(nines(1.0)), "max");
    }

    #[test]
    fn records_are_plotted_together() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let record = |kib: f64| {
            serde_json::json!({"scenario": "conns", "runs": [{
                "transport": "ws", "topics": "own", "count": 10, "server_kib_per_conn": kib,
                "client_kib_per_conn": 9.0,
                "open_latency": {"count": 10, "mean_ms": 1.0, "p50_ms": 1.0, "p90_ms": 1.0,
                    "p99_ms": 2.0, "p999_ms": 2.0, "max_ms": 2.0,
                    "curve_ms": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]}
            }]})
        };
        let mut paths = Vec::new();
        for (i, kib) in [20.0, 18.0].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.json"));
            std::fs::write(&path, record(kib).to_string()).expect("written");
            paths.push(path);
        }
        let written = from_records(&paths, dir.path()).expect("plotted");
        assert_eq!(written.len(), 2);
        let memory = std::fs::read_to_string(dir.path().join("memory.svg")).expect("memory.svg");
        assert!(memory.contains("20.0 KiB") && memory.contains("18.0 KiB"));
    }

    #[test]
    fn a_latency_plot_is_an_svg() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("l.svg");
        let mut h = crate::report::latency_histogram();
        for us in 1..10_000 {
            h.saturating_record(us);
        }
        let latency = Latency::from_histogram(&h);
        latency_svg(&path, "test", &[("a".into(), latency)]).expect("drawn");
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
        assert!(text.contains("<polyline"));
    }
}
