//! The `conns` scenario end to end, in a tiny configuration: 20 idle
//! connections over each transport to a Herald it starts on SQLite, held for
//! a second. Asserts that every connection opened and stayed, and that the
//! memory figures are there; never how fast or how big.

mod common;

use clap::Parser;
use herald_load::report::Runs;

async fn twenty(transport: &str, topics: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "conns".as_ref(),
        "--transport".as_ref(),
        transport.as_ref(),
        "--topics".as_ref(),
        topics.as_ref(),
        "--count".as_ref(),
        "20".as_ref(),
        "--hold-secs".as_ref(),
        "1".as_ref(),
        "--source-ips".as_ref(),
        "4".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    assert_eq!(report.target.store, "sqlite");
    let Runs::Conns(runs) = &report.runs else {
        panic!("conns reports conns runs");
    };
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.transport, transport);
    assert_eq!(run.topics, topics);
    assert_eq!(run.opened, 20, "errors: {:?}", run.errors);
    assert!(run.errors.is_empty(), "errors: {:?}", run.errors);
    assert_eq!(run.dropped_while_held, 0);
    assert!(run.all_held());
    assert_eq!(run.open_latency.count, 20);
    for (name, rss) in [
        ("before", run.server_rss_before),
        ("open", run.server_rss_open),
        ("idle", run.server_rss_idle),
    ] {
        assert!(
            rss.is_some_and(|b| b > 0),
            "the started server's RSS {name} opening is measured"
        );
    }
    assert!(run.server_kib_per_conn.is_some());
    assert!(run.client_rss_idle > 0);
    // The server holds a socket per connection.
    let (before, idle) = (
        run.server_fds_before.expect("the server's fds are listed"),
        run.server_fds_idle.expect("the server's fds are listed"),
    );
    assert!(idle >= before + 20, "server fds {before} -> {idle}");
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "conns");
    assert_eq!(record["runs"][0]["opened"], 20);
    assert!(record["runs"][0]["server_kib_per_conn"].is_number());
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_websockets_on_their_own_topics_open_and_stay() {
    twenty("ws", "own").await;
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_sse_streams_on_one_topic_open_and_stay() {
    twenty("sse", "shared").await;
}
