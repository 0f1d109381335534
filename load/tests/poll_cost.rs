//! The `poll-cost` scenario end to end, in a tiny configuration: 3
//! consumers over each transport (WebSocket, SSE, long polling, short
//! polling every second) of a stream of 20 events/s for a second and a
//! half, against a Herald it starts on SQLite. Asserts that every consumer
//! received every event once and in order and that bytes and requests were
//! counted; never how fast or how many.

mod common;

use clap::Parser;
use herald_load::report::Runs;
use herald_load::scenarios::poll_cost::Consumer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_delivers_the_stream_once_and_in_order() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "poll-cost".as_ref(),
        "--clients".as_ref(),
        "3".as_ref(),
        "--rate".as_ref(),
        "20".as_ref(),
        "--duration-secs".as_ref(),
        "2".as_ref(),
        "--poll-interval-secs".as_ref(),
        "1".as_ref(),
        "--long-poll-wait-secs".as_ref(),
        "2".as_ref(),
        "--drain-secs".as_ref(),
        "10".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    let Runs::PollCost(runs) = &report.runs else {
        panic!("poll-cost reports poll-cost runs");
    };
    let transports: Vec<Consumer> = runs.iter().map(|r| r.transport).collect();
    assert_eq!(
        transports,
        [
            Consumer::Ws,
            Consumer::Sse,
            Consumer::LongPoll,
            Consumer::ShortPoll
        ]
    );
    for run in runs {
        let t = run.transport.name();
        assert!(
            run.publish_errors.is_empty(),
            "{t}: {:?}",
            run.publish_errors
        );
        assert!(run.events > 0, "{t}");
        assert_eq!(
            run.events, run.published,
            "{t}: the topic holds every event"
        );
        assert_eq!(run.correctness.deliveries, run.events * 3, "{t}");
        assert_eq!(run.correctness.deliveries_expected, run.events * 3, "{t}");
        assert_eq!(run.correctness.lost, 0, "{t}: lost events");
        assert_eq!(run.correctness.duplicates, 0, "{t}: duplicated events");
        assert_eq!(
            run.correctness.order_violations, 0,
            "{t}: events out of order"
        );
        assert_eq!(run.correctness.resets, 0, "{t}");
        assert_eq!(run.correctness.unfinished, 0, "{t}");
        assert!(run.bytes_received > 0 && run.bytes_sent > 0, "{t}");
        assert!(run.bytes_per_delivery.is_some(), "{t}");
        assert!(run.requests >= 3, "{t}: at least one request per consumer");
        assert_eq!(run.latency.count, run.correctness.deliveries, "{t}");
    }
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "poll-cost");
    assert_eq!(record["runs"][2]["transport"], "long-poll");
}
