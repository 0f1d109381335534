//! Events: what a publisher sends, what the store keeps, and the one JSON
//! encoding every transport delivers.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::topic::Topic;

/// An event accepted for publishing, before it has a seq.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Where it goes.
    pub topic: Topic,
    /// The publisher's idempotency key, or a server-made unique id.
    pub id: String,
    /// Whether the publisher chose the id. Server-made ids are 128 random
    /// bits and never repeat, so the store skips looking them up.
    pub id_given: bool,
    /// The publisher's optional event type.
    pub kind: Option<String>,
    /// Any JSON value, kept as the publisher's text.
    pub data: Box<RawValue>,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic.
    pub topic: Topic,
    /// Per-topic, gapless, from 1.
    pub seq: u64,
    /// Idempotency key.
    pub id: String,
    /// Optional event type.
    pub kind: Option<String>,
    /// Commit time, milliseconds since the epoch.
    pub time_ms: i64,
    /// The data, as JSON text.
    pub data: Box<RawValue>,
}

#[derive(Serialize)]
struct Wire<'a> {
    topic: &'a str,
    seq: u64,
    id: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    time: String,
    data: &'a RawValue,
}

impl Event {
    /// The event as the JSON object of the wire contract.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            topic: self.topic.as_str(),
            seq: self.seq,
            id: &self.id,
            kind: self.kind.as_deref(),
            time: format_time_ms(self.time_ms),
            data: &self.data,
        };
        serde_json::to_vec(&wire).expect("an event of strings, numbers and valid JSON serializes")
    }

    /// Encodes the event once, for sharing with every connection of a node.
    pub fn encode(&self) -> Arc<Encoded> {
        Arc::new(Encoded::new(
            self.topic.clone(),
            self.seq,
            self.time_ms,
            self.to_json(),
        ))
    }
}

/// An event encoded once per node and shared by every connection that
/// delivers it: the plain JSON object, and the WebSocket frame around it.
#[derive(Debug)]
pub struct Encoded {
    /// The topic.
    pub topic: Topic,
    /// The event's seq.
    pub seq: u64,
    /// Commit time, milliseconds since the epoch (the committing node's
    /// wall clock).
    pub time_ms: i64,
    /// When this node encoded it, on this node's monotonic clock: for its
    /// own events, once committed; for another node's, on arrival. Fan-out
    /// lag is measured from here, so no other node's clock, and no commit,
    /// counts in it.
    pub received: std::time::Instant,
    /// The event JSON object (SSE `data:` and poll bodies).
    pub json: Bytes,
    /// `{"op":"event",...}`: the WebSocket text frame.
    pub ws_frame: ByteString,
}

impl Encoded {
    /// Wraps an already-encoded event JSON object.
    pub fn new(topic: Topic, seq: u64, time_ms: i64, json: Vec<u8>) -> Encoded {
        debug_assert!(json.first() == Some(&b'{'));
        let mut frame = Vec::with_capacity(json.len() + 13);
        frame.extend_from_slice(br#"{"op":"event","#);
        frame.extend_from_slice(&json[1..]);
        let ws_frame = ByteString::try_from(Bytes::from(frame))
            .expect("serde_json writes UTF-8 and the prefix is ASCII");
        Encoded {
            topic,
            seq,
            time_ms,
            received: std::time::Instant::now(),
            json: Bytes::from(json),
            ws_frame,
        }
    }

    /// Size of both encodings, for queue accounting.
    pub fn bytes(&self) -> usize {
        self.json.len()
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-11-24T10:00:00.123Z`.
pub fn format_time_ms(time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(time_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_in_contract_order_and_omit_absent_type() {
        let e = Event {
            topic: Topic::parse("orders.42").expect("valid"),
            seq: 17,
            id: "ord-42".into(),
            kind: None,
            time_ms: 1_795_600_800_123,
            data: RawValue::from_string("null".into()).expect("valid json"),
        };
        let enc = e.encode();
        assert_eq!(
            std::str::from_utf8(&enc.json).expect("utf8"),
            r#"{"topic":"orders.42","seq":17,"id":"ord-42","time":"2026-11-25T10:00:00.123Z","data":null}"#
        );
        assert!(
            enc.ws_frame
                .starts_with(r#"{"op":"event","topic":"orders.42","seq":17"#)
        );
    }
}
