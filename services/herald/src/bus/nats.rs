//! The cluster bus: committed events travel over core NATS between nodes.
//!
//! Each topic has the subject `{prefix}.ev.{topic}`. A node subscribes to a
//! topic's subject only while it has a local subscriber of the topic
//! (interest follows subscriptions, see [`crate::hub::interest`]): the first
//! local subscriber makes the node subscribe, and waits until NATS has the
//! subscription before reading the store; the last one leaving unsubscribes.
//! The connection is made without echo: a node hands its own events to its
//! hubs directly, so its local subscribers are served even while NATS is
//! away.
//!
//! Core NATS is at-most-once, which is fine: the store is the truth. Losses
//! are repaired four ways: a gap in a topic's seqs makes a connection read
//! the store; after a reconnect every connection of the node re-reads its
//! topics; at the first repair tick after a disconnect (this node may have
//! missed events) or a failed publish (other nodes may have missed this
//! node's events), the node resyncs its own connections or, once connected
//! again, tells every other node to resync theirs over `{prefix}.resync`;
//! and every repair tick a head check reads the heads of the node's
//! followed topics from the store (one query per [`HEAD_CHECK_CHUNK`]
//! topics) and resyncs a topic whose head at the previous tick is still
//! ahead of what the node has seen. The last covers an event whose
//! publishing node died between commit and bus publish, with no later event
//! on the topic: it is delivered within two repair intervals.
//!
//! Control messages travel on the bus too: a revocation stored by one node
//! is announced on `{prefix}.revoke`, and every node closes the connections
//! it covers at once (the store remains the fallback, re-read every
//! heartbeat).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Bus, BusError, Control};
use crate::auth::{Revocation, RevocationKind};
use crate::event::{Encoded, Event};
use crate::hub::{Change, Changes, Hubs};
use crate::store::Store;
use crate::topic::Topic;

/// Longest wait for the NATS client to accept one publish; past it the
/// publish counts as failed (the event is committed and repaired later), so
/// an outage never holds up a publisher's answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// Longest wait for NATS to confirm a new topic subscription before the
/// first subscriber goes on without it (whatever it misses meanwhile is
/// repaired: the node is disconnected, and resyncs when it is back).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Topics whose heads one query of the head check reads.
pub const HEAD_CHECK_CHUNK: usize = 1_000;

/// What the node's NATS connection has been through, shared with the
/// connection's event callback.
#[derive(Default)]
struct Health {
    /// Whether the connection is up.
    connected: AtomicBool,
    /// Set by a disconnect or dropped messages: this node may have missed
    /// events. The next repair tick resyncs every local connection.
    missed: AtomicBool,
    /// Set by a failed publish: other nodes may have missed this node's
    /// events. The next repair tick while connected asks them to resync.
    publish_failed: AtomicBool,
    /// Messages the server dropped because this node read too slowly.
    slow_consumer_events: AtomicU64,
}

/// A topic this node receives from NATS.
struct Followed {
    /// The highest seq this node has seen of the topic: delivered from the
    /// bus, published here, or read as a head by a subscribing connection.
    seen: Arc<AtomicU64>,
    /// The topic's head in the store at the previous head check (`None`
    /// before the first).
    checked_head: Option<u64>,
    /// Receives the topic's events; aborting it unsubscribes.
    task: tokio::task::JoinHandle<()>,
}

/// The topics this node follows, shared by the bus and the hubs' interest.
struct Topics {
    client: async_nats::Client,
    prefix: String,
    hubs: Arc<Hubs>,
    followed: Mutex<HashMap<Topic, Followed>>,
}

impl Topics {
    fn subject(&self, topic: &Topic) -> String {
        format!("{}.ev.{}", self.prefix, topic.as_str())
    }

    /// Records that the node has seen `topic` up to `seq`.
    fn saw(&self, topic: &Topic, seq: u64) {
        if let Some(followed) = self.followed.lock().get(topic) {
            followed.seen.fetch_max(seq, Ordering::AcqRel);
        }
    }
}

impl Topics {
    /// Starts receiving `topic`; `ready` turns `true` once NATS has the
    /// subscription.
    fn start(&self, topic: Topic, ready: watch::Sender<bool>) {
        let seen = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(follow(
            self.client.clone(),
            self.subject(&topic),
            topic.clone(),
            self.hubs.clone(),
            seen.clone(),
            ready,
        ));
        let previous = self.followed.lock().insert(
            topic,
            Followed {
                seen,
                checked_head: None,
                task,
            },
        );
        if let Some(previous) = previous {
            previous.task.abort();
        }
    }

    /// Stops receiving `topic`.
    fn stop(&self, topic: &Topic) {
        if let Some(followed) = self.followed.lock().remove(topic) {
            followed.task.abort();
        }
    }
}

/// Subscribes and unsubscribes as the hubs' interest changes, in order.
async fn follow_interest(mut changes: Changes, topics: Arc<Topics>) {
    while let Some(change) = changes.recv().await {
        match change {
            Change::Start(topic, ready) => topics.start(topic, ready),
            Change::Stop(topic) => topics.stop(&topic),
            Change::Seen(topic, seq) => topics.saw(&topic, seq),
        }
    }
}

/// Subscribes to one topic's subject, says when NATS has the subscription,
/// then hands every event received to the hubs until aborted (dropping the
/// subscriber unsubscribes).
async fn follow(
    client: async_nats::Client,
    subject: String,
    topic: Topic,
    hubs: Arc<Hubs>,
    seen: Arc<AtomicU64>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut subscriber = loop {
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(subject.clone())).await {
            Ok(Ok(subscriber)) => break subscriber,
            Ok(Err(e)) => tracing::warn!(%topic, error = %e, "NATS subscribe failed; retrying"),
            Err(_) => tracing::warn!(%topic, "NATS subscribe not accepted in time; retrying"),
        }
        // Subscribers go on meanwhile; the topic is re-read once subscribed.
        ready.send_replace(true);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    if *ready.borrow() {
        hubs.resync_topics(vec![topic.clone()]);
    }
    // The round trip makes sure the server has the subscription: every
    // event published after this reaches the node.
    if tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::debug!(%topic, "NATS flush not confirmed in time; going on");
    }
    ready.send_replace(true);
    while let Some(message) = subscriber.next().await {
        match decode(&message.payload) {
            Some(encoded) if encoded.topic == topic => {
                seen.fetch_max(encoded.seq, Ordering::AcqRel);
                let span = crate::telemetry::received(&encoded, message.headers.as_ref());
                span.in_scope(|| hubs.deliver(Arc::new(encoded)));
            }
            _ => tracing::warn!(
                subject = %message.subject,
                "ignoring a NATS message that is not a Herald event of its subject"
            ),
        }
    }
}

/// The NATS bus of a node in a cluster.
pub struct NatsBus {
    client: async_nats::Client,
    prefix: String,
    hubs: Arc<Hubs>,
    topics: Arc<Topics>,
    health: Arc<Health>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NatsBus {
    /// Connects to `url` (in the background, retrying, so nodes may start
    /// before NATS); receives the topics `interest` (the hubs' interest)
    /// asks for and delivers their events to `hubs`; hands the revocations
    /// other nodes announce to `control`; and starts a repair check (with
    /// the head check against `store`) every `repair_interval`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hubs: Arc<Hubs>,
        interest: Changes,
        control: Arc<dyn Control>,
        store: Arc<dyn Store>,
        repair_interval: Duration,
    ) -> Result<NatsBus, BusError> {
        let health = Arc::new(Health::default());
        let callback_health = health.clone();
        let callback_hubs = hubs.clone();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .no_echo()
            .max_reconnects(None)
            .name("herald")
            .event_callback(move |event| {
                on_event(&callback_health, &callback_hubs, event);
                std::future::ready(())
            })
            .connect(url)
            .await
            .map_err(|e| BusError(format!("connecting to NATS at {url}: {e}")))?;
        let resyncs = client
            .subscribe(format!("{prefix}.resync"))
            .await
            .map_err(|e| BusError(format!("subscribing to {prefix}.resync: {e}")))?;
        let revocations = client
            .subscribe(format!("{prefix}.revoke"))
            .await
            .map_err(|e| BusError(format!("subscribing to {prefix}.revoke: {e}")))?;
        let topics = Arc::new(Topics {
            client: client.clone(),
            prefix: prefix.to_owned(),
            hubs: hubs.clone(),
            followed: Mutex::new(HashMap::new()),
        });
        let interest_follower = tokio::spawn(follow_interest(interest, topics.clone()));
        let resync_receiver = tokio::spawn(receive_resyncs(resyncs, hubs.clone()));
        let revocation_receiver = tokio::spawn(receive_revocations(revocations, control));
        let repairer = tokio::spawn(repair_periodically(
            client.clone(),
            format!("{prefix}.resync"),
            health.clone(),
            topics.clone(),
            store,
            repair_interval,
        ));
        Ok(NatsBus {
            client,
            prefix: prefix.to_owned(),
            hubs,
            topics,
            health,
            tasks: vec![
                interest_follower,
                resync_receiver,
                revocation_receiver,
                repairer,
            ],
        })
    }

    fn failed(&self, reason: String) -> BusError {
        self.health.publish_failed.store(true, Ordering::Release);
        BusError(reason)
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for followed in self.topics.followed.lock().values() {
            followed.task.abort();
        }
    }
}

/// A revocation as it travels between nodes.
#[derive(Serialize, Deserialize)]
struct RevocationMessage {
    kind: String,
    value: String,
    revoked_at_secs: u64,
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        for event in events {
            self.hubs.deliver(event.encode());
            self.topics.saw(&event.topic, event.seq);
        }
        if !self.healthy() {
            return Err(self.failed("NATS is not connected".into()));
        }
        for event in events {
            let subject = self.topics.subject(&event.topic);
            let payload = Bytes::from(event.to_json());
            // The publisher's trace travels as a `traceparent` header.
            let publish = async {
                match crate::telemetry::trace::nats_headers() {
                    Some(headers) => {
                        self.client
                            .publish_with_headers(subject, headers, payload)
                            .await
                    }
                    None => self.client.publish(subject, payload).await,
                }
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.failed(format!("NATS publish: {e}"))),
                Err(_) => {
                    return Err(self.failed(format!(
                        "NATS publish not accepted within {PUBLISH_TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.health.connected.load(Ordering::Acquire)
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn announce_revocation(&self, revocation: &Revocation) -> Result<(), BusError> {
        let message = RevocationMessage {
            kind: revocation.kind.as_str().to_owned(),
            value: revocation.value.clone(),
            revoked_at_secs: revocation.revoked_at_secs,
        };
        let payload = serde_json::to_vec(&message)
            .map_err(|e| BusError(format!("encoding a revocation: {e}")))?;
        let subject = format!("{}.revoke", self.prefix);
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            self.client.publish(subject, payload.into()).await?;
            self.client.flush().await?;
            Ok::<(), async_nats::Error>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError(format!("announcing a revocation: {e}"))),
            Err(_) => Err(BusError(format!(
                "announcing a revocation: not accepted within {PUBLISH_TIMEOUT:?}"
            ))),
        }
    }
}

fn on_event(health: &Health, hubs: &Hubs, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!("NATS connected; resyncing local connections from the store");
            health.connected.store(true, Ordering::Release);
            crate::telemetry::metrics::bus_repair("reconnect", 1);
            hubs.resync_all();
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("NATS disconnected; events from other nodes wait for the reconnect");
            health.connected.store(false, Ordering::Release);
            health.missed.store(true, Ordering::Release);
        }
        async_nats::Event::SlowConsumer(_) => {
            crate::telemetry::metrics::bus_slow_consumer();
            let count = health.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
            // Dropped messages show up as seq gaps and are read from the
            // store; a power-of-two log keeps a storm from flooding the log.
            if count.is_power_of_two() {
                tracing::warn!(
                    slow_consumer_events = count,
                    "NATS dropped messages for this node (slow consumer)"
                );
            }
            health.missed.store(true, Ordering::Release);
        }
        async_nats::Event::Closed => {
            health.connected.store(false, Ordering::Release);
            tracing::error!("NATS connection closed");
        }
        other => tracing::info!(event = %other, "NATS event"),
    }
}

/// What a node reads of an event it receives: enough to route it.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
}

/// Decodes an event JSON object from the bus.
fn decode(payload: &[u8]) -> Option<Encoded> {
    let head: Head<'_> = serde_json::from_slice(payload).ok()?;
    let topic = Topic::parse(&head.topic).ok()?;
    let time_ms = chrono::DateTime::parse_from_rfc3339(&head.time)
        .ok()?
        .timestamp_millis();
    Some(Encoded::new(topic, head.seq, time_ms, payload.to_vec()))
}

/// Resyncs every local connection when another node asks (after its
/// publishes failed).
async fn receive_resyncs(mut subscriber: async_nats::Subscriber, hubs: Arc<Hubs>) {
    while subscriber.next().await.is_some() {
        tracing::info!("another node's bus publish failed; resyncing local connections");
        crate::telemetry::metrics::bus_repair("peer_request", 1);
        hubs.resync_all();
    }
}

/// Every `interval`: resyncs local connections if this node may have missed
/// events, and asks the other nodes to resync if they may have missed this
/// node's events (once NATS takes the request).
async fn repair_periodically(
    client: async_nats::Client,
    resync_subject: String,
    health: Arc<Health>,
    topics: Arc<Topics>,
    store: Arc<dyn Store>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if health.missed.swap(false, Ordering::AcqRel) {
            tracing::info!("NATS was away or dropped messages; resyncing local connections");
            crate::telemetry::metrics::bus_repair("missed", 1);
            topics.hubs.resync_all();
        }
        if health.connected.load(Ordering::Acquire)
            && health.publish_failed.swap(false, Ordering::AcqRel)
        {
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                client.publish(resync_subject.clone(), Bytes::new()).await?;
                client.flush().await?;
                Ok::<(), async_nats::Error>(())
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                // Try again at the next tick.
                health.publish_failed.store(true, Ordering::Release);
            } else {
                tracing::info!("asked the other nodes to resync after failed bus publishes");
            }
        }
        check_heads(&topics, &*store).await;
    }
}

/// Reads the store's heads of every followed topic, [`HEAD_CHECK_CHUNK`]
/// at a time, and resyncs the topics whose head at the previous check is
/// still ahead of what the node has seen: their events were committed a
/// whole interval ago and the bus never brought them.
async fn check_heads(topics: &Topics, store: &dyn Store) {
    let followed: Vec<Topic> = topics.followed.lock().keys().cloned().collect();
    let mut behind = Vec::new();
    for chunk in followed.chunks(HEAD_CHECK_CHUNK) {
        let heads = match store.heads(chunk).await {
            Ok(heads) => heads,
            Err(e) => {
                tracing::warn!(error = %e, "head check: reading heads failed; next tick retries");
                return;
            }
        };
        let mut map = topics.followed.lock();
        for (topic, head) in chunk.iter().zip(heads) {
            // Gone meanwhile: its subscribers left.
            let Some(followed) = map.get_mut(topic) else {
                continue;
            };
            if let Some(previous) = followed.checked_head
                && previous > followed.seen.load(Ordering::Acquire)
            {
                // The resync reads at least up to `previous`.
                followed.seen.fetch_max(previous, Ordering::AcqRel);
                behind.push(topic.clone());
            }
            followed.checked_head = Some(head);
        }
    }
    if !behind.is_empty() {
        tracing::info!(
            topics = behind.len(),
            "head check: events the bus did not bring; resyncing those topics from the store"
        );
        crate::telemetry::metrics::bus_repair("head_check", behind.len() as u64);
        topics.hubs.resync_topics(behind);
    }
}

/// Applies the revocations other nodes announce.
async fn receive_revocations(mut subscriber: async_nats::Subscriber, control: Arc<dyn Control>) {
    while let Some(message) = subscriber.next().await {
        let decoded = serde_json::from_slice::<RevocationMessage>(&message.payload)
            .ok()
            .and_then(|m| {
                Some(Revocation {
                    kind: m.kind.parse::<RevocationKind>().ok()?,
                    value: m.value,
                    revoked_at_secs: m.revoked_at_secs,
                })
            });
        match decoded {
            Some(revocation) => control.revoked(revocation),
            None => tracing::warn!("ignoring a malformed revocation message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn a_received_event_decodes_to_the_same_encoding() {
        let event = Event {
            topic: Topic::parse("orders.42").expect("valid"),
            seq: 7,
            id: "a".into(),
            kind: Some("created".into()),
            time_ms: 1_795_600_800_123,
            data: RawValue::from_string(r#"{"x":"\"}"}"#.into()).expect("valid json"),
        };
        let sent = event.encode();
        let got = decode(&event.to_json()).expect("decodes");
        assert_eq!(got.topic, sent.topic);
        assert_eq!(got.seq, 7);
        assert_eq!(got.time_ms, sent.time_ms);
        assert_eq!(got.json, sent.json);
        assert_eq!(got.ws_frame, sent.ws_frame);
    }

    #[test]
    fn foreign_messages_do_not_decode() {
        assert!(decode(b"hello").is_none());
        assert!(
            decode(br#"{"topic":"bad topic","seq":1,"time":"2026-11-24T10:00:00.000Z"}"#).is_none()
        );
    }
}
