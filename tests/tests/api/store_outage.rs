//! Killing Postgres under a running node: publishes answer 503 with nothing
//! half-written, and publishing works again once it is back. A commit whose
//! answer is lost answers 503 saying the event may be stored, and a retry
//! with the same id finds it.

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
            let (mut acked, mut unavailable, mut i) = (Vec::new(), Vec::new(), 0u32);
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
                        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
                        unavailable.push((id, detail));
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
    let mut unavailable = Vec::new();
    for t in tasks {
        let (a, u) = t.await.expect("publisher");
        acked.extend(a);
        unavailable.extend(u);
    }
    assert!(!unavailable.is_empty(), "some publishes hit the outage");

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
    // A 503 that says nothing was stored is true to its word; one that came
    // from a commit whose answer was lost says the event may be stored.
    let stored_ids: BTreeSet<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
    for (id, detail) in &unavailable {
        if stored_ids.contains(id.as_str()) {
            assert!(
                detail.contains("may or may not be stored"),
                "{id} answered 503 \"{detail}\" but is stored"
            );
        } else {
            assert!(
                detail.contains("nothing was stored") || detail.contains("may or may not"),
                "{id}: {detail}"
            );
        }
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

/// A TCP proxy in front of Postgres that, once armed, forwards the next
/// `COMMIT`, lets the server answer it, and then cuts that connection
/// without passing the answer on: the client never learns that it committed.
struct CommitCutter {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl CommitCutter {
    async fn start(upstream: u16) -> CommitCutter {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU32};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds");
        let port = listener.local_addr().expect("bound").port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU32::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                tokio::spawn(pump(client, server, a.clone(), c.clone()));
            }
        });
        CommitCutter {
            port,
            armed,
            cuts,
            task,
        }
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn cuts(&self) -> u32 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    loop {
        tokio::select! {
            n = client.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                let chunk = &up[..n];
                let commit = chunk.windows(6).any(|w| w == b"COMMIT");
                if server.write_all(chunk).await.is_err() {
                    return;
                }
                if commit && armed.swap(false, Ordering::SeqCst) {
                    // The server commits and answers; the answer is dropped
                    // with both connections.
                    let _ = tokio::time::timeout(Duration::from_secs(5), server.read(&mut down)).await;
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
            n = server.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_says_the_event_may_be_stored_and_its_id_finds_it() {
    let url = herald_tests::pg::shared()
        .create_database()
        .expect("database");
    let (base, database) = url.rsplit_once('/').expect("a database URL");
    let pg_port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the URL has a port");
    let proxy = CommitCutter::start(pg_port).await;
    let proxied = format!("postgres://postgres@127.0.0.1:{}/{database}", proxy.port);
    let app = spawn_with(Options::new(Backend::Url(proxied))).await;
    let topic = unique_topic("ambiguous");
    let token = app.root_token();
    app.publish(&topic, json!("before")).await;

    proxy.arm();
    let event = json!({"topic": topic, "id": "maybe-stored", "data": "answer lost"});
    let response = app.publish_as(&token, &event).await;
    assert_eq!(proxy.cuts(), 1, "the commit's answer was cut");
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.expect("problem json");
    assert_eq!(problem["code"], "unavailable", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("may or may not be stored") && detail.contains("same id"),
        "the answer says the event may be stored, and how to retry: {problem}"
    );

    // It was stored; a retry with its id finds it instead of storing it again.
    let retry = app.publish_as(&token, &event).await;
    assert_eq!(retry.status(), 200, "a repeat of a stored id");
    let retry: Value = retry.json().await.expect("json");
    assert_eq!(
        (retry["seq"].as_u64(), &retry["duplicate"]),
        (Some(2), &json!(true)),
        "{retry}"
    );
    let (status, polled) = app
        .poll(&format!(
            "topic={topic}&since={topic}:0&access_token={token}"
        ))
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = polled["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "stored once: {polled}");
    assert_eq!(ids[1], "maybe-stored", "{polled}");
}
