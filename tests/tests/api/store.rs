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
    revocations_are_read_incrementally_in_commit_order,
    heads_asked_by_many_callers_at_once_answer_each_its_own_in_order,
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

async fn revocations_are_read_incrementally_in_commit_order(backend: Backend) {
    use herald::auth::RevocationKind::{Jti, Sub};
    let (store, _dir) = open(backend).await;
    let names = |changes: &herald::store::RevocationChanges| -> Vec<(String, u64)> {
        let mut names: Vec<(String, u64)> = changes
            .revocations
            .iter()
            .map(|r| (format!("{}:{}", r.kind, r.value), r.revoked_at_secs))
            .collect();
        names.sort();
        names
    };
    let now = 1_000;
    let all = store.revocations(0, now).await.expect("read");
    assert!(all.revocations.is_empty());
    let start = all.last_change;

    store.revoke(Sub, "a", 900, 2_000).await.expect("revoke");
    store.revoke(Jti, "t1", 901, 2_000).await.expect("revoke");
    let first = store.revocations(start, now).await.expect("read");
    assert_eq!(
        names(&first),
        vec![("jti:t1".to_owned(), 901), ("sub:a".to_owned(), 900)]
    );
    assert_eq!(first.last_change, start + 2);

    // Nothing new: nothing read.
    let none = store
        .revocations(first.last_change, now)
        .await
        .expect("read");
    assert!(none.revocations.is_empty(), "{:?}", none.revocations);
    assert_eq!(none.last_change, first.last_change);

    // A renewal is a change; an older second does not lower the stored one.
    store.revoke(Sub, "a", 950, 2_100).await.expect("revoke");
    store.revoke(Sub, "b", 960, 2_000).await.expect("revoke");
    let second = store
        .revocations(first.last_change, now)
        .await
        .expect("read");
    assert_eq!(
        names(&second),
        vec![("sub:a".to_owned(), 950), ("sub:b".to_owned(), 960)]
    );
    store.revoke(Sub, "a", 10, 2_100).await.expect("revoke");
    let third = store
        .revocations(second.last_change, now)
        .await
        .expect("read");
    assert_eq!(names(&third), vec![("sub:a".to_owned(), 950)]);

    // Expired ones are not read, and pruning them never moves the count back.
    let later = store.revocations(0, 2_050).await.expect("read");
    assert_eq!(names(&later), vec![("sub:a".to_owned(), 950)]);
    assert_eq!(store.prune_revocations(3_000).await.expect("prune"), 3);
    let after_prune = store
        .revocations(third.last_change, 3_000)
        .await
        .expect("read");
    assert!(after_prune.revocations.is_empty());
    assert_eq!(after_prune.last_change, third.last_change);
    store.revoke(Sub, "c", 3_000, 4_000).await.expect("revoke");
    let fresh = store
        .revocations(third.last_change, 3_000)
        .await
        .expect("read");
    assert_eq!(names(&fresh), vec![("sub:c".to_owned(), 3_000)]);
    assert!(fresh.last_change > third.last_change);

    // Asked after a change the store never reached (a restored store):
    // everything is read again.
    let ahead = store
        .revocations(fresh.last_change + 100, 3_000)
        .await
        .expect("read");
    assert_eq!(names(&ahead), vec![("sub:c".to_owned(), 3_000)]);
    assert_eq!(ahead.last_change, fresh.last_change);
}

async fn heads_asked_by_many_callers_at_once_answer_each_its_own_in_order(backend: Backend) {
    let (store, _dir) = open(backend).await;
    // Topic i holds i events; one more topic was never written.
    let topics: Vec<Topic> = (0..12)
        .map(|i| Topic::parse(&unique_topic(&format!("heads{i}"))).expect("valid"))
        .collect();
    for (i, topic) in topics.iter().enumerate() {
        let ids: Vec<String> = (0..i).map(|n| format!("e{n}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        if !ids.is_empty() {
            append(&*store, topic, &ids, now_ms()).await;
        }
    }
    // 600 callers together (more than one statement's worth of topics),
    // each asking for a different selection, some with a topic twice.
    let callers: Vec<_> = (0..600usize)
        .map(|c| {
            let store = store.clone();
            let asked: Vec<Topic> = (0..1 + c % 5)
                .map(|k| topics[(c * 7 + k * 5) % topics.len()].clone())
                .chain(std::iter::once(topics[c % topics.len()].clone()))
                .collect();
            tokio::spawn(async move {
                let heads = store.heads(&asked).await.expect("heads");
                (asked, heads)
            })
        })
        .collect();
    for caller in callers {
        let (asked, heads) = caller.await.expect("the caller ran");
        let expected: Vec<u64> = asked
            .iter()
            .map(|t| topics.iter().position(|x| x == t).expect("one of them") as u64)
            .collect();
        assert_eq!(heads, expected, "{asked:?}");
    }
    assert_eq!(store.heads(&[]).await.expect("heads"), Vec::<u64>::new());
}
