//! What a publisher is told about each event.

use serde::Serialize;

use crate::topic::Topic;

/// The answer for one event.
#[derive(Debug, Serialize)]
pub struct Receipt {
    pub topic: Topic,
    pub seq: u64,
    pub id: String,
    pub time: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The answer to a publish request.
#[derive(Debug)]
pub struct Published {
    /// One receipt per input event, in input order.
    pub receipts: Vec<Receipt>,
    /// Whether the body was an array.
    pub batch: bool,
    /// Whether anything new was stored.
    pub created: bool,
}
