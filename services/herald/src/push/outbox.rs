//! The push scheduler, one per node: every `HERALD_PUSH_POLL_MS` it turns
//! the store's feed of commits into due pushes, then claims the pushes
//! that are due and sends each (see `store::outbox` for how the store
//! keeps this exactly once across crashes and nodes).
//!
//! A claimed push is checked against its subject's acknowledgments first
//! (this node's pending ones are written before the read): a push whose
//! events are all acknowledged is cancelled. Otherwise its message is made
//! (the newest event's type and `data.push` title and body, the subject's
//! unread count) and sent; the answer decides: settle, retry with backoff
//! (`Retry-After` wins when longer), give up after `HERALD_PUSH_MAX_ATTEMPTS`
//! sends (a dead letter), or delete a device its service says is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tracing::Instrument as _;

use super::{Message, Outcome, Platform, Push, Target};
use crate::auth::Pattern;
use crate::store::{Candidate, Claimed, Due, FeedRow};
use crate::topic::Topic;

/// Feed rows one scheduling transaction takes.
const FEED_BATCH: usize = 500;
/// Longest backoff between two sends of one push.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Push {
    /// Starts the scheduler; it runs until the task is aborted.
    pub fn spawn_scheduler(self: &Arc<Push>) -> tokio::task::JoinHandle<()> {
        let push = self.clone();
        tokio::spawn(async move {
            if push.store.kind() == "sqlite" {
                // One node: no claim of another node can be under way.
                match push.store.release_leases().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(pushes = n, "pushes claimed before a restart are due again")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "releasing push leases failed"),
                }
            }
            let mut tick = tokio::time::interval(Duration::from_millis(push.settings.push_poll_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                push.tick().await;
            }
        })
    }

    /// One round: schedule the whole feed, then send what is due.
    pub async fn tick(&self) {
        self.schedule().await;
        self.send_due().await;
    }

    /// Turns the feed into due pushes, a batch per transaction.
    async fn schedule(&self) {
        let settings = self.settings.clone();
        let planner = move |feed: &[FeedRow], candidates: &[Candidate]| {
            plan(feed, candidates, |topic| settings.delay(topic))
        };
        loop {
            match self.store.schedule(FEED_BATCH, &planner).await {
                Ok(done) => {
                    crate::telemetry::push::scheduled(done.due, done.collapsed);
                    if done.feed_rows < FEED_BATCH {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduling pushes failed; will retry");
                    return;
                }
            }
        }
    }

    /// Claims due pushes and sends them, a batch at a time, while full
    /// batches come.
    async fn send_due(&self) {
        let limit = self.settings.push_concurrency;
        let lease = millis(Duration::from_secs(self.settings.push_lease_secs));
        let quiet = millis(Duration::from_secs(self.settings.push_quiet_secs));
        loop {
            let now = crate::event::now_ms();
            let claimed = match self.store.claim(now, limit, now + lease, quiet).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming due pushes failed; will retry");
                    return;
                }
            };
            let full = claimed.len() >= limit;
            futures_util::stream::iter(claimed)
                .for_each_concurrent(limit, |c| self.deliver(c))
                .await;
            if !full {
                return;
            }
        }
    }

    /// The next due time of `topic`'s pushes from now.
    fn next_due(&self, topic: &Topic) -> i64 {
        crate::event::now_ms() + millis(self.settings.delay(topic))
    }

    /// Checks, sends and settles one claimed push.
    async fn deliver(&self, c: Claimed) {
        let Ok(topic) = Topic::parse(&c.topic) else {
            let _ = self
                .store
                .settle(&c.device_id, &c.topic, c.last_seq, 0)
                .await;
            return;
        };
        let acked = match self
            .acks
            .positions(&c.sub, std::slice::from_ref(&topic))
            .await
        {
            Ok(cursor) => cursor.get(&topic).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "reading acknowledgments for a push failed; will retry");
                self.release(
                    &c,
                    c.attempts,
                    Duration::from_millis(self.settings.push_backoff_ms),
                )
                .await;
                return;
            }
        };
        if acked >= c.last_seq {
            crate::telemetry::push::cancelled();
            self.settle(&c, &topic).await;
            if c.quiet_set > 0
                && let Err(e) = self
                    .store
                    .restore_quiet(&c.device_id, c.quiet_set, c.quiet_was)
                    .await
            {
                tracing::debug!(error = %e, "restoring a device's quiet time failed");
            }
            return;
        }
        let Some(platform) = Platform::parse(&c.platform) else {
            self.give_up(&c, &topic, "the device's platform is unknown")
                .await;
            return;
        };
        let Some(provider) = self.providers.get(&platform).cloned() else {
            self.give_up(&c, &topic, "this node has no credentials for the platform")
                .await;
            return;
        };
        let message = self.message(&c, &topic, acked).await;
        let span = tracing::info_span!(
            "push.send",
            platform = platform.as_str(),
            topic = c.topic.as_str(),
            seq = c.last_seq,
            attempt = c.attempts + 1,
            outcome = tracing::field::Empty,
        );
        let target = Target {
            address: &c.address,
            keys: c.keys.as_deref(),
        };
        let outcome = provider
            .send(target, &message)
            .instrument(span.clone())
            .await;
        span.record("outcome", outcome.label());
        match outcome {
            Outcome::Sent => {
                let since = (crate::event::now_ms() - c.first_time_ms) as f64 / 1000.0;
                crate::telemetry::push::sent(platform.as_str(), since);
                self.settle(&c, &topic).await;
            }
            Outcome::Gone(reason) => {
                tracing::info!(
                    platform = platform.as_str(),
                    reason,
                    "the push service says the device is gone; deleting it"
                );
                match self.store.delete_device(&c.device_id, None).await {
                    Ok(_) => crate::telemetry::push::pruned(platform.as_str()),
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting a gone device failed; the next push will try again");
                        self.release(
                            &c,
                            c.attempts,
                            Duration::from_millis(self.settings.push_backoff_ms),
                        )
                        .await;
                    }
                }
            }
            Outcome::Retry { after, reason } => {
                crate::telemetry::push::failed(platform.as_str());
                let attempts = c.attempts + 1;
                if attempts >= self.settings.push_max_attempts {
                    self.give_up(&c, &topic, &reason).await;
                    return;
                }
                let backoff = Duration::from_millis(self.settings.push_backoff_ms)
                    .saturating_mul(1 << (attempts - 1).min(20))
                    .min(MAX_BACKOFF);
                let wait = after.map_or(backoff, |a| a.max(backoff));
                tracing::info!(
                    platform = platform.as_str(),
                    reason,
                    attempts,
                    wait_ms = millis(wait),
                    "push failed; will retry"
                );
                self.release(&c, attempts, wait).await;
            }
            Outcome::Failed(reason) => {
                crate::telemetry::push::failed(platform.as_str());
                self.give_up(&c, &topic, &reason).await;
            }
        }
    }

    /// The message of a claimed push: the newest event's type and title
    /// and body, the unacknowledged events, the subject's unread count.
    async fn message(&self, c: &Claimed, topic: &Topic, acked: u64) -> Message {
        let event = self
            .store
            .read_since(topic, c.last_seq.saturating_sub(1), 1)
            .await
            .ok()
            .and_then(|read| read.events.into_iter().find(|e| e.seq == c.last_seq));
        let (kind, title, body) = match &event {
            Some(event) => {
                let data: serde_json::Value =
                    serde_json::from_str(event.data.get()).unwrap_or_default();
                let text = |key: &str, max: usize| {
                    data["push"][key]
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .map(|t| super::truncate(t, max))
                };
                (
                    event.kind.clone(),
                    text("title", super::MAX_TITLE_BYTES),
                    text("body", super::MAX_BODY_BYTES),
                )
            }
            None => (None, None, None),
        };
        let badge = match self.store.unread(&c.sub).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "reading the unread count failed; the badge says 0");
                0
            }
        };
        Message {
            topic: c.topic.clone(),
            seq: c.last_seq,
            kind,
            title,
            body,
            badge,
            events: c.last_seq - acked.max(c.first_seq.saturating_sub(1)),
            collapse_id: super::collapse_id(&c.topic),
        }
    }

    /// Ends a push up to its last seq; events that came meanwhile wait a
    /// new delay.
    async fn settle(&self, c: &Claimed, topic: &Topic) {
        if let Err(e) = self
            .store
            .settle(&c.device_id, &c.topic, c.last_seq, self.next_due(topic))
            .await
        {
            // Its lease runs out and it is claimed again: at least once.
            tracing::warn!(error = %e, "settling a push failed; it will be claimed again when its lease ends");
        }
    }

    /// Gives a push up (a dead letter).
    async fn give_up(&self, c: &Claimed, topic: &Topic, reason: &str) {
        crate::telemetry::push::dead_letter(&c.platform);
        tracing::warn!(
            platform = c.platform.as_str(),
            topic = c.topic.as_str(),
            seq = c.last_seq,
            attempts = c.attempts + 1,
            reason,
            "push given up (dead letter)"
        );
        self.settle(c, topic).await;
    }

    /// Releases a push to be claimed again after `wait`.
    async fn release(&self, c: &Claimed, attempts: u32, wait: Duration) {
        let due = crate::event::now_ms() + millis(wait);
        if let Err(e) = self
            .store
            .retry_later(&c.device_id, &c.topic, attempts, due)
            .await
        {
            tracing::warn!(error = %e, "releasing a push failed; it will be claimed again when its lease ends");
        }
    }
}

/// Due pushes for fed commits: for each topic and each device with a
/// filter that matches it, due `delay(topic)` after the first commit.
pub fn plan(
    feed: &[FeedRow],
    candidates: &[Candidate],
    delay: impl Fn(&Topic) -> Duration,
) -> Vec<Due> {
    let mut patterns: HashMap<&str, Option<Pattern>> = HashMap::new();
    let mut due = Vec::new();
    for row in feed {
        let at = row.time_ms + millis(delay(&row.topic));
        for c in candidates {
            let pattern = patterns
                .entry(c.filter.as_str())
                .or_insert_with(|| Pattern::compile(&c.filter, "").ok());
            if pattern.as_ref().is_some_and(|p| p.matches(&row.topic)) {
                due.push(Due {
                    device_id: c.device_id.clone(),
                    topic: row.topic.to_string(),
                    sub: c.sub.clone(),
                    first_seq: row.first_seq,
                    last_seq: row.last_seq,
                    first_time_ms: row.time_ms,
                    due_at_ms: at,
                });
            }
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fed_topics_become_due_pushes_for_matching_devices_only() {
        let feed = vec![
            FeedRow {
                topic: Topic::parse("user.7.inbox").expect("valid"),
                first_seq: 3,
                last_seq: 4,
                time_ms: 1_000,
            },
            FeedRow {
                topic: Topic::parse("news").expect("valid"),
                first_seq: 1,
                last_seq: 1,
                time_ms: 2_000,
            },
        ];
        let candidate = |device: &str, filter: &str| Candidate {
            device_id: device.into(),
            sub: "7".into(),
            filter: filter.into(),
        };
        let candidates = vec![
            candidate("d1", "user.7.>"),
            candidate("d2", "user.7.outbox"),
            candidate("d3", "news"),
        ];
        let due = plan(&feed, &candidates, |t| {
            Duration::from_secs(if t.as_str() == "news" { 60 } else { 5 })
        });
        let got: Vec<(&str, &str, u64, i64)> = due
            .iter()
            .map(|d| {
                (
                    d.device_id.as_str(),
                    d.topic.as_str(),
                    d.last_seq,
                    d.due_at_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("d1", "user.7.inbox", 4, 6_000), ("d3", "news", 1, 62_000)]
        );
    }
}
