//! The `storm` scenario end to end, in a tiny configuration: 40 WebSocket
//! clients on 4 topics drop their connections together and reconnect with
//! their cursors while 100 events/s are published, against a Herald it
//! starts on SQLite. Asserts that every client resumed and received every
//! event of its topic once and in order across the reconnection; never how
//! fast.

mod common;

use clap::Parser;
use herald_load::report::Runs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clients_reconnect_together_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "storm".as_ref(),
        "--clients".as_ref(),
        "40".as_ref(),
        "--topics".as_ref(),
        "4".as_ref(),
        "--rate".as_ref(),
        "100".as_ref(),
        "--before-secs".as_ref(),
        "1".as_ref(),
        "--after-secs".as_ref(),
        "2".as_ref(),
        "--resume-timeout-secs".as_ref(),
        "15".as_ref(),
        "--source-ips".as_ref(),
        "4".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    let Runs::Storm(runs) = &report.runs else {
        panic!("storm reports storm runs");
    };
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.clients, 40);
    assert_eq!(run.topics, 4);
    assert!(run.publish_errors.is_empty(), "{:?}", run.publish_errors);
    assert!(run.published > 0);
    assert_eq!(run.events, run.published, "the topics hold every event");
    assert_eq!(run.resumed, 40, "every client resumed");
    assert_eq!(run.not_resumed, 0);
    assert!(run.all_resumed_secs.is_some());
    assert_eq!(run.correctness.lost, 0, "lost events");
    assert_eq!(run.correctness.duplicates, 0, "duplicated events");
    assert_eq!(run.correctness.order_violations, 0, "events out of order");
    assert_eq!(run.correctness.resets, 0);
    assert_eq!(run.correctness.unfinished, 0);
    assert_eq!(
        run.correctness.deliveries,
        run.correctness.deliveries_expected
    );
    assert_eq!(
        run.correctness.deliveries_expected,
        run.events * 10,
        "each event has ten clients"
    );
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "storm");
    assert_eq!(record["runs"][0]["lost"], 0);
}
