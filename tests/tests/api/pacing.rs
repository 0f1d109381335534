//! Publishers keep pace with fan-out, and nothing else paces them: not a
//! peer whose wall clock disagrees, not a slow commit. Eight publishers
//! saturating a node lose nothing; subscribers that stop reading never pace
//! anyone.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_tests::app::{Backend, Options, TestApp, spawn_with, unique_topic};
use herald_tests::clients::{WAIT, WsClient};
use herald_tests::nats::NatsServer;
use serde_json::json;

use crate::cluster::{next_seqs, wait_ready};

/// The pacing limit of these tests: far above what scheduling on a busy
/// test machine adds to fan-out, far below the skew and the slow commit.
const PACE_LAG_MS: u64 = 500;

/// libfaketime, from Debian's `faketime` package (scripts/setup installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

const PACED: &str = "herald_publishes_paced_total";

async fn subscribers(app: &TestApp, topic: &str, n: usize) -> Vec<WsClient> {
    let token = app.token("reader", &[topic], &[], 600);
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(app.ws_subscribed(&token, &[topic], None).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ahead_of_its_peer_is_never_paced_by_the_skew() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install -y faketime (scripts/setup does)"
    );
    let nats = NatsServer::start().expect("a private NATS starts");
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    let node = |extra: &[(&str, &str)]| {
        // A limit far above what a busy test machine's scheduling adds, and
        // far below the 3 s skew: only a lag read from the skew trips it.
        let mut options = Options::new(Backend::Url(database_url.clone()))
            .env("HERALD_NATS_URL", nats.url())
            .env("HERALD_HEARTBEAT_SECS", 1)
            .env("HERALD_PACE_LAG_MS", PACE_LAG_MS);
        for (key, value) in extra {
            options = options.env(key, value);
        }
        options
    };
    let peer = spawn_with(node(&[])).await;
    // Three seconds ahead: every event of the peer looks three seconds
    // late by this node's wall clock.
    let ahead = spawn_with(node(&[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "+3")])).await;
    for n in [&peer, &ahead] {
        wait_ready(n).await;
    }
    let skew_ms = {
        let answer = ahead
            .http
            .get(format!("{}/healthz", ahead.base_url))
            .send()
            .await
            .expect("answers");
        let date = answer.headers()["date"].to_str().expect("ASCII").to_owned();
        let then = chrono::DateTime::parse_from_rfc2822(&date).expect("an HTTP date");
        (then.timestamp_millis() - chrono::Utc::now().timestamp_millis()).abs()
    };
    assert!(skew_ms >= 2_000, "the node runs ahead by {skew_ms} ms");

    let busy = unique_topic("skew.busy");
    let own = unique_topic("skew.own");
    let mut readers = subscribers(&ahead, &busy, 20).await;
    // The peer publishes a steady stream that the skewed node delivers,
    // while publishers of the skewed node publish their own topic.
    let streaming = {
        let peer_url = peer.base_url.clone();
        let token = peer.token("p", &[], &[&busy], 600);
        let busy = busy.clone();
        let http = peer.http.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                let status = http
                    .post(format!("{peer_url}/v1/publish"))
                    .bearer_auth(&token)
                    .json(&json!({"topic": busy, "data": n}))
                    .send()
                    .await
                    .expect("the peer answers")
                    .status();
                assert_eq!(status, 201);
            }
        })
    };
    for n in 0..100 {
        ahead.publish(&own, json!(n)).await;
    }
    streaming.await.expect("the peer's publisher ran");
    for reader in &mut readers {
        assert_eq!(next_seqs(reader, 200).await, (1..=200).collect::<Vec<_>>());
    }
    assert_eq!(ahead.metrics().await.get(PACED), 0.0, "paced by the skew");
}

/// Holds the row of `topic`'s head locked in Postgres for `hold`: a commit
/// to that topic waits for it.
fn lock_topic(database_url: &str, topic: &str, hold: Duration) -> std::process::Child {
    Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            database_url,
            "-c",
            &format!(
                "BEGIN; SELECT head FROM topics WHERE topic = '{topic}' FOR UPDATE; \
                 SELECT 'herald-lock', pg_sleep({}); COMMIT;",
                hold.as_secs_f64()
            ),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("psql runs")
}

/// Waits (bounded) until a session of `database_url` is sleeping with the
/// lock held.
async fn until_locked(database_url: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = Command::new("psql")
            .args([
                "-X",
                "-tA",
                "-d",
                database_url,
                "-c",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%herald-lock%' \
                 AND wait_event = 'PgSleep'",
            ])
            .output()
            .expect("psql runs");
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_is_not_counted_as_fan_out_lag() {
    let database_url = herald_tests::pg::shared()
        .create_database()
        .expect("the private Postgres makes databases");
    // Far below the 1.5 s commit: a commit counted as lag trips it.
    let app = spawn_with(
        Options::new(Backend::Url(database_url.clone())).env("HERALD_PACE_LAG_MS", PACE_LAG_MS),
    )
    .await;
    let slow = unique_topic("slow");
    let other = unique_topic("other");
    app.publish(&slow, json!("first")).await;
    let mut readers = subscribers(&app, &slow, 50).await;

    let mut lock = lock_topic(&database_url, &slow, Duration::from_millis(1_500));
    until_locked(&database_url).await;
    let started = tokio::time::Instant::now();
    app.publish(&slow, json!("after the lock")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "the commit waited for the lock ({:?})",
        started.elapsed()
    );
    // Right behind the slow commit's delivery, more publishes.
    for n in 0..30 {
        app.publish(&other, json!(n)).await;
    }
    for reader in &mut readers {
        assert_eq!(next_seqs(reader, 1).await, [2]);
    }
    assert!(lock.wait().expect("psql ends").success());
    assert_eq!(
        app.metrics().await.get(PACED),
        0.0,
        "paced by a slow commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_publishers_saturating_a_node_lose_nothing() {
    let app = spawn_with(Options::new(Backend::Sqlite)).await;
    let topic = unique_topic("saturate");
    let mut readers = subscribers(&app, &topic, 100).await;
    let mut publishers = Vec::new();
    for p in 0..8 {
        let url = app.base_url.clone();
        let http = app.http.clone();
        let token = app.token("p", &[], &[&topic], 600);
        let topic = topic.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..100 {
                let status = http
                    .post(format!("{url}/v1/publish"))
                    .bearer_auth(&token)
                    .json(&json!({"topic": topic, "data": [p, n]}))
                    .send()
                    .await
                    .expect("answers")
                    .status();
                assert_eq!(status, 201);
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("a publisher ran");
    }
    for reader in &mut readers {
        assert_eq!(next_seqs(reader, 800).await, (1..=800).collect::<Vec<_>>());
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get("herald_slow_consumer_closes_total{transport=\"ws\"}"),
        0.0
    );
}

/// A node whose subscribers of one topic read nothing: queues large
/// enough that they stay connected throughout, holding old events; a
/// pacing limit far below how long they hold them, far above a busy
/// machine's scheduling.
async fn node_for_stalled_subscribers() -> TestApp {
    spawn_with(
        Options::new(Backend::Sqlite)
            .env("HERALD_PACE_LAG_MS", 250)
            .env("HERALD_QUEUE_EVENTS", 4_096)
            .env("HERALD_QUEUE_BYTES", 64 * 1024 * 1024),
    )
    .await
}

/// Publishes 19 MB to `topic`'s stalled subscribers (more than the
/// kernel's socket buffers on both ends hold), then more a second later,
/// and checks that no publish waited for them and none was closed.
async fn publish_past_stalled_subscribers(app: &TestApp, topic: &str, transport: &str) {
    let payload = "x".repeat(48 * 1024);
    for n in 0..400 {
        app.publish(topic, json!({"n": n, "pad": payload})).await;
    }
    // Long after the oldest of them was received, more publishes.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for n in 400..410 {
        app.publish(topic, json!({"n": n, "pad": payload})).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.get(PACED),
        0.0,
        "publishers were paced by {transport} clients that do not read"
    );
    assert_eq!(
        metrics.get(&format!(
            "herald_slow_consumer_closes_total{{transport=\"{transport}\"}}"
        )),
        0.0,
        "the stalled subscribers stayed (their queues hold what they did not read)"
    );
}

// Far more subscribers than a node would call stragglers on each of its
// stream threads, and every member of the topic: they read nothing, so
// their sockets stall.
const STALLED: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribers_that_stop_reading_never_pace_publishers() {
    let app = node_for_stalled_subscribers().await;
    let topic = unique_topic("stalled.ws");
    let stalled = subscribers(&app, &topic, STALLED).await;
    publish_past_stalled_subscribers(&app, &topic, "ws").await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_subscribers_that_stop_reading_never_pace_publishers() {
    let app = node_for_stalled_subscribers().await;
    let topic = unique_topic("stalled.sse");
    let token = app.token("reader", &[&topic], &[], 600);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(
            app.sse(&format!("topic={topic}&access_token={token}"), None)
                .await,
        );
    }
    publish_past_stalled_subscribers(&app, &topic, "sse").await;
    drop(stalled);
}
