//! The `publish` scenario end to end, in a tiny configuration: a Herald it
//! starts on SQLite, 1 then 2 publishers for about a second each. Asserts
//! correctness only (every publish stored, receipts in order), never speed.

mod common;

use clap::Parser;
use herald_load::report::Runs;

#[tokio::test(flavor = "current_thread")]
async fn one_and_two_publishers_get_every_event_stored_with_increasing_seqs() {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let json = dir.path().join("report.json");
    let bin = common::herald_binary();
    let cli = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "publish".as_ref(),
        "--concurrency".as_ref(),
        "1,2".as_ref(),
        "--duration-secs".as_ref(),
        "1".as_ref(),
        "--warmup-secs".as_ref(),
        "0".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ])
    .expect("the arguments are valid");

    let report = herald_load::run(cli).await.expect("the scenario runs");

    assert_eq!(report.target.store, "sqlite");
    let Runs::Publish(runs) = &report.runs else {
        panic!("publish reports publish runs");
    };
    let publishers: Vec<usize> = runs.iter().map(|r| r.publishers).collect();
    assert_eq!(publishers, [1, 2]);
    for run in runs {
        assert!(
            run.errors.is_empty(),
            "{} publishers: errors {:?}",
            run.publishers,
            run.errors
        );
        assert!(
            run.events > 0,
            "{} publishers stored nothing",
            run.publishers
        );
        assert_eq!(
            run.order_violations, 0,
            "{} publishers: receipts out of order",
            run.publishers
        );
        assert!(run.receipts_checked >= run.events);
        assert_eq!(run.latency.count, run.events);
        assert!(
            run.server_cpu_ms.is_some(),
            "a started server's CPU is measured"
        );
    }
    assert_eq!(report.failures(), 0);

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the record"))
            .expect("the record is JSON");
    assert_eq!(record["scenario"], "publish");
    assert_eq!(record["target"]["store"], "sqlite");
    assert_eq!(record["runs"].as_array().map(Vec::len), Some(2));
}
