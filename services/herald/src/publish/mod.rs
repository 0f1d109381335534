//! Publishing: a request body becomes events ([`parse`]), each checked
//! against the publisher's permissions ([`authorize`]), committed durably by
//! the group [`committer`], and answered with a [`Receipt`] per event.
//!
//! # The ordering rule
//!
//! An event is committed to the store before anything else sees it: the
//! store assigns its seq, and a publisher's `201` means durable. Only then
//! does the committer hand the new events to the bus, in seq order per
//! topic, before it answers the publisher. A topic always goes through the
//! same committer writer, so subscribers see a topic's events in order
//! instead of each publish racing the others to the bus. The bus may still
//! lose an event (it is a fast path, never the truth); a subscriber that
//! sees a gap in seqs reads the missing events from the store.

pub mod committer;
pub mod parse;
pub mod receipt;

use std::sync::Arc;

use tracing::Instrument as _;

use crate::auth::{AuthError, Principal};
use crate::event::{NewEvent, format_time_ms};
use crate::hub::Hubs;
use crate::store::{Appended, StoreError};
pub use committer::{Committer, CommitterSettings};
pub use parse::parse;
pub use receipt::{Published, Receipt};

/// Publish limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `data` JSON text of one event.
    pub max_data_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
}

/// Why a publish was refused or failed. The HTTP API maps each to its code
/// and status in one table (`http::error`).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// The body, an event's data or a batch is over a limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// An event is not shaped as the contract says.
    #[error("{0}")]
    InvalidEvent(String),
    /// An event's topic is not a topic name.
    #[error("{0}")]
    InvalidTopic(String),
    /// The publisher may not publish to a topic.
    #[error("{0}")]
    Forbidden(#[from] AuthError),
    /// The store could not commit (or could not confirm the commit).
    #[error("{0}")]
    Store(Arc<StoreError>),
}

/// Checks that `principal` may publish to every topic of `events`.
pub fn authorize(principal: &Principal, events: &[NewEvent]) -> Result<(), PublishError> {
    let mut refused: Vec<&str> = events
        .iter()
        .filter(|e| !principal.may_publish(&e.topic))
        .map(|e| e.topic.as_str())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    refused.sort_unstable();
    refused.dedup();
    Err(AuthError::Forbidden(format!(
        "the token may not publish to {}",
        refused.join(", ")
    ))
    .into())
}

/// Commits `events`; the committer hands the new ones to the bus, in order.
pub async fn commit(
    committer: &Committer,
    events: Vec<NewEvent>,
) -> Result<Vec<(NewEvent, Appended)>, PublishError> {
    committer.append(events).await.map_err(PublishError::Store)
}

/// The whole publish path after authentication: parse, authorize, keep pace
/// with fan-out, commit.
pub async fn publish(
    principal: &Principal,
    body: &[u8],
    limits: Limits,
    committer: &Committer,
    hubs: &Hubs,
) -> Result<Published, PublishError> {
    let (events, batch) = {
        let _validate = tracing::info_span!("publish.validate").entered();
        let (events, batch) = parse(body, limits)?;
        authorize(principal, &events)?;
        (events, batch)
    };
    tracing::Span::current().record("events", events.len());
    // A node whose connections are far behind takes new events at the pace
    // it delivers them (never in the normal case: the lag is then a few
    // milliseconds). Only a publish that will be committed waits.
    let waited = hubs.pace().await;
    if !waited.is_zero() {
        crate::telemetry::metrics::publish_paced(waited);
    }
    let outcome = commit(committer, events)
        .instrument(tracing::info_span!("publish.commit"))
        .await?;
    let created = outcome.iter().any(|(_, a)| !a.duplicate);
    let receipts = outcome
        .into_iter()
        .map(|(e, a)| Receipt {
            topic: e.topic,
            seq: a.seq,
            id: a.id,
            time: format_time_ms(a.time_ms),
            duplicate: a.duplicate,
        })
        .collect();
    Ok(Published {
        receipts,
        batch,
        created,
    })
}
