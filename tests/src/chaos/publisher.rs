//! Publishers of the chaos run: each sends events at a steady rate to a
//! random node, every event with its own idempotency id, and retries an
//! unanswered publish with the same id on another node until it is
//! acknowledged or a bound is reached. Retried: `503`, `408` (the HTTP
//! server's answer when a request head took longer than its client request
//! timeout to arrive, as to a node paused mid-request: the request was not
//! processed, and HTTP lets a client repeat it), a connection error, a
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::rng::Rng;

/// How long one publish request may take before it is retried elsewhere.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a retry.
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_millis(300));

/// What became of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered `201`, or `200` (a repeat of an id already stored), with this seq.
    Acked { seq: u64, status: u16 },
    /// Never acknowledged within the bound; the last failure.
    GaveUp { last: String },
    /// Answered with a status that is neither success nor retryable.
    Rejected { status: u16, body: String },
}

/// One publish, over all its attempts.
#[derive(Debug, Clone)]
pub struct PublishRecord {
    pub topic: String,
    pub id: String,
    /// Requests sent (1 when the first one was acknowledged).
    pub attempts: u32,
    /// Why each retried request failed (`503`, `408`, `timeout`, `connection`).
    pub failures: Vec<String>,
    pub outcome: Outcome,
}

/// How publishers behave.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Events per second of this publisher.
    pub rate_per_sec: f64,
    /// How long one event may be retried before it is given up.
    pub retry_for: Duration,
}

/// Publishes until `stop` turns true (finishing the event in hand), then
/// returns every publish it attempted.
pub async fn run(
    index: usize,
    nodes: Arc<Vec<String>>,
    topics: Arc<Vec<String>>,
    token: String,
    settings: PublisherSettings,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> Vec<PublishRecord> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client builds");
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate_per_sec));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut records = Vec::new();
    for n in 0u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
        if *stop.borrow() {
            break;
        }
        let topic = topics[rng.below(topics.len())].clone();
        let id = format!("chaos-p{index}-{n}");
        let body = json!({"topic": topic, "id": id, "data": {"p": index, "n": n}});
        records
            .push(publish_one(&http, &nodes, &token, topic, id, &body, &settings, &mut rng).await);
    }
    records
}

/// Sends one event until it is acknowledged, refused, or `retry_for` passes.
#[allow(clippy::too_many_arguments)]
async fn publish_one(
    http: &reqwest::Client,
    nodes: &[String],
    token: &str,
    topic: String,
    id: String,
    body: &Value,
    settings: &PublisherSettings,
    rng: &mut Rng,
) -> PublishRecord {
    let started = tokio::time::Instant::now();
    let mut node = rng.below(nodes.len());
    let mut attempts = 0;
    let mut failures = Vec::new();
    loop {
        attempts += 1;
        let answer = http
            .post(format!("{}/v1/publish", nodes[node]))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        let last = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                match status {
                    200 | 201 => {
                        let seq = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|receipt| receipt["seq"].as_u64());
                        let outcome = match seq {
                            Some(seq) => Outcome::Acked { seq, status },
                            None => Outcome::Rejected {
                                status,
                                body: format!("no seq in the receipt: {text}"),
                            },
                        };
                        return PublishRecord {
                            topic,
                            id,
                            attempts,
                            failures,
                            outcome,
                        };
                    }
                    503 | 408 => {
                        failures.push(status.to_string());
                        format!("{status} {text}")
                    }
                    _ => {
                        return PublishRecord {
                            topic,
                            id,
                            attempts,
                            failures,
                            outcome: Outcome::Rejected { status, body: text },
                        };
                    }
                }
            }
            Err(error) if error.is_timeout() => {
                failures.push("timeout".into());
                "timeout".to_owned()
            }
            Err(error) => {
                failures.push("connection".into());
                format!("request failed: {error}")
            }
        };
        if started.elapsed() >= settings.retry_for {
            return PublishRecord {
                topic,
                id,
                attempts,
                failures,
                outcome: Outcome::GaveUp { last },
            };
        }
        tokio::time::sleep(rng.duration(RETRY_PAUSE.0, RETRY_PAUSE.1)).await;
        node = rng.other_than(nodes.len(), node);
    }
}
