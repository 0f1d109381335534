//! Publishing through `POST /v1/publish`: one keep-alive HTTP/1.1 client
//! per publisher, event bodies that carry their send time, publishers that
//! keep a rate (or go flat out) and count what they got, the end events
//! that close a run, and the kinds failures are counted by.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize, Serializer};
use tokio::task::JoinSet;

use super::sampling::now_ns;
use crate::report::latency_histogram;
use crate::target::Target;

/// A publisher waits this long after a failed request.
pub(crate) const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long after their deadline publishers may take to stop.
pub(crate) const STOP_SLACK: Duration = Duration::from_secs(5);
/// Attempts at publishing the end event.
const END_ATTEMPTS: usize = 3;
/// Most events in one publish request (the API's batch limit).
const MAX_BATCH: usize = 1_000;

/// A publishing rate: `max` (flat out: each publisher sends its next event
/// as soon as the previous one is answered) or events per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSec(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r <= 1e7 => Ok(Rate::PerSec(r)),
            _ => Err(format!(
                "expected `max` or events per second (0 < r <= 1e7), got {s:?}"
            )),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSec(r) => write!(f, "{r}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::PerSec(r) => s.serialize_f64(*r),
        }
    }
}

/// The target's token as a (sensitive) `Authorization` header.
pub(crate) fn authorization(target: &Target) -> anyhow::Result<HeaderValue> {
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", target.token.expose()))
        .context("the token is not a valid header value")?;
    authorization.set_sensitive(true);
    Ok(authorization)
}

/// What the publishers of a run are to publish.
pub(crate) struct Plan {
    /// Event n goes to `topics[n % len]`.
    pub(crate) topics: Vec<String>,
    pub(crate) rate: Rate,
    /// Events to publish, over all topics.
    pub(crate) events: u64,
    /// Publishing stops this long after it started, whatever is left.
    pub(crate) duration: Duration,
    /// Size of each event's `data`.
    pub(crate) data_bytes: usize,
}

/// What every publisher of a run shares.
pub(crate) struct PubShared {
    pub(crate) url: String,
    pub(crate) authorization: HeaderValue,
    /// Event n goes to `topics[n % len]`.
    pub(crate) topics: Vec<String>,
    pub(crate) rate: Rate,
    pub(crate) events: u64,
    pub(crate) next: AtomicU64,
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) out_of_time: AtomicBool,
    pub(crate) pad: String,
    pub(crate) data_bytes: usize,
}

impl PubShared {
    /// Publishing `plan` to the target's first node, from `start`.
    pub(crate) fn new(
        target: &Target,
        authorization: HeaderValue,
        plan: Plan,
        start: Instant,
    ) -> PubShared {
        PubShared {
            url: format!("{}/v1/publish", target.base_url),
            authorization,
            topics: plan.topics,
            rate: plan.rate,
            events: plan.events,
            next: AtomicU64::new(0),
            start,
            deadline: start + plan.duration,
            out_of_time: AtomicBool::new(false),
            pad: "x".repeat(plan.data_bytes),
            data_bytes: plan.data_bytes,
        }
    }

    /// `duration` or `events`: what ended publishing.
    pub(crate) fn stopped_by(&self) -> &'static str {
        if self.out_of_time.load(Ordering::Relaxed) {
            "duration"
        } else {
            "events"
        }
    }
}

/// What one publisher counted.
pub(crate) struct PubTally {
    pub(crate) published: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) last_answer: Option<Instant>,
}

/// What the publishers of a run counted together.
pub(crate) struct PubTotals {
    pub(crate) published: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latency: Histogram<u64>,
    /// The last answer any publisher had (`start` when none had one).
    pub(crate) last_answer: Instant,
}

impl PubTotals {
    /// The sum of `tallies`, from publishing that began at `start`.
    pub(crate) fn of(tallies: &[PubTally], start: Instant) -> PubTotals {
        let mut totals = PubTotals {
            published: 0,
            errors: BTreeMap::new(),
            latency: latency_histogram(),
            last_answer: start,
        };
        for t in tallies {
            totals.published += t.published;
            totals
                .latency
                .add(&t.latency)
                .expect("every histogram has the same bounds");
            for (kind, n) in &t.errors {
                *totals.errors.entry(kind.clone()).or_default() += n;
            }
            if let Some(at) = t.last_answer {
                totals.last_answer = totals.last_answer.max(at);
            }
        }
        totals
    }
}

/// Waits for every publisher in `pubs` to stop, until `stop_by`; their
/// tallies. Dropping the set on the way out aborts the stragglers.
pub(crate) async fn join_publishers<T: 'static>(
    mut pubs: JoinSet<T>,
    stop_by: Instant,
) -> anyhow::Result<Vec<T>> {
    let mut tallies = Vec::with_capacity(pubs.len());
    loop {
        match tokio::time::timeout_at(stop_by.into(), pubs.join_next()).await {
            Ok(Some(joined)) => tallies.push(joined.context("a publisher panicked")?),
            Ok(None) => break,
            Err(_) => bail!("publishers were still running {STOP_SLACK:?} after their deadline"),
        }
    }
    Ok(tallies)
}

/// The fields of a receipt the check needs.
#[derive(Deserialize)]
pub(crate) struct Receipt {
    pub(crate) topic: String,
    pub(crate) seq: u64,
}

/// The JSON body of event `n`, sent at `sent_ns`: `data` is padded to
/// `data_bytes` (or just over, when the fields alone are longer).
pub(crate) fn event_body(
    topic: &str,
    sent_ns: u64,
    n: u64,
    pad: &str,
    data_bytes: usize,
) -> String {
    let bare = format!(r#"{{"t":{sent_ns},"n":{n},"pad":""}}"#);
    let fill = data_bytes.saturating_sub(bare.len()).min(pad.len());
    format!(
        r#"{{"topic":"{topic}","data":{{"t":{sent_ns},"n":{n},"pad":"{}"}}}}"#,
        &pad[..fill]
    )
}

/// A transport failure's kind.
pub(crate) fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

/// One client holding one keep-alive HTTP/1.1 connection.
pub(crate) fn http_client(request_timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(request_timeout)
        .build()
        .context("building an HTTP client")
}

/// Posts a JSON `body` (one event or an array); the answer's body when it
/// is `201`, else the error's kind.
async fn post(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    body: String,
) -> Result<impl AsRef<[u8]>, String> {
    let response = client
        .post(url)
        .header(AUTHORIZATION, authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| classify(&e).to_owned())?;
    if status != StatusCode::CREATED {
        return Err(status.as_str().to_owned());
    }
    Ok(body)
}

/// Publishes `body` once; the receipt's seq, or the error's kind.
pub(crate) async fn publish_one(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    topic: &str,
    body: String,
) -> Result<u64, String> {
    let body = post(client, url, authorization, body).await?;
    match serde_json::from_slice::<Receipt>(body.as_ref()) {
        Ok(receipt) if receipt.topic == topic => Ok(receipt.seq),
        _ => Err("unreadable_answer".to_owned()),
    }
}

/// Publishes a JSON array of events; the receipts, or the error's kind.
async fn publish_batch(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    body: String,
) -> Result<Vec<Receipt>, String> {
    let body = post(client, url, authorization, body).await?;
    serde_json::from_slice(body.as_ref()).map_err(|_| "unreadable_answer".to_owned())
}

/// One publisher: takes the next event number, waits for its time (at a
/// set rate), publishes it with the send time in `data`, waits for the
/// answer; until every event is taken or the time is up.
pub(crate) async fn publisher(shared: Arc<PubShared>, client: reqwest::Client) -> PubTally {
    let mut tally = PubTally {
        published: 0,
        errors: BTreeMap::new(),
        latency: latency_histogram(),
        last_answer: None,
    };
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.events {
            break;
        }
        if let Rate::PerSec(rate) = shared.rate {
            let due = shared.start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= shared.deadline {
            shared.out_of_time.store(true, Ordering::Relaxed);
            break;
        }
        let sent_ns = now_ns();
        let topic = &shared.topics[(n % shared.topics.len() as u64) as usize];
        let body = event_body(topic, sent_ns, n, &shared.pad, shared.data_bytes);
        let sent = Instant::now();
        let answer = publish_one(&client, &shared.url, &shared.authorization, topic, body).await;
        tally.last_answer = Some(Instant::now());
        match answer {
            Ok(_) => {
                tally.published += 1;
                tally.latency.saturating_record(
                    u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                );
            }
            Err(kind) => {
                *tally.errors.entry(kind).or_default() += 1;
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

/// Publishes the end event `{"end":true}` on every topic, in batches of up
/// to 1,000 (one transaction each), a few attempts each; returns each
/// topic's end seq.
pub(crate) async fn publish_ends(
    client: &reqwest::Client,
    url: &str,
    authorization: &HeaderValue,
    topics: &[String],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut seqs = BTreeMap::new();
    for chunk in topics.chunks(MAX_BATCH) {
        let body = format!(
            "[{}]",
            chunk
                .iter()
                .map(|t| format!(r#"{{"topic":"{t}","data":{{"end":true}}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut errors = Vec::new();
        let mut done = false;
        for _ in 0..END_ATTEMPTS {
            match publish_batch(client, url, authorization, body.clone()).await {
                Ok(receipts) if receipts.len() == chunk.len() => {
                    for r in receipts {
                        seqs.insert(r.topic, r.seq);
                    }
                    done = true;
                    break;
                }
                Ok(_) => errors.push("unreadable_answer".to_owned()),
                Err(kind) => errors.push(kind),
            }
            tokio::time::sleep(ERROR_PAUSE * 10).await;
        }
        if !done {
            bail!("the end events could not be published: {errors:?}");
        }
    }
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_padded_to_the_asked_size() {
        let body = event_body("load.t", 123, 1, &"x".repeat(200), 100);
        let value: serde_json::Value = serde_json::from_str(&body).expect("the body is JSON");
        assert_eq!(value["data"].to_string().len(), 100);
    }

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("100".parse::<Rate>(), Ok(Rate::PerSec(100.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
