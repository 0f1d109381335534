//! The `topics` scenario end to end, in a tiny configuration: 10 topics
//! with 2 WebSocket subscribers each, 100 events spread over them by 4
//! concurrent publishers, against a Herald it starts on SQLite. Asserts
//! that every subscriber received every event of its topic once and in
//! order; never how fast.

mod common;

use clap::Parser;
use herald_load::report::Runs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_topics_of_two_subscribers_receive_their_events_once_and_in_order() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "topics".as_ref(),
        "--topics".as_ref(),
        "10".as_ref(),
        "--subscribers-per-topic".as_ref(),
        "2".as_ref(),
        "--events".as_ref(),
        "100".as_ref(),
        "--rate".as_ref(),
        "max".as_ref(),
        "--publishers".as_ref(),
        "4".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    let Runs::Topics(runs) = &report.runs else {
        panic!("topics reports topics runs");
    };
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.topics, 10);
    assert_eq!(run.subscribers, 20);
    assert!(run.publish_errors.is_empty(), "{:?}", run.publish_errors);
    assert_eq!(run.published, 100);
    assert_eq!(run.events, 100, "the topics hold every event");
    assert_eq!(
        run.correctness.deliveries_expected, 200,
        "each event has two subscribers"
    );
    assert_eq!(run.correctness.deliveries, 200);
    assert_eq!(run.correctness.lost, 0, "lost events");
    assert_eq!(run.correctness.duplicates, 0, "duplicated events");
    assert_eq!(run.correctness.order_violations, 0, "events out of order");
    assert_eq!(run.correctness.resets, 0);
    assert!(run.closed_early.is_empty(), "{:?}", run.closed_early);
    assert_eq!(run.correctness.unfinished, 0);
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "topics");
    assert_eq!(record["runs"][0]["topics"], 10);
}
