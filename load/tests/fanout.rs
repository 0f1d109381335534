//! The `fanout` scenario end to end, in a tiny configuration: 5 WebSocket
//! subscribers on one topic, 50 events, flat out and at a set rate, against
//! a Herald it starts on SQLite. Asserts that every subscriber received
//! every event once and in order; never how fast.

mod common;

use clap::Parser;
use herald_load::report::Runs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_subscribers_receive_fifty_events_each_once_and_in_order() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "fanout".as_ref(),
        "--subscribers".as_ref(),
        "5".as_ref(),
        "--events".as_ref(),
        "50".as_ref(),
        "--rate".as_ref(),
        "max,200".as_ref(),
        "--publishers".as_ref(),
        "2".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    assert_eq!(report.target.store, "sqlite");
    let Runs::Fanout(runs) = &report.runs else {
        panic!("fanout reports fanout runs");
    };
    assert_eq!(runs.len(), 2);
    for run in runs {
        let rate = run.rate;
        assert_eq!(run.subscribers, 5);
        assert!(
            run.publish_errors.is_empty(),
            "{rate}: {:?}",
            run.publish_errors
        );
        assert_eq!(run.published, 50, "{rate}");
        assert_eq!(run.events, 50, "{rate}: the end event is seq 51");
        assert_eq!(run.correctness.lost, 0, "{rate}: lost events");
        assert_eq!(run.correctness.duplicates, 0, "{rate}: duplicated events");
        assert_eq!(
            run.correctness.order_violations, 0,
            "{rate}: events out of order"
        );
        assert_eq!(run.correctness.resets, 0, "{rate}");
        assert!(
            run.closed_early.is_empty(),
            "{rate}: {:?}",
            run.closed_early
        );
        assert_eq!(run.correctness.unfinished, 0, "{rate}");
        assert_eq!(run.correctness.deliveries, 250, "{rate}");
        assert_eq!(run.correctness.deliveries_expected, 250, "{rate}");
        assert_eq!(run.latency.count, 250, "{rate}: one latency per delivery");
        assert!(
            run.cost.server_cpu_secs.is_some(),
            "a started server's CPU is measured"
        );
    }
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "fanout");
    assert_eq!(record["runs"][0]["rate"], "max");
    assert_eq!(record["runs"][1]["rate"], 200.0);
}
