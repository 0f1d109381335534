//! Scenarios across three nodes, in a tiny configuration: three Herald
//! processes started by the tool, sharing a private Postgres and a private
//! `nats-server` (both started here on free ports). Events are published to
//! the first node and every subscriber is on another one, so every delivery
//! crosses NATS. Asserts that nothing is lost, duplicated or reordered, and
//! that the CPU of every node is counted; never how fast.

mod common;

use clap::Parser;
use herald_load::report::Runs;
use herald_tests::nats::NatsServer;
use herald_tests::pg::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_storm_across_three_nodes_lose_nothing() {
    let (pg, nats) = tokio::task::spawn_blocking(|| {
        (
            PgServer::start().expect("a private Postgres starts"),
            NatsServer::start().expect("a private nats-server starts"),
        )
    })
    .await
    .expect("the start-up task ran");
    let bin = common::herald_binary();
    let nats_url = nats.url();

    let database_url = pg.create_database().expect("a fresh database");
    let fanout = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "fanout".as_ref(),
        "--nodes".as_ref(),
        "3".as_ref(),
        "--database-url".as_ref(),
        database_url.as_str().as_ref(),
        "--nats-url".as_ref(),
        nats_url.as_str().as_ref(),
        "--subscribers".as_ref(),
        "6".as_ref(),
        "--events".as_ref(),
        "60".as_ref(),
        "--publishers".as_ref(),
        "2".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
    ])
    .expect("the arguments are valid");
    let report = herald_load::run(fanout).await.expect("fanout runs");
    assert_eq!(report.target.store, "postgres");
    assert_eq!(report.target.bus, "nats");
    assert_eq!(report.target.nodes.len(), 3);
    let Runs::Fanout(runs) = &report.runs else {
        panic!("fanout reports fanout runs");
    };
    let run = &runs[0];
    assert_eq!(run.nodes, 3);
    assert!(run.publish_errors.is_empty(), "{:?}", run.publish_errors);
    assert_eq!(run.events, 60);
    assert_eq!(run.correctness.deliveries, 360);
    assert_eq!(run.correctness.lost, 0, "lost events");
    assert_eq!(run.correctness.duplicates, 0, "duplicated events");
    assert_eq!(run.correctness.order_violations, 0, "events out of order");
    assert_eq!(run.correctness.unfinished, 0);
    assert!(
        run.cost.server_cpu_secs.is_some(),
        "every node's CPU is counted"
    );

    let database_url = pg.create_database().expect("a fresh database");
    let storm = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "storm".as_ref(),
        "--nodes".as_ref(),
        "3".as_ref(),
        "--database-url".as_ref(),
        database_url.as_str().as_ref(),
        "--nats-url".as_ref(),
        nats_url.as_str().as_ref(),
        "--clients".as_ref(),
        "20".as_ref(),
        "--topics".as_ref(),
        "4".as_ref(),
        "--rate".as_ref(),
        "50".as_ref(),
        "--before-secs".as_ref(),
        "1".as_ref(),
        "--after-secs".as_ref(),
        "1".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
    ])
    .expect("the arguments are valid");
    let report = herald_load::run(storm).await.expect("storm runs");
    let Runs::Storm(runs) = &report.runs else {
        panic!("storm reports storm runs");
    };
    let run = &runs[0];
    assert_eq!(run.resumed, 20, "every client resumed");
    assert_eq!(run.correctness.lost, 0, "lost events");
    assert_eq!(run.correctness.duplicates, 0, "duplicated events");
    assert_eq!(run.correctness.order_violations, 0, "events out of order");
    assert_eq!(
        run.correctness.deliveries,
        run.correctness.deliveries_expected
    );
    assert_eq!(report.failures(), 0);

    // The same, but the storm is the last node's death: its clients move to
    // the other subscriber node with their cursors, the others stay.
    let database_url = pg.create_database().expect("a fresh database");
    let killed = herald_load::Cli::try_parse_from([
        "herald-load".as_ref(),
        "storm".as_ref(),
        "--kill-node".as_ref(),
        "--nodes".as_ref(),
        "3".as_ref(),
        "--database-url".as_ref(),
        database_url.as_str().as_ref(),
        "--nats-url".as_ref(),
        nats_url.as_str().as_ref(),
        "--clients".as_ref(),
        "20".as_ref(),
        "--topics".as_ref(),
        "4".as_ref(),
        "--rate".as_ref(),
        "50".as_ref(),
        "--before-secs".as_ref(),
        "1".as_ref(),
        "--after-secs".as_ref(),
        "2".as_ref(),
        "--herald-bin".as_ref(),
        bin.as_os_str(),
    ])
    .expect("the arguments are valid");
    let report = herald_load::run(killed)
        .await
        .expect("storm --kill-node runs");
    let Runs::Storm(runs) = &report.runs else {
        panic!("storm reports storm runs");
    };
    let run = &runs[0];
    assert_eq!(run.killed_node, Some(3));
    assert_eq!(run.storm_clients, 10, "half the clients were on node 3");
    assert_eq!(run.resumed, 10, "every client of the killed node resumed");
    assert_eq!(run.not_resumed, 0);
    assert_eq!(run.correctness.lost, 0, "lost events");
    assert_eq!(run.correctness.duplicates, 0, "duplicated events");
    assert_eq!(run.correctness.order_violations, 0, "events out of order");
    assert_eq!(run.correctness.unfinished, 0);
    assert_eq!(
        run.correctness.deliveries,
        run.correctness.deliveries_expected
    );
    assert!(
        run.server_cpu_secs.is_some(),
        "the survivors' CPU is counted"
    );
    assert_eq!(report.failures(), 0);
    drop((pg, nats));
}
