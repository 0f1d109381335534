//! The cluster bus: committed events travel over core NATS between nodes.
//!
//! Each topic has the subject `{prefix}.ev.{topic}`; every node subscribes
//! to `{prefix}.ev.>` once, so every node receives every event (interest
//! following per topic is a later refinement). The connection is made
//! without echo: a node hands its own events to its hubs directly, so its
//! local subscribers are served even while NATS is away.
//!
//! Core NATS is at-most-once, which is fine: the store is the truth. Losses
//! are repaired three ways: a gap in a topic's seqs makes a connection read
//! the store; after a reconnect every connection of the node re-reads its
//! topics; and at the first heartbeat tick after a disconnect (this node may
//! have missed events) or a failed publish (other nodes may have missed
//! this node's events), the node resyncs its own connections or, once
//! connected again, tells every other node to resync theirs over
//! `{prefix}.resync`. That covers the last events of a topic that no later
//! event follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::{Bus, BusError, Sink};
use crate::event::{Encoded, Event};
use crate::hub::Hubs;
use crate::topic::Topic;

/// Longest wait for the NATS client to accept one publish; past it the
/// publish counts as failed (the event is committed and repaired later), so
/// an outage never holds up a publisher's answer.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

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

/// The NATS bus of a node in a cluster.
pub struct NatsBus {
    client: async_nats::Client,
    prefix: String,
    hubs: Arc<Hubs>,
    health: Arc<Health>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NatsBus {
    /// Connects to `url` (in the background, retrying, so nodes may start
    /// before NATS), subscribes to every topic under `prefix`, and starts a
    /// repair check every `repair_interval`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hubs: Arc<Hubs>,
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
        let subscriber = client
            .subscribe(format!("{prefix}.ev.>"))
            .await
            .map_err(|e| BusError(format!("subscribing to {prefix}.ev.>: {e}")))?;
        let resyncs = client
            .subscribe(format!("{prefix}.resync"))
            .await
            .map_err(|e| BusError(format!("subscribing to {prefix}.resync: {e}")))?;
        let receiver = tokio::spawn(receive(subscriber, hubs.clone()));
        let resync_receiver = tokio::spawn(receive_resyncs(resyncs, hubs.clone()));
        let repairer = tokio::spawn(repair_periodically(
            client.clone(),
            format!("{prefix}.resync"),
            health.clone(),
            hubs.clone(),
            repair_interval,
        ));
        Ok(NatsBus {
            client,
            prefix: prefix.to_owned(),
            hubs,
            health,
            tasks: vec![receiver, resync_receiver, repairer],
        })
    }

    fn subject(&self, topic: &Topic) -> String {
        format!("{}.ev.{}", self.prefix, topic.as_str())
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
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        for event in events {
            self.hubs.deliver(event.encode());
        }
        if !self.healthy() {
            return Err(self.failed("NATS is not connected".into()));
        }
        for event in events {
            let subject = self.subject(&event.topic);
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
}

fn on_event(health: &Health, hubs: &Hubs, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!("NATS connected; resyncing local connections from the store");
            health.connected.store(true, Ordering::Release);
            hubs.resync_all();
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("NATS disconnected; events from other nodes wait for the reconnect");
            health.connected.store(false, Ordering::Release);
            health.missed.store(true, Ordering::Release);
        }
        async_nats::Event::SlowConsumer(_) => {
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

async fn receive(mut subscriber: async_nats::Subscriber, hubs: Arc<Hubs>) {
    while let Some(message) = subscriber.next().await {
        match decode(&message.payload) {
            Some(encoded) => {
                let span = crate::telemetry::received(&encoded, message.headers.as_ref());
                span.in_scope(|| hubs.deliver(Arc::new(encoded)));
            }
            None => tracing::warn!(
                subject = %message.subject,
                "ignoring a NATS message that is not a Herald event"
            ),
        }
    }
    tracing::error!("the NATS subscription ended");
}

/// Resyncs every local connection when another node asks (after its
/// publishes failed).
async fn receive_resyncs(mut subscriber: async_nats::Subscriber, hubs: Arc<Hubs>) {
    while subscriber.next().await.is_some() {
        tracing::info!("another node's bus publish failed; resyncing local connections");
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
    hubs: Arc<Hubs>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if health.missed.swap(false, Ordering::AcqRel) {
            tracing::info!("NATS was away or dropped messages; resyncing local connections");
            hubs.resync_all();
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
