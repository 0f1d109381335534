//! Node-wide interest: which topics have at least one local subscriber, so
//! that a cluster bus receives only those topics' events.
//!
//! Each worker thread's registry joins a topic when it gets the topic's
//! first connection and leaves it when the last one goes; [`Interest`]
//! counts the threads per topic and tells the bus ([`Follow`]) when a topic
//! gains its first or loses its last local subscriber. A connection that
//! joins a topic whose bus subscription is not yet in effect waits for it
//! ([`Ready`]) before it reads the store: every event committed after that
//! read reaches it live.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::topic::Topic;

/// The bus side of interest: starts and stops receiving a topic.
pub trait Follow: Send + Sync + 'static {
    /// Starts receiving `topic`'s events. The receiver turns `true` once the
    /// subscription is in effect (or has been given up on: a node that could
    /// not subscribe repairs from the store when its bus comes back).
    fn start(&self, topic: &Topic) -> watch::Receiver<bool>;
    /// Stops receiving `topic`'s events.
    fn stop(&self, topic: &Topic);
    /// A local connection read `topic`'s head, `seq`, from the store: the
    /// node knows of the topic up to there.
    fn seen(&self, _topic: &Topic, _seq: u64) {}
}

/// What interest asks of the bus, in the order it happened.
pub enum Change {
    /// Start receiving the topic; say `true` on the sender once in effect.
    Start(Topic, watch::Sender<bool>),
    /// Stop receiving the topic.
    Stop(Topic),
    /// A local connection read the topic's head, this seq, from the store.
    Seen(Topic, u64),
}

/// The bus's end of [`Interest::channel`].
pub type Changes = mpsc::UnboundedReceiver<Change>;

/// [`Follow`] as messages to the bus, so that interest exists before the
/// bus that acts on it. Unbounded: a change is sent only for a topic's
/// first or last connection on a thread, and for a subscribing
/// connection's head read.
struct ToBus(mpsc::UnboundedSender<Change>);

impl Follow for ToBus {
    fn start(&self, topic: &Topic) -> watch::Receiver<bool> {
        let (ready, confirmed) = watch::channel(false);
        // A bus that is gone cannot confirm: nothing would ever arrive.
        if self.0.send(Change::Start(topic.clone(), ready)).is_err() {
            let (_, confirmed) = watch::channel(true);
            return confirmed;
        }
        confirmed
    }

    fn stop(&self, topic: &Topic) {
        let _ = self.0.send(Change::Stop(topic.clone()));
    }

    fn seen(&self, topic: &Topic, seq: u64) {
        let _ = self.0.send(Change::Seen(topic.clone(), seq));
    }
}

struct Entry {
    /// Worker threads with at least one connection on the topic.
    threads: usize,
    ready: watch::Receiver<bool>,
}

/// Topics with local subscribers, counted by worker thread.
pub struct Interest {
    follow: Box<dyn Follow>,
    topics: Mutex<HashMap<Topic, Entry>>,
}

impl Interest {
    /// Interest that tells `follow` about each topic's first and last
    /// local subscriber.
    pub fn new(follow: impl Follow) -> Interest {
        Interest {
            follow: Box::new(follow),
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Interest whose changes a bus receives from the returned end.
    pub fn channel() -> (Interest, Changes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Interest::new(ToBus(tx)), rx)
    }

    /// One thread registered connections for `all`; of those, `joined` had
    /// no connection on that thread before. Returns what to wait for before
    /// reading the store.
    pub fn join(&self, joined: &[Topic], all: &[Topic]) -> Ready {
        let mut topics = self.topics.lock();
        for topic in joined {
            match topics.get_mut(topic) {
                Some(entry) => entry.threads += 1,
                None => {
                    let ready = self.follow.start(topic);
                    topics.insert(topic.clone(), Entry { threads: 1, ready });
                }
            }
        }
        if !joined.is_empty() {
            crate::telemetry::metrics::topics_followed(topics.len());
        }
        let pending = all
            .iter()
            .filter_map(|t| topics.get(t))
            .filter(|e| !*e.ready.borrow())
            .map(|e| e.ready.clone())
            .collect();
        Ready(pending)
    }

    /// One thread's last connection on `topic` went.
    pub fn leave(&self, topic: &Topic) {
        let mut topics = self.topics.lock();
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        entry.threads -= 1;
        if entry.threads == 0 {
            topics.remove(topic);
            self.follow.stop(topic);
            crate::telemetry::metrics::topics_followed(topics.len());
        }
    }

    /// A local connection read `topic`'s head from the store.
    pub fn seen(&self, topic: &Topic, seq: u64) {
        self.follow.seen(topic, seq);
    }

    /// How many topics have local subscribers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.topics.lock().len()
    }

    /// Whether no topic has a local subscriber.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bus subscriptions a connection waits for before it reads the store.
#[derive(Default)]
pub struct Ready(Vec<watch::Receiver<bool>>);

impl Ready {
    /// Nothing to wait for.
    pub fn now() -> Ready {
        Ready(Vec::new())
    }

    /// Waits until every subscription is in effect, at most `limit`. Past
    /// it the connection goes on: whatever the bus misses meanwhile is
    /// repaired from the store (seq gaps, the head check, the resync after
    /// a reconnect).
    pub async fn wait(self, limit: Duration) {
        if self.0.is_empty() {
            return;
        }
        let all = async {
            for mut ready in self.0 {
                // An error means the subscription was dropped (the topic
                // lost its subscribers meanwhile): nothing to wait for.
                let _ = ready.wait_for(|r| *r).await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "bus subscriptions not confirmed in time; going on (losses are repaired from the store)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default, Clone)]
    struct Log {
        calls: Arc<Mutex<Vec<String>>>,
        senders: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    }

    impl Follow for Log {
        fn start(&self, topic: &Topic) -> watch::Receiver<bool> {
            self.calls.lock().push(format!("start {topic}"));
            let (tx, rx) = watch::channel(false);
            self.senders.lock().insert(topic.to_string(), tx);
            rx
        }
        fn stop(&self, topic: &Topic) {
            self.calls.lock().push(format!("stop {topic}"));
        }
    }

    fn t(name: &str) -> Topic {
        Topic::parse(name).expect("valid topic")
    }

    #[test]
    fn the_bus_follows_the_first_and_last_thread_of_a_topic() {
        let log = Log::default();
        let interest = Interest::new(log.clone());
        let a = t("a");
        let _ = interest.join(std::slice::from_ref(&a), std::slice::from_ref(&a));
        let _ = interest.join(std::slice::from_ref(&a), std::slice::from_ref(&a));
        assert_eq!(interest.len(), 1);
        interest.leave(&a);
        assert_eq!(*log.calls.lock(), vec!["start a".to_string()]);
        interest.leave(&a);
        assert_eq!(*log.calls.lock(), vec!["start a", "stop a"]);
        assert!(interest.is_empty());
        // A stray leave (already gone) changes nothing.
        interest.leave(&a);
        assert_eq!(log.calls.lock().len(), 2);
    }

    #[tokio::test]
    async fn joiners_wait_until_the_subscription_is_in_effect() {
        let log = Log::default();
        let interest = Interest::new(log.clone());
        let a = t("a");
        let first = interest.join(std::slice::from_ref(&a), std::slice::from_ref(&a));
        // Another connection on the same thread: not a new thread, but it
        // must wait too.
        let second = interest.join(&[], std::slice::from_ref(&a));
        assert_eq!(first.0.len(), 1);
        assert_eq!(second.0.len(), 1);
        let waited = tokio::spawn(second.wait(Duration::from_secs(10)));
        log.senders
            .lock()
            .get("a")
            .expect("started")
            .send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), waited)
            .await
            .expect("the wait ends once ready")
            .expect("the task ran");
        // Once in effect, later joiners do not wait at all.
        assert!(interest.join(&[], std::slice::from_ref(&a)).0.is_empty());
    }
}
