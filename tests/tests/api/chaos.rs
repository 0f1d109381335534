//! The short chaos run: three nodes, 200 subscribers over every transport,
//! publishers retrying with idempotency ids, and every fault kind at least
//! once in about 35 s; the checker must find nothing. The schedule is drawn
//! from `HERALD_CHAOS_SEED` (default 1): a failing seed replays with the
//! same faults in the same order. The long run is `herald-chaos` (see
//! docs/RELIABILITY.md).

use herald_tests::chaos::{self, Config, cluster::FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_loses_duplicates_and_reorders_nothing() {
    let seed = std::env::var("HERALD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let config = Config::short(seed);
    let verdict = chaos::run(&config, &|line| eprintln!("chaos: {line}"))
        .await
        .expect("the chaos run completes");
    println!("{verdict}\n{}", verdict.details());
    assert_eq!(
        verdict.faults.len(),
        FaultKind::ALL.len(),
        "every fault kind ran: {:?}",
        verdict.faults
    );
    assert!(
        verdict.check.acknowledged > 0 && verdict.check.delivered > 0,
        "{verdict}"
    );
    assert!(verdict.ok(), "{verdict}\n{}", verdict.details());
}
