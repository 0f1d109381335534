//! Killing Postgres under a running node: publishes answer 503 with nothing
//! half-written, and publishing works again once it is back.

use std::collections::BTreeSet;
use std::time::Duration;

use herald::topic::Topic;
use herald_tests::app::{Backend, Options, spawn_with, unique_topic};
use herald_tests::pg::PgServer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_store_answers_503_stores_nothing_half_and_recovers() {
    let mut pg = tokio::task::block_in_place(PgServer::start).expect("a private Postgres starts");
    let url = pg.create_database().expect("database");
    let app = spawn_with(Options::new(Backend::Url(url.clone()))).await;
    let topic = unique_topic("outage");
    let token = app.root_token();

    // Steady publishing from 4 publishers, each with its own ids, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (http, url, token, topic, stop) = (
            app.http.clone(),
            format!("{}/v1/publish", app.base_url),
            token.clone(),
            topic.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut unavailable, mut i) = (Vec::new(), 0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("p{p}-{i}");
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"topic": topic, "id": id, "data": i}))
                    .send()
                    .await
                    .expect("the node answers even while its store is down");
                match r.status().as_u16() {
                    201 => {
                        let body: Value = r.json().await.expect("json");
                        acked.push((id, body["seq"].as_u64().expect("seq")));
                    }
                    503 => {
                        let body: Value = r.json().await.expect("problem json");
                        assert_eq!(body["code"], "unavailable");
                        unavailable += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
                i += 1;
            }
            (acked, unavailable)
        }));
    }

    wait_for_head(&url, &topic, 20).await;
    tokio::task::block_in_place(|| pg.kill());

    // While it is down, readiness fails and single publishes answer 503.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .publish_as(&token, &json!({"topic": topic, "data": "down"}))
            .await;
        if r.status() == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 503 while the store is down"
        );
    }
    let ready = app
        .http
        .get(format!("{}/readyz", app.base_url))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), 503);

    tokio::task::block_in_place(|| pg.restart()).expect("Postgres restarts");
    // Publishing works again without restarting the node.
    let before = tokio::time::Instant::now();
    loop {
        let r = app
            .publish_as(&token, &json!({"topic": topic, "data": "back"}))
            .await;
        if r.status() == 201 {
            break;
        }
        assert!(
            before.elapsed() < Duration::from_secs(30),
            "publishing did not recover"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for t in tasks {
        let (a, u) = t.await.expect("publisher");
        acked.extend(a);
        unavailable += u;
    }
    assert!(unavailable > 0, "some publishes hit the outage");

    // Every acknowledged event is stored with its seq, and the stored seqs are gapless.
    let store = herald::store::open(&url).await.expect("store");
    let topic = Topic::parse(&topic).expect("valid");
    let read = store.read_since(&topic, 0, 100_000).await.expect("read");
    let stored: Vec<(String, u64)> = read.events.iter().map(|e| (e.id.clone(), e.seq)).collect();
    let seqs: Vec<u64> = stored.iter().map(|s| s.1).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no hole, no half-written event"
    );
    let stored: BTreeSet<(String, u64)> = stored.into_iter().collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged event {a:?} is stored");
    }
    drop(app);
    pg.kill();
}

/// Waits until `topic` has reached `seq` in the store at `url`.
async fn wait_for_head(url: &str, topic: &str, seq: u64) {
    let store = herald::store::open(url).await.expect("store");
    let topic = Topic::parse(topic).expect("valid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let head = store
            .heads(std::slice::from_ref(&topic))
            .await
            .expect("heads")[0];
        if head >= seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not reach seq {seq}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
