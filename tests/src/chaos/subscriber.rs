//! Subscribers of the chaos run, one task each, over WebSocket, SSE, long
//! polling or short polling. Each keeps its cursor (per topic, the highest
//! seq it holds, or where a server cursor or `reset` moved it), and after
//! any drop (the node died, drained, stalled, refused, or the run told it
//! to disconnect) resumes from that cursor on a random other node. It logs
//! everything it observes, in order, for the checker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;

use super::rng::Rng;
use crate::clients::{SseClient, WsEvent, WsRefusal, open_ws};

/// How long opening a connection (or an SSE answer's head) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a drop.
const RECONNECT_PAUSE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_millis(300));
/// Pause between short polls that found nothing more.
const SHORT_POLL_PAUSE: (Duration, Duration) =
    (Duration::from_millis(500), Duration::from_millis(1500));
/// Events per poll.
const POLL_LIMIT: u32 = 100;
/// Notes kept per subscriber (anything unexpected but not a delivery).
const MAX_NOTES: usize = 20;

/// How a subscriber receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPoll,
    ShortPoll,
}

impl Transport {
    /// Every transport, in the order subscribers are spread over them.
    pub const ALL: [Transport; 4] = [
        Transport::WebSocket,
        Transport::Sse,
        Transport::LongPoll,
        Transport::ShortPoll,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "long_poll",
            Transport::ShortPoll => "short_poll",
        }
    }
}

/// One thing a subscriber observed; `topic` is an index into the run's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    /// A connection (WebSocket, SSE) or poll request began, resuming from
    /// this cursor (one seq per subscribed topic, in the subscriber's order).
    Session { resume: Vec<u64> },
    /// An event was delivered.
    Event { topic: usize, seq: u64, id: String },
    /// A `reset`: events before `from` are gone.
    Reset { topic: usize, from: u64 },
    /// A server-given cursor (SSE `id:`, a poll's `cursor`) put this topic
    /// at `seq`, other than where the deliveries had put it.
    Cursor { topic: usize, seq: u64 },
    /// A delivery for a topic this subscriber did not ask for.
    Unasked { topic: String, seq: u64 },
}

/// What one subscriber saw over the whole run.
#[derive(Debug, Clone)]
pub struct SubscriberLog {
    pub index: usize,
    pub transport: Transport,
    /// Its topics (indices into the run's topics).
    pub topics: Vec<usize>,
    pub obs: Vec<Obs>,
    /// Connections or poll runs that ended, by reason.
    pub ends: BTreeMap<String, u64>,
    /// Anything unexpected that is not a delivery (an `error` frame, ...).
    pub notes: Vec<String>,
}

/// A subscriber's position, shared with the run so it can wait until every
/// subscriber has caught up.
#[derive(Debug)]
pub struct Progress {
    /// Per subscribed topic, the cursor the subscriber would resume from.
    pub have: Vec<AtomicU64>,
    /// Whether a first connection or poll has been answered.
    pub started: AtomicBool,
}

impl Progress {
    /// A subscriber of `topics` topics at cursor 0 that has not started.
    pub fn new(topics: usize) -> Progress {
        Progress {
            have: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            started: AtomicBool::new(false),
        }
    }
}

/// What every subscriber shares.
#[derive(Clone)]
pub struct Context {
    /// Base URLs of the nodes (`http://127.0.0.1:PORT`), which keep their
    /// ports across restarts.
    pub nodes: Arc<Vec<String>>,
    /// The run's topics.
    pub topics: Arc<Vec<String>>,
    pub token: String,
    /// A client without an overall timeout (SSE streams are long); each
    /// request sets its own.
    pub http: reqwest::Client,
    /// A WebSocket or SSE connection that shows nothing (not even a ping or
    /// an SSE keepalive comment) for this long is given up and resumed
    /// elsewhere.
    pub idle: Duration,
    /// `wait` of a long poll, in seconds.
    pub long_poll_wait_secs: u64,
}

/// How one connection or run of polls ended.
enum End {
    /// The run is over.
    Stopped,
    /// The run told this subscriber to disconnect.
    Dropped,
    /// The connection or poll was refused or failed before any answer.
    Failed(String),
    /// An open connection (or a run of polls) ended.
    Ended(String),
}

/// A subscriber's state while it runs.
struct State {
    index: usize,
    transport: Transport,
    topics: Vec<usize>,
    names: Vec<String>,
    have: Vec<u64>,
    progress: Arc<Progress>,
    /// The last SSE `id:` (what an EventSource sends as `Last-Event-ID`).
    sse_last_id: Option<String>,
    /// A WebSocket between `unsubscribed` and its next `subscribed`: any
    /// event then is one the subscriber did not ask for.
    unsubscribed: bool,
    log: Vec<Obs>,
    ends: BTreeMap<String, u64>,
    notes: Vec<String>,
}

impl State {
    fn position(&self, topic: &str) -> Option<usize> {
        self.names.iter().position(|name| name == topic)
    }

    /// `topic:seq,...` of the current cursor.
    fn cursor(&self, have: &[u64]) -> String {
        self.names
            .iter()
            .zip(have)
            .map(|(name, seq)| format!("{name}:{seq}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn set_have(&mut self, position: usize, seq: u64) {
        self.have[position] = seq;
        self.progress.have[position].store(seq, Ordering::Relaxed);
    }

    fn session(&mut self, resume: Vec<u64>) {
        self.log.push(Obs::Session { resume });
    }

    fn started(&self) {
        self.progress.started.store(true, Ordering::Relaxed);
    }

    /// An event object (from any transport).
    fn event(&mut self, event: &Value) {
        let (Some(topic), Some(seq)) = (event["topic"].as_str(), event["seq"].as_u64()) else {
            self.note(format!("an event without topic or seq: {event}"));
            return;
        };
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        let position = match self.position(topic) {
            Some(position) if !self.unsubscribed => position,
            _ => {
                self.log.push(Obs::Unasked {
                    topic: topic.to_owned(),
                    seq,
                });
                return;
            }
        };
        self.log.push(Obs::Event {
            topic: self.topics[position],
            seq,
            id,
        });
        if seq > self.have[position] {
            self.set_have(position, seq);
        }
    }

    /// A `reset` object `{"topic","from"}` (from any transport).
    fn reset(&mut self, reset: &Value) {
        let (Some(topic), Some(from)) = (reset["topic"].as_str(), reset["from"].as_u64()) else {
            self.note(format!("a reset without topic or from: {reset}"));
            return;
        };
        let Some(position) = self.position(topic) else {
            self.note(format!("a reset for a topic not asked for: {reset}"));
            return;
        };
        self.log.push(Obs::Reset {
            topic: self.topics[position],
            from,
        });
        self.set_have(position, from.saturating_sub(1));
    }

    /// A server-given cursor covering the subscriber's topics: the client
    /// resumes from it, so it moves the client's position.
    fn server_cursor(&mut self, cursor: &str) {
        for (topic, seq) in parse_cursor(cursor) {
            let Some(position) = self.position(&topic) else {
                continue;
            };
            if seq != self.have[position] {
                self.log.push(Obs::Cursor {
                    topic: self.topics[position],
                    seq,
                });
                self.set_have(position, seq);
            }
        }
    }

    fn note(&mut self, note: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(note);
        }
    }

    fn ended(&mut self, reason: String) {
        *self.ends.entry(reason).or_default() += 1;
    }
}

/// `topic:seq` pairs of a cursor; malformed pairs are skipped.
pub fn parse_cursor(cursor: &str) -> Vec<(String, u64)> {
    cursor
        .split(',')
        .filter_map(|pair| {
            let (topic, seq) = pair.rsplit_once(':')?;
            Some((topic.to_owned(), seq.parse().ok()?))
        })
        .collect()
}

/// Runs one subscriber until `stop` turns true; returns its log.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    index: usize,
    transport: Transport,
    topics: Vec<usize>,
    context: Context,
    progress: Arc<Progress>,
    drop_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    mut rng: Rng,
) -> SubscriberLog {
    let names: Vec<String> = topics.iter().map(|&t| context.topics[t].clone()).collect();
    let mut state = State {
        index,
        transport,
        have: vec![0; topics.len()],
        topics,
        names,
        progress,
        sse_last_id: None,
        unsubscribed: false,
        log: Vec::new(),
        ends: BTreeMap::new(),
        notes: Vec::new(),
    };
    let mut node = rng.below(context.nodes.len());
    loop {
        if *stop.borrow() {
            break;
        }
        let base = context.nodes[node].clone();
        let end = match transport {
            Transport::WebSocket => {
                ws_session(&context, &base, &mut state, &drop_now, &mut stop).await
            }
            Transport::Sse => sse_session(&context, &base, &mut state, &drop_now, &mut stop).await,
            Transport::LongPoll | Transport::ShortPoll => {
                poll_session(&context, &base, &mut state, &drop_now, &mut stop, &mut rng).await
            }
        };
        match end {
            End::Stopped => break,
            End::Dropped => state.ended("dropped by the run".into()),
            End::Failed(reason) => state.ended(format!("refused: {reason}")),
            End::Ended(reason) => state.ended(reason),
        }
        node = rng.other_than(context.nodes.len(), node);
        let pause = rng.duration(RECONNECT_PAUSE.0, RECONNECT_PAUSE.1);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    SubscriberLog {
        index: state.index,
        transport: state.transport,
        topics: state.topics,
        obs: state.log,
        ends: state.ends,
        notes: state.notes,
    }
}

/// A short name for a WebSocket or HTTP failure.
fn failure(error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    if text.contains("Connection refused") {
        "connection refused".into()
    } else if text.contains("reset") {
        "connection reset".into()
    } else {
        text.chars().take(80).collect()
    }
}

async fn ws_session(
    context: &Context,
    base: &str,
    state: &mut State,
    drop_now: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
    let headers = [("authorization", format!("Bearer {}", context.token))];
    let mut ws = match open_ws(&url, &headers, CONNECT_TIMEOUT).await {
        Ok(ws) => ws,
        Err(WsRefusal::Http(status, _)) => return End::Failed(format!("ws {status}")),
        Err(WsRefusal::Failed(error)) => return End::Failed(format!("ws {}", failure(&error))),
        Err(WsRefusal::TimedOut) => return End::Failed("ws connect timeout".into()),
    };
    state.unsubscribed = false;
    let resume = state.have.clone();
    let subscribe =
        json!({"op": "subscribe", "topics": state.names, "since": state.cursor(&resume)});
    if ws
        .stream
        .send(Message::text(subscribe.to_string()))
        .await
        .is_err()
    {
        return End::Failed("ws send".into());
    }
    state.session(resume);
    // Half of the WebSocket subscribers, told to disconnect, unsubscribe
    // and subscribe again on the same connection instead: once the
    // `unsubscribed` frame is back, from the cursor they then hold.
    let resubscriber = (state.index / Transport::ALL.len()) % 2 == 1;
    let mut leaving = false;
    loop {
        let next = tokio::select! {
            next = ws.next_within(context.idle) => Some(next),
            () = drop_now.notified(), if !leaving => None,
            _ = stop.wait_for(|stopped| *stopped) => return End::Stopped,
        };
        let Some(next) = next else {
            if !resubscriber {
                return End::Dropped;
            }
            let unsubscribe = json!({"op": "unsubscribe", "topics": state.names});
            if ws
                .stream
                .send(Message::text(unsubscribe.to_string()))
                .await
                .is_err()
            {
                return End::Ended("ws send".into());
            }
            leaving = true;
            continue;
        };
        match next {
            None => return End::Ended("ws idle".into()),
            Some(WsEvent::Ping) => {}
            Some(WsEvent::Closed(code, _)) => return End::Ended(format!("ws close {code}")),
            Some(WsEvent::Ended) => return End::Ended("ws broken".into()),
            Some(WsEvent::Json(frame)) => match frame["op"].as_str() {
                Some("event") => state.event(&frame),
                Some("reset") => state.reset(&frame),
                Some("subscribed") => {
                    state.unsubscribed = false;
                    state.started();
                }
                Some("unsubscribed") if leaving => {
                    leaving = false;
                    state.unsubscribed = true;
                    state.ended("ws resubscribed on the same connection".into());
                    let resume = state.have.clone();
                    let subscribe = json!({"op": "subscribe", "topics": state.names, "since": state.cursor(&resume)});
                    if ws
                        .stream
                        .send(Message::text(subscribe.to_string()))
                        .await
                        .is_err()
                    {
                        return End::Ended("ws send".into());
                    }
                    state.session(resume);
                }
                Some("authenticated" | "expiring" | "pong") => {}
                _ => state.note(format!("ws frame: {frame}")),
            },
        }
    }
}

async fn sse_session(
    context: &Context,
    base: &str,
    state: &mut State,
    drop_now: &Notify,
    stop: &mut watch::Receiver<bool>,
) -> End {
    // Like an EventSource: the URL keeps the first cursor, and the last
    // `id:` seen goes in Last-Event-ID, which wins.
    let first = state.cursor(&vec![0; state.names.len()]);
    let query: Vec<(&str, &str)> = state
        .names
        .iter()
        .map(|name| ("topic", name.as_str()))
        .chain([("since", first.as_str())])
        .collect();
    let mut request = context
        .http
        .get(format!("{base}/v1/sse"))
        .query(&query)
        .bearer_auth(&context.token);
    let resume = match &state.sse_last_id {
        Some(id) => {
            request = request.header("last-event-id", id);
            let given = parse_cursor(id);
            state
                .names
                .iter()
                .map(|name| given.iter().find(|(t, _)| t == name).map_or(0, |(_, s)| *s))
                .collect()
        }
        None => vec![0; state.names.len()],
    };
    let response = match tokio::time::timeout(CONNECT_TIMEOUT, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return End::Failed(format!("sse {}", failure(&error))),
        Err(_) => return End::Failed("sse timeout".into()),
    };
    if response.status() != 200 {
        return End::Failed(format!("sse {}", response.status().as_u16()));
    }
    state.session(resume);
    state.started();
    let mut sse = SseClient::new(response);
    loop {
        let next = tokio::select! {
            next = sse.next_within(context.idle) => next,
            () = drop_now.notified() => return End::Dropped,
            _ = stop.wait_for(|stopped| *stopped) => return End::Stopped,
        };
        let message = match next {
            // Keepalive comments (recorded while waiting) say the stream
            // is alive though no message came: a quiet topic, not a
            // stalled node.
            Err(()) if !sse.comments.is_empty() => {
                sse.comments.clear();
                continue;
            }
            Err(()) => return End::Ended("sse idle".into()),
            Ok(None) => return End::Ended("sse ended".into()),
            Ok(Some(message)) => message,
        };
        sse.comments.clear();
        let data: Value = serde_json::from_str(&message.data).unwrap_or(Value::Null);
        match message.event.as_str() {
            "message" => state.event(&data),
            "reset" => state.reset(&data),
            // Where the stream starts; events carry the cursor from then on.
            "subscribed" => continue,
            "drain" => return End::Ended("sse drain".into()),
            "error" => {
                let code = data["code"].as_str().unwrap_or("?").to_owned();
                return End::Ended(format!("sse error {code}"));
            }
            other => state.note(format!("sse event {other}: {}", message.data)),
        }
        if !message.id.is_empty() {
            state.server_cursor(&message.id);
            state.sse_last_id = Some(message.id);
        }
    }
}

async fn poll_session(
    context: &Context,
    base: &str,
    state: &mut State,
    drop_now: &Notify,
    stop: &mut watch::Receiver<bool>,
    rng: &mut Rng,
) -> End {
    let wait = match state.transport {
        Transport::LongPoll => context.long_poll_wait_secs,
        _ => 0,
    };
    let mut answered = 0u64;
    loop {
        let resume = state.have.clone();
        let since = state.cursor(&resume);
        let mut query: Vec<(&str, String)> = state
            .names
            .iter()
            .map(|name| ("topic", name.clone()))
            .collect();
        query.push(("since", since));
        query.push(("wait", wait.to_string()));
        query.push(("limit", POLL_LIMIT.to_string()));
        let request = context
            .http
            .get(format!("{base}/v1/poll"))
            .query(&query)
            .bearer_auth(&context.token)
            .timeout(Duration::from_secs(wait) + CONNECT_TIMEOUT)
            .send();
        let answer = async {
            let response = request.await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, body))
        };
        let answer = tokio::select! {
            answer = answer => answer,
            () = drop_now.notified() => return End::Dropped,
            _ = stop.wait_for(|stopped| *stopped) => return End::Stopped,
        };
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let reason = format!(
                    "poll {}",
                    if error.is_timeout() {
                        "timeout".into()
                    } else {
                        failure(&error)
                    }
                );
                return if answered == 0 {
                    End::Failed(reason)
                } else {
                    End::Ended(reason)
                };
            }
        };
        if status != 200 || !body["events"].is_array() {
            let code = body["code"].as_str().unwrap_or("");
            let reason = format!("poll {status} {code}");
            return if answered == 0 {
                End::Failed(reason)
            } else {
                End::Ended(reason)
            };
        }
        answered += 1;
        state.session(resume);
        state.started();
        for reset in body["resets"].as_array().into_iter().flatten() {
            state.reset(reset);
        }
        for event in body["events"].as_array().into_iter().flatten() {
            state.event(event);
        }
        match body["cursor"].as_str() {
            Some(cursor) => state.server_cursor(cursor),
            None => state.note(format!("a poll answer without a cursor: {body}")),
        }
        let more = body["more"].as_bool().unwrap_or(false);
        if wait == 0 && !more {
            let pause = rng.duration(SHORT_POLL_PAUSE.0, SHORT_POLL_PAUSE.1);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = drop_now.notified() => return End::Dropped,
                _ = stop.wait_for(|stopped| *stopped) => return End::Stopped,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_into_topic_seq_pairs() {
        assert_eq!(
            parse_cursor("a.b:3,c:0"),
            vec![("a.b".to_owned(), 3), ("c".to_owned(), 0)]
        );
        assert_eq!(parse_cursor("junk,d:x,e:2"), vec![("e".to_owned(), 2)]);
    }
}
