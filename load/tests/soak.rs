//! The `soak` scenario end to end, in a tiny configuration: 5 WebSocket
//! subscribers, 50 events/s for 4 s, the server sampled every second,
//! against a Herald it starts on SQLite. Asserts the time series is there
//! (memory and descriptors of the server, every sample), the fan-out
//! underneath lost nothing, and the plot is drawn; never how much memory.

mod common;

use clap::Parser;
use herald_load::report::Runs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_samples_the_servers_memory_and_descriptors_over_time() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let plots = dir.path().join("plots");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "soak".as_ref(),
        "--subscribers".as_ref(),
        "5".as_ref(),
        "--rate".as_ref(),
        "50".as_ref(),
        "--duration-secs".as_ref(),
        "4".as_ref(),
        "--warmup-secs".as_ref(),
        "1".as_ref(),
        "--sample-secs".as_ref(),
        "1".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
        "--plots".as_ref(),
        plots.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    let Runs::Soak(runs) = &report.runs else {
        panic!("soak reports soak runs");
    };
    let run = &runs[0];
    assert!(
        run.samples.len() >= 4,
        "a sample a second: {:?}",
        run.samples
    );
    for sample in &run.samples {
        assert!(sample.rss_bytes.is_some_and(|b| b > 0), "{sample:?}");
        assert!(
            sample.fds.is_some_and(|n| n > 5),
            "the server holds its sockets: {sample:?}"
        );
    }
    assert!(
        run.samples.windows(2).all(|w| w[0].secs < w[1].secs),
        "samples in time order"
    );
    assert!(
        run.rss.after_warmup > 0.0 && run.rss.end > 0.0,
        "{:?}",
        run.rss
    );
    assert!(
        run.fds.end >= 5.0,
        "5 subscribers' sockets at least: {:?}",
        run.fds
    );
    assert!(
        run.after_close.secs > run.samples.last().expect("samples").secs
            && run.after_close.rss_bytes.is_some(),
        "a sample once the subscribers closed: {:?}",
        run.after_close
    );
    assert_eq!(run.fanout.correctness.lost, 0);
    assert_eq!(run.fanout.correctness.duplicates, 0);
    assert_eq!(run.fanout.correctness.order_violations, 0);
    assert!(run.fanout.events > 0);
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "soak");
    assert!(
        record["runs"][0]["samples"][0]["rss_bytes"]
            .as_u64()
            .is_some()
    );
    let svg = std::fs::read_to_string(plots.join("soak-memory-0.svg")).expect("the plot is drawn");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
}
