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

/// Twenty `transport` streams that arrive as `arrival` (through nginx when
/// `via_nginx`): (streams the server took as first requests, as later ones).
async fn twenty_arriving(transport: &str, arrival: &str, via_nginx: bool) -> (u64, u64) {
    let bin = common::herald_binary();
    let mut args: Vec<std::ffi::OsString> = [
        "herald-load",
        "conns",
        "--transport",
        transport,
        "--arrival",
        arrival,
        "--count",
        "20",
        "--hold-secs",
        "1",
        "--source-ips",
        "4",
        "--open-concurrency",
        "4",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if via_nginx {
        args.push("--via-nginx".into());
    }
    args.push("--herald-bin".into());
    args.push(bin.into_os_string());
    let cli = herald_load::Cli::try_parse_from(args).expect("the arguments are valid");
    let report = herald_load::run(cli).await.expect("the scenario runs");
    let Runs::Conns(runs) = &report.runs else {
        panic!("conns reports conns runs");
    };
    let run = &runs[0];
    assert_eq!(run.arrival, arrival);
    assert_eq!(run.via_nginx, via_nginx);
    assert!(run.all_held(), "errors: {:?}", run.errors);
    (
        run.server_streams_first
            .expect("the started server's metrics are read"),
        run.server_streams_later
            .expect("the started server's metrics are read"),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn streams_after_a_request_reach_the_server_as_later_requests_of_their_connection() {
    for transport in ["ws", "sse"] {
        assert_eq!(
            twenty_arriving(transport, "first", false).await,
            (20, 0),
            "{transport}"
        );
        assert_eq!(
            twenty_arriving(transport, "after-request", false).await,
            (0, 20),
            "{transport}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn behind_nginx_streams_reuse_pooled_upstream_connections() {
    for transport in ["ws", "sse"] {
        let (first, later) = twenty_arriving(transport, "after-request", true).await;
        assert_eq!(first + later, 20, "{transport}");
        // Four at a time: at most the first four need a new upstream
        // connection; the rest take one the pool kept after a /healthz.
        assert!(
            later >= 10,
            "{transport}: {later} of 20 streams on reused upstream connections"
        );
    }
}
