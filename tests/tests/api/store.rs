//! The store through its trait, on both backends: reads, heads and retention
//! with an explicit clock.

use std::sync::Arc;

use herald::event::{NewEvent, now_ms};
use herald::store::{self, Store};
use herald::topic::Topic;
use herald_tests::app::{Backend, unique_topic};
use serde_json::value::RawValue;

crate::on_both_stores!(
    read_since_returns_events_after_a_seq_in_order_with_the_head,
    retention_by_count_keeps_the_newest_events_and_reads_report_the_reset,
    retention_by_age_prunes_old_events_but_never_restarts_seqs,
    an_id_is_reusable_once_its_event_left_retention,
);

async fn open(backend: Backend) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}/store.db", dir.path().display()),
        Backend::Postgres => herald_tests::pg::shared()
            .create_database()
            .expect("database"),
        Backend::Url(url) => url,
    };
    let store = store::open(&url).await.expect("store opens");
    store.migrate().await.expect("migrations apply");
    (store, dir)
}

fn event(topic: &Topic, id: &str) -> NewEvent {
    NewEvent {
        topic: topic.clone(),
        id: id.to_owned(),
        id_given: true,
        kind: None,
        data: RawValue::from_string(format!("\"{id}\"")).expect("valid JSON"),
    }
}

async fn append(store: &dyn Store, topic: &Topic, ids: &[&str], time_ms: i64) -> Vec<u64> {
    let request = ids.iter().map(|id| event(topic, id)).collect();
    let answers = store
        .append_group(&[request], time_ms)
        .await
        .expect("append");
    answers[0].iter().map(|a| a.seq).collect()
}

async fn read_since_returns_events_after_a_seq_in_order_with_the_head(backend: Backend) {
    let (store, _dir) = open(backend).await;
    let topic = Topic::parse(&unique_topic("read")).expect("valid");
    assert_eq!(
        store
            .heads(std::slice::from_ref(&topic))
            .await
            .expect("heads"),
        vec![0]
    );
    assert_eq!(
        append(&*store, &topic, &["a", "b", "c", "d"], now_ms()).await,
        vec![1, 2, 3, 4]
    );
    let read = store.read_since(&topic, 1, 2).await.expect("read");
    assert_eq!(
        read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(read.events[0].data.get(), "\"b\"");
    assert_eq!(read.head, 4);
    assert_eq!(read.reset_from(1), None);
    let all = store.read_since(&topic, 0, 100).await.expect("read");
    assert_eq!(all.events.len(), 4);
    assert!(
        store
            .read_since(&topic, 4, 100)
            .await
            .expect("read")
            .events
            .is_empty()
    );
    assert_eq!(
        store
            .heads(std::slice::from_ref(&topic))
            .await
            .expect("heads"),
        vec![4]
    );
}

async fn retention_by_count_keeps_the_newest_events_and_reads_report_the_reset(backend: Backend) {
    let (store, _dir) = open(backend).await;
    let topic = Topic::parse(&unique_topic("count")).expect("valid");
    let ids: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    append(&*store, &topic, &ids, now_ms()).await;
    // Nothing is old; at most 3 per topic.
    let pruned = store.prune(0, 3, 1000).await.expect("prune");
    assert!(pruned >= 7, "pruned {pruned}");
    let read = store.read_since(&topic, 0, 100).await.expect("read");
    assert_eq!(
        read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(
        read.reset_from(0),
        Some(8),
        "a cursor before retention is told where it resumes"
    );
    assert_eq!(
        read.reset_from(7),
        None,
        "a cursor at the edge lost nothing"
    );
}

async fn retention_by_age_prunes_old_events_but_never_restarts_seqs(backend: Backend) {
    let (store, _dir) = open(backend).await;
    let topic = Topic::parse(&unique_topic("age")).expect("valid");
    let t0 = now_ms();
    append(&*store, &topic, &["old1", "old2"], t0 - 10_000).await;
    append(&*store, &topic, &["new1"], t0).await;
    store.prune(t0 - 5_000, 1_000, 1000).await.expect("prune");
    let read = store.read_since(&topic, 0, 100).await.expect("read");
    assert_eq!(
        read.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3]
    );
    // Everything goes: the head stays, and a reader past the gap is told.
    store.prune(t0 + 1, 1_000, 1000).await.expect("prune");
    let read = store.read_since(&topic, 1, 100).await.expect("read");
    assert!(read.events.is_empty());
    assert_eq!(read.reset_from(1), Some(4));
    assert_eq!(
        append(&*store, &topic, &["later"], now_ms()).await,
        vec![4],
        "seqs never restart"
    );
}

async fn an_id_is_reusable_once_its_event_left_retention(backend: Backend) {
    let (store, _dir) = open(backend).await;
    let topic = Topic::parse(&unique_topic("reuse")).expect("valid");
    let t0 = now_ms();
    assert_eq!(append(&*store, &topic, &["k"], t0 - 10_000).await, vec![1]);
    assert_eq!(
        append(&*store, &topic, &["k"], t0).await,
        vec![1],
        "a repeat within retention"
    );
    store.prune(t0 - 5_000, 1_000, 1000).await.expect("prune");
    assert_eq!(
        append(&*store, &topic, &["k"], t0).await,
        vec![2],
        "a new event once it left"
    );
}
