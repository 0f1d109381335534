//! `herald subscribe`: follows topics over WebSocket, Server-Sent Events or
//! long polling and prints every event on standard output, resuming from its
//! cursor after every dropped connection so that no event is lost.
//!
//! Standard output carries events only: each one JSON line, the event object
//! exactly as the server sent it (without the WebSocket `op` field), flushed
//! as it is written. Everything else (subscriptions, resets, reconnects,
//! errors) goes to standard error as human-readable lines.
//!
//! One [`Follower`] owns the cursor: per topic, the seq of the last event
//! printed. Each transport runs one connection at a time and says how it
//! [`End`]ed; [`follow`] reconnects from the cursor with jittered exponential
//! backoff, or stops.

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::pin::pin;
use std::time::Duration;

use anyhow::{Context, anyhow};
use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod acker;

use crate::config::{ClientArgs, SubscribeArgs, Transport};
use crate::topic::{Cursor, Topic};

/// First reconnect delay (before jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long opening a connection may take, up to the response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has been silent this long is taken as dead. The server
/// sends a ping or keepalive every heartbeat (25 s by default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the WebSocket client pings, so that a dead server is noticed
/// whatever its heartbeat.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long the server may hold a long poll, in seconds.
const POLL_WAIT_SECS: u64 = 25;
/// How much longer than the wait a long poll's answer may take.
const POLL_MARGIN: Duration = Duration::from_secs(15);

/// Runs `herald subscribe` until interrupted, the server closes, `--max-events`
/// is reached, or an error that retrying cannot fix.
pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut topics: Vec<Topic> = Vec::new();
    for text in &args.topics {
        let topic = Topic::parse(text).with_context(|| format!("invalid topic {text:?}"))?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    let since = match args.since.as_deref() {
        Some(text) => Cursor::parse(text).context("invalid --since cursor")?,
        None => Cursor::new(),
    };
    let mut cursor = Cursor::new();
    for topic in &topics {
        if let Some(seq) = since.get(topic) {
            cursor.set(topic.clone(), seq);
        }
    }
    let mut client = Client::new(args.client, &topics)?;
    let acker = args.ack.then(|| client.start_acker());
    let mut follower = Follower {
        topics,
        cursor,
        printed: 0,
        max_events: args.max_events,
        established: false,
        ack: args.ack,
        unacked: false,
    };

    let outcome = tokio::select! {
        outcome = follow(&mut follower, &client, args.transport) => Some(outcome),
        Ok(()) = tokio::signal::ctrl_c() => None,
    };
    let result = match outcome {
        None => {
            eprintln!("interrupted");
            Ok(())
        }
        Some(Ok(why)) => {
            eprintln!("{why}");
            Ok(())
        }
        Some(Err(e)) => Err(e),
    };
    if let Some(acker) = acker {
        drop(client);
        acker.finish().await;
    }
    if !follower.cursor.is_empty() {
        eprintln!("resume with --since {}", follower.cursor);
    }
    result
}

/// The server and the credentials for it.
struct Client {
    args: ClientArgs,
    /// The topics, as the subscribe patterns of a minted token.
    patterns: Vec<String>,
    base_url: String,
    http: reqwest::Client,
    /// With `--ack`: the latest cursor to acknowledge over HTTP (SSE,
    /// polling, and the first poll of a WebSocket follower).
    acks: Option<tokio::sync::watch::Sender<String>>,
}

impl Client {
    fn new(args: ClientArgs, topics: &[Topic]) -> anyhow::Result<Client> {
        let base_url = args.url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            anyhow::bail!("--url must start with http:// or https://, not {base_url:?}");
        }
        let client = Client {
            patterns: topics.iter().map(Topic::to_string).collect(),
            args,
            base_url,
            http: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .context("building the HTTP client")?,
            acks: None,
        };
        // Missing credentials fail now, not on the first connection.
        client.token()?;
        Ok(client)
    }

    /// The bearer token for the next connection: the given one, or a fresh
    /// one minted from the shared secret.
    fn token(&self) -> anyhow::Result<String> {
        self.args.token(&self.patterns, &[])
    }

    /// Whether [`Client::token`] mints a new token each time, so that an
    /// expiring token can be replaced.
    fn renews_tokens(&self) -> bool {
        self.args.token.is_none() && self.args.jwt_secret.is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Starts acknowledging over HTTP: a task posts the latest cursor
    /// handed to [`Client::ack`], one request at a time (later cursors
    /// replace one not yet sent: acknowledgments are cumulative).
    fn start_acker(&mut self) -> acker::Acker {
        let (tx, acker) = acker::Acker::start(
            self.http.clone(),
            self.url("/v1/ack"),
            self.args.clone(),
            self.patterns.clone(),
        );
        self.acks = Some(tx);
        acker
    }

    /// With `--ack`, the `ack` frame for what `f` has printed, if that
    /// moved since the last acknowledgment.
    fn ack_frame(&self, f: &mut Follower) -> Option<String> {
        if !f.ack || !std::mem::take(&mut f.unacked) {
            return None;
        }
        Some(serde_json::json!({"op": "ack", "cursor": f.cursor.to_string()}).to_string())
    }

    /// With `--ack`, acknowledges what `f` has printed over HTTP, if that
    /// moved since the last acknowledgment.
    fn ack_over_http(&self, f: &mut Follower) {
        if let Some(acks) = &self.acks
            && f.ack
            && std::mem::take(&mut f.unacked)
        {
            acks.send_replace(f.cursor.to_string());
        }
    }
}

/// The subscription's state across connections: the topics, the cursor, and
/// what has been printed.
struct Follower {
    topics: Vec<Topic>,
    /// Per topic, everything up to and including this seq has been printed
    /// (or is gone, after a `reset`).
    cursor: Cursor,
    printed: u64,
    max_events: Option<u64>,
    /// Set when a connection got as far as subscribing; clears the backoff.
    established: bool,
    /// `--ack`: acknowledge what is printed; resume from the acknowledged
    /// positions.
    ack: bool,
    /// Whether the cursor moved since the last acknowledgment.
    unacked: bool,
}

/// How a connection ended.
enum End {
    /// Stop following, successfully; why.
    Stop(String),
    /// The connection failed or was closed; reconnect from the cursor.
    Retry(Retry),
    /// Retrying cannot help.
    Fatal(anyhow::Error),
}

struct Retry {
    why: String,
    /// The server's `Retry-After`, if it gave one.
    after: Option<Duration>,
}

impl End {
    fn retry(why: impl fmt::Display) -> End {
        End::Retry(Retry {
            why: why.to_string(),
            after: None,
        })
    }
}

impl From<anyhow::Error> for End {
    fn from(error: anyhow::Error) -> End {
        End::Fatal(error)
    }
}

/// The fields of an event the cursor needs.
#[derive(Deserialize)]
struct EventHead {
    topic: String,
    seq: u64,
}

/// `{"topic","from"}`: events of `topic` before `from` are gone.
#[derive(Deserialize)]
struct Reset {
    topic: String,
    from: u64,
}

impl Follower {
    /// Prints one event (its JSON text) and advances the cursor past it. An
    /// event at or before the cursor has been printed already and is skipped.
    fn event(&mut self, json: &str) -> Result<(), End> {
        let head: EventHead = serde_json::from_str(json)
            .with_context(|| format!("the server sent an event without topic and seq: {json}"))?;
        let topic = Topic::parse(&head.topic)
            .with_context(|| format!("the server sent an event with a bad topic: {json}"))?;
        if self.cursor.get(&topic).is_some_and(|at| head.seq <= at) {
            return Ok(());
        }
        // Newlines can only be insignificant whitespace in JSON; one event, one line.
        let line = if json.contains(['\n', '\r']) {
            json.replace(['\n', '\r'], " ")
        } else {
            json.to_owned()
        };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                return Err(End::Stop("standard output was closed".into()));
            }
            Err(e) => return Err(End::Fatal(anyhow!(e).context("writing to standard output"))),
        }
        self.cursor.set(topic, head.seq);
        self.unacked = true;
        self.printed += 1;
        if self.max_events.is_some_and(|max| self.printed >= max) {
            return Err(End::Stop(format!("printed {} events", self.printed)));
        }
        Ok(())
    }

    /// Reports a `reset` and moves the cursor past the events that are gone.
    fn reset(&mut self, data: &str) -> Result<(), End> {
        let reset: Reset = serde_json::from_str(data)
            .with_context(|| format!("the server sent a malformed reset: {data}"))?;
        eprintln!(
            "reset: events of {} before seq {} are no longer retained; continuing from there",
            reset.topic, reset.from
        );
        if let Ok(topic) = Topic::parse(&reset.topic) {
            self.advance(topic, reset.from.saturating_sub(1));
        }
        Ok(())
    }

    /// Takes the positions of a cursor the server sent (an SSE `id`, a
    /// poll's `cursor`): it covers topics that have had no event yet.
    fn adopt(&mut self, text: &str) {
        match Cursor::parse(text) {
            Ok(cursor) => {
                for (topic, seq) in cursor.iter() {
                    if self.topics.contains(topic) {
                        self.advance(topic.clone(), seq);
                    }
                }
            }
            Err(e) => eprintln!("ignoring a malformed cursor from the server ({e}): {text}"),
        }
    }

    /// Takes the subscription's `heads` for topics without a position, so
    /// that a reconnect resumes them where the subscription began.
    fn adopt_heads(&mut self, text: &str) {
        let Ok(heads) = Cursor::parse(text) else {
            return;
        };
        for (topic, seq) in heads.iter() {
            if self.topics.contains(topic) && self.cursor.get(topic).is_none() {
                self.cursor.set(topic.clone(), seq);
            }
        }
    }

    fn advance(&mut self, topic: Topic, seq: u64) {
        if self.cursor.get(&topic).is_none_or(|at| at < seq) {
            self.cursor.set(topic, seq);
        }
    }

    /// Whether some topic has no position yet (live-only so far).
    fn has_live_only_topics(&self) -> bool {
        self.topics.iter().any(|t| self.cursor.get(t).is_none())
    }

    /// `topic=...` query pairs for `topics`.
    fn query<'a>(topics: impl IntoIterator<Item = &'a Topic>) -> Vec<(&'static str, &'a str)> {
        topics.into_iter().map(|t| ("topic", t.as_str())).collect()
    }
}

/// Connects, reconnects with backoff after every failure, and returns why it
/// stopped; an error when retrying cannot help.
async fn follow(f: &mut Follower, client: &Client, transport: Transport) -> anyhow::Result<String> {
    if f.max_events == Some(0) {
        return Ok("printed 0 events".into());
    }
    let mut backoff = Backoff::new();
    let mut resuming = false;
    loop {
        let Err(end) = match transport {
            Transport::Ws => websocket(f, client).await,
            Transport::Sse => sse(f, client, resuming).await,
            Transport::Poll => poll(f, client).await,
        };
        let retry = match end {
            End::Stop(why) => return Ok(why),
            End::Fatal(error) => return Err(error),
            End::Retry(retry) => retry,
        };
        if std::mem::take(&mut f.established) {
            backoff.reset();
        }
        let delay = backoff.delay().max(retry.after.unwrap_or_default());
        let from = if f.cursor.is_empty() {
            "live".to_owned()
        } else {
            f.cursor.to_string()
        };
        eprintln!(
            "{}; reconnecting in {:.1} s from {from}",
            retry.why,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
        resuming = true;
    }
}

/// Reconnect delays: from [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`],
/// each drawn from the upper half of its range so that clients cut off
/// together do not come back together.
struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            ceiling: BACKOFF_MIN,
        }
    }

    fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
    }

    fn delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(BACKOFF_MAX);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// A refusal before a stream starts: fatal for the client's own mistakes
/// (`400`, `401`, `403`, ...), a retry when the server is busy or away.
fn refused(status: u16, retry_after: Option<&str>, body: &[u8]) -> End {
    #[derive(Deserialize, Default)]
    struct Problem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        detail: String,
    }
    let what = match serde_json::from_slice::<Problem>(body) {
        Ok(p) if !p.code.is_empty() => format!("{status} {}: {}", p.code, p.detail),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            format!("{status} {text}")
        }
    };
    if status == 408 || status == 429 || status >= 500 {
        End::Retry(Retry {
            why: format!("the server answered {what}"),
            after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        })
    } else {
        End::Fatal(anyhow!("the server refused the subscription: {what}"))
    }
}

/// Topics for a message: `a.b, c.d`.
fn names(topics: &[Topic]) -> String {
    topics
        .iter()
        .map(Topic::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error and its causes, for a message: `a: b: c`.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sends an HTTP request whose response headers must arrive `within`, and
/// checks their status.
async fn send(
    request: reqwest::RequestBuilder,
    within: Duration,
) -> Result<reqwest::Response, End> {
    let response = match tokio::time::timeout(within, request.send()).await {
        Err(_) => return Err(End::retry("the server did not answer in time")),
        Ok(Err(e)) if e.is_builder() => return Err(End::Fatal(anyhow!(e))),
        Ok(Err(e)) => {
            return Err(End::retry(format_args!(
                "cannot reach the server: {}",
                causes(&e)
            )));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.unwrap_or_default();
    Err(refused(status.as_u16(), retry_after.as_deref(), &body))
}

// --- WebSocket ---------------------------------------------------------------

/// A JSON object's members in the order they were sent, each value as its
/// text, so that an event can be printed without its `op` field and
/// otherwise unchanged.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

impl Members {
    /// The `op` member, if it is a string.
    fn op(&self) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == "op")
            .and_then(|(_, v)| serde_json::from_str(v.get()).ok())
    }

    /// The object without its `op` member.
    fn without_op(&self) -> String {
        let mut text = String::from("{");
        for (key, value) in self.0.iter().filter(|(k, _)| k != "op") {
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&serde_json::Value::from(key.as_str()).to_string());
            text.push(':');
            text.push_str(value.get());
        }
        text.push('}');
        text
    }
}

/// `ws://` or `wss://` for the server's `/v1/ws`.
fn ws_url(base_url: &str) -> String {
    let rest = base_url
        .strip_prefix("https://")
        .map(|rest| format!("wss://{rest}"))
        .or_else(|| {
            base_url
                .strip_prefix("http://")
                .map(|r| format!("ws://{r}"))
        })
        .unwrap_or_else(|| base_url.to_owned());
    format!("{rest}/v1/ws")
}

/// One WebSocket connection: subscribe from the cursor, print events until
/// it ends.
async fn websocket(f: &mut Follower, client: &Client) -> Result<Infallible, End> {
    if f.ack && f.has_live_only_topics() {
        // Where the acknowledged positions stand, and what follows them.
        let live_only: Vec<Topic> = f
            .topics
            .iter()
            .filter(|t| f.cursor.get(t).is_none())
            .cloned()
            .collect();
        poll_round(f, client, &live_only, 0).await?;
    }
    let url = ws_url(&client.base_url);
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad WebSocket URL {url}"))?;
    let bearer = format!("Bearer {}", client.token()?)
        .parse()
        .context("the token is not a valid header value")?;
    request
        .headers_mut()
        .insert(tungstenite::http::header::AUTHORIZATION, bearer);
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await;
    let mut ws = match connected {
        Err(_) => return Err(End::retry("the WebSocket upgrade did not finish in time")),
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tungstenite::Error::Http(response))) => {
            let retry_after = response
                .headers()
                .get(tungstenite::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            let body = response.body().as_deref().unwrap_or_default();
            return Err(refused(response.status().as_u16(), retry_after, body));
        }
        Ok(Err(tungstenite::Error::Url(e))) => {
            return Err(End::Fatal(anyhow!(
                "cannot open {url}: {e} (for https servers use --transport sse or poll)"
            )));
        }
        Ok(Err(e)) => return Err(End::retry(format_args!("cannot connect: {}", causes(&e)))),
    };

    let mut subscribe = serde_json::json!({"op": "subscribe", "topics": f.topics});
    if !f.cursor.is_empty() {
        subscribe["since"] = f.cursor.to_string().into();
    }
    if let Err(e) = ws.send(Message::text(subscribe.to_string())).await {
        return Err(End::retry(format_args!("connection lost: {}", causes(&e))));
    }

    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                    return Err(End::retry(format_args!("connection lost: {}", causes(&e))));
                }
                continue;
            }
            () = tokio::time::sleep_until(last_heard + IDLE_TIMEOUT) => {
                return Err(End::retry(format_args!(
                    "nothing heard from the server for {} s", IDLE_TIMEOUT.as_secs()
                )));
            }
        };
        last_heard = Instant::now();
        match message {
            Some(Ok(Message::Text(text))) => {
                let handled = ws_frame(f, client, &text);
                if let Some(ack) = client.ack_frame(f)
                    && let Err(e) = ws.send(Message::text(ack)).await
                {
                    return Err(End::retry(format_args!("connection lost: {}", causes(&e))));
                }
                if let Some(reply) = handled?
                    && let Err(e) = ws.send(Message::text(reply)).await
                {
                    return Err(End::retry(format_args!("connection lost: {}", causes(&e))));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(ws_closed(code, &reason));
            }
            // Pings are answered by the library; the rest carries nothing for us.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(End::retry(format_args!("connection lost: {}", causes(&e))));
            }
            None => return Err(End::retry("the connection ended without a close frame")),
        }
    }
}

/// Handles one text frame; returns a frame to send back, if any.
fn ws_frame(f: &mut Follower, client: &Client, text: &str) -> Result<Option<String>, End> {
    #[derive(Deserialize)]
    struct Subscribed {
        topics: Vec<String>,
        heads: String,
    }
    #[derive(Deserialize)]
    struct ErrorFrame {
        code: String,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    struct Expiring {
        #[serde(rename = "in")]
        in_secs: u64,
    }
    fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, End> {
        serde_json::from_str(text)
            .with_context(|| format!("the server sent a malformed frame: {text}"))
            .map_err(End::Fatal)
    }

    let members: Members = parse(text)?;
    match members.op().as_deref() {
        Some("event") => f.event(&members.without_op())?,
        Some("subscribed") => {
            let subscribed: Subscribed = parse(text)?;
            f.adopt_heads(&subscribed.heads);
            f.established = true;
            eprintln!(
                "subscribed to {} (heads {})",
                subscribed.topics.join(", "),
                subscribed.heads
            );
        }
        Some("reset") => f.reset(text)?,
        Some("error") => {
            let error: ErrorFrame = parse(text)?;
            if f.ack && error.code == "rate_limited" {
                // A refused acknowledgment: the next one covers it.
                eprintln!("acknowledgment refused ({}); continuing", error.message);
                return Ok(None);
            }
            let topics = if error.topics.is_empty() {
                String::new()
            } else {
                format!(" ({})", error.topics.join(", "))
            };
            return Err(End::Fatal(anyhow!(
                "{}{topics}: {}",
                error.code,
                error.message
            )));
        }
        Some("expiring") => {
            let expiring: Expiring = parse(text)?;
            if client.renews_tokens() {
                eprintln!(
                    "the token expires in {} s; sending a fresh one",
                    expiring.in_secs
                );
                let auth = serde_json::json!({"op": "auth", "token": client.token()?});
                return Ok(Some(auth.to_string()));
            }
            eprintln!(
                "the token expires in {} s and the server will then close the subscription \
                 (give HERALD_JWT_SECRET instead of HERALD_TOKEN to renew it automatically)",
                expiring.in_secs
            );
        }
        Some("authenticated" | "unsubscribed" | "pong") => {}
        Some(other) => eprintln!("ignoring a {other:?} frame"),
        None => eprintln!("ignoring a frame without op: {text}"),
    }
    Ok(None)
}

/// What a close code means for the subscription.
fn ws_closed(code: u16, reason: &str) -> End {
    let what = if reason.is_empty() {
        format!("the server closed the connection ({code})")
    } else {
        format!("the server closed the connection ({code}: {reason})")
    };
    match code {
        1000 => End::Stop(what),
        // Not authenticated, expired or revoked; forbidden; protocol errors:
        // reconnecting would be refused the same way.
        4001 | 4003 | 4400 | 1002 | 1003 | 1007 | 1008 | 1009 | 1010 => End::Fatal(anyhow!(what)),
        // 1012 draining, 4008 slow consumer, 1011 unavailable, 1001 going
        // away, and anything else: resume elsewhere or later.
        _ => End::retry(what),
    }
}

// --- Server-Sent Events ------------------------------------------------------

/// One SSE stream: open it from the cursor (`since`, and `Last-Event-ID` when
/// resuming), print events until it ends.
async fn sse(f: &mut Follower, client: &Client, resuming: bool) -> Result<Infallible, End> {
    if f.has_live_only_topics() {
        // A stream tells where a quiet topic stands only with its first `id`;
        // ask first, so that a reconnect before then skips nothing.
        let live_only: Vec<Topic> = f
            .topics
            .iter()
            .filter(|t| f.cursor.get(t).is_none())
            .cloned()
            .collect();
        poll_round(f, client, &live_only, 0).await?;
    }
    let cursor = f.cursor.to_string();
    let mut request = client
        .http
        .get(client.url("/v1/sse"))
        .query(&Follower::query(&f.topics))
        .bearer_auth(client.token()?)
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if !cursor.is_empty() {
        request = request.query(&[("since", &cursor)]);
        if resuming {
            request = request.header("last-event-id", &cursor);
        }
    }
    let response = send(request, CONNECT_TIMEOUT).await?;
    f.established = true;
    eprintln!("subscribed to {} from {cursor}", names(&f.topics));

    // Keepalive comments never surface as events, so watch for silence on
    // the bytes themselves.
    let bytes = futures_util::stream::unfold(response.bytes_stream(), |mut body| async move {
        let item = match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
            Ok(None) => return None,
            Ok(Some(Ok(chunk))) => Ok(chunk),
            Ok(Some(Err(e))) => Err(format!("connection lost: {}", causes(&e))),
            Err(_) => Err(format!(
                "nothing heard from the server for {} s",
                IDLE_TIMEOUT.as_secs()
            )),
        };
        Some((item, body))
    });
    let mut events = pin!(bytes.eventsource());
    #[derive(Deserialize)]
    struct ErrorEvent {
        code: String,
        #[serde(default)]
        message: String,
    }
    loop {
        let event = match events.next().await {
            None => return Err(End::retry("the stream ended")),
            Some(Err(eventsource_stream::EventStreamError::Transport(why))) => {
                return Err(End::retry(why));
            }
            Some(Err(e)) => return Err(End::retry(format_args!("unreadable stream: {e}"))),
            Some(Ok(event)) => event,
        };
        match event.event.as_str() {
            "message" => {
                let printed = f.event(&event.data);
                client.ack_over_http(f);
                printed?;
                f.adopt(&event.id);
            }
            "reset" => {
                f.reset(&event.data)?;
                f.adopt(&event.id);
            }
            // Where each topic starts: a reconnect resumes from there.
            "subscribed" => f.adopt_heads(&event.id),
            "drain" => return Err(End::retry("the server is draining")),
            "error" => {
                let error: ErrorEvent = serde_json::from_str(&event.data).with_context(|| {
                    format!("the server sent a malformed error: {}", event.data)
                })?;
                let what = format!("{}: {}", error.code, error.message);
                return Err(match error.code.as_str() {
                    "slow_consumer" | "unavailable" | "draining" => End::retry(what),
                    "token_expired" if client.renews_tokens() => End::retry(what),
                    _ => End::Fatal(anyhow!(what)),
                });
            }
            other => eprintln!("ignoring an SSE event {other:?}"),
        }
    }
}

// --- Long polling ------------------------------------------------------------

/// Long polls from the cursor until a poll fails.
async fn poll(f: &mut Follower, client: &Client) -> Result<Infallible, End> {
    let topics = f.topics.clone();
    loop {
        // Until every topic has a position, ask at once where each stands:
        // a long poll cut off before it answers would leave a gap otherwise.
        let wait_secs = if f.has_live_only_topics() {
            0
        } else {
            POLL_WAIT_SECS
        };
        poll_round(f, client, &topics, wait_secs).await?;
        if !std::mem::replace(&mut f.established, true) {
            eprintln!("polling {} from {}", names(&topics), f.cursor);
        }
    }
}

/// One poll of `topics` from the cursor (live-only for topics without a
/// position): prints what it returns and takes its cursor.
async fn poll_round(
    f: &mut Follower,
    client: &Client,
    topics: &[Topic],
    wait_secs: u64,
) -> Result<(), End> {
    #[derive(Deserialize)]
    struct Answer {
        events: Vec<Box<RawValue>>,
        #[serde(default)]
        resets: Vec<Box<RawValue>>,
        cursor: String,
    }
    let mut since = Cursor::new();
    for topic in topics {
        if let Some(seq) = f.cursor.get(topic) {
            since.set(topic.clone(), seq);
        }
    }
    let mut request = client
        .http
        .get(client.url("/v1/poll"))
        .query(&Follower::query(topics))
        .query(&[("wait", wait_secs)])
        .bearer_auth(client.token()?)
        .timeout(Duration::from_secs(wait_secs) + POLL_MARGIN);
    if !since.is_empty() {
        request = request.query(&[("since", since.to_string())]);
    }
    if f.ack {
        request = request.query(&[("resume", "ack")]);
    }
    let response = send(request, Duration::from_secs(wait_secs) + POLL_MARGIN).await?;
    let answer: Answer = match response.json().await {
        Ok(answer) => answer,
        Err(e) if e.is_decode() => {
            return Err(End::Fatal(anyhow!("the server's poll answer: {e}")));
        }
        Err(e) => return Err(End::retry(format_args!("connection lost: {}", causes(&e)))),
    };
    for reset in &answer.resets {
        f.reset(reset.get())?;
    }
    for event in &answer.events {
        if let Err(end) = f.event(event.get()) {
            client.ack_over_http(f);
            return Err(end);
        }
    }
    f.adopt(&answer.cursor);
    client.ack_over_http(f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_prints_without_its_op_and_otherwise_unchanged() {
        let frame = r#"{"op":"event","topic":"a.b","seq":3,"id":"x","time":"2026-01-01T00:00:00.000Z","data":{"z": [1, 2],"a":"\"q\""}}"#;
        let members: Members = serde_json::from_str(frame).expect("a JSON object");
        assert_eq!(members.op().as_deref(), Some("event"));
        assert_eq!(
            members.without_op(),
            r#"{"topic":"a.b","seq":3,"id":"x","time":"2026-01-01T00:00:00.000Z","data":{"z": [1, 2],"a":"\"q\""}}"#
        );
    }

    #[test]
    fn websocket_urls_follow_the_base_url_scheme() {
        assert_eq!(ws_url("http://h:1"), "ws://h:1/v1/ws");
        assert_eq!(ws_url("https://h/base"), "wss://h/base/v1/ws");
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.delay()).collect();
        assert!(delays[0] >= BACKOFF_MIN / 2 && delays[0] <= BACKOFF_MIN);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[7] >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.delay() <= BACKOFF_MIN);
    }

    #[test]
    fn close_codes_decide_between_retrying_and_giving_up() {
        assert!(matches!(ws_closed(1012, "draining"), End::Retry(_)));
        assert!(matches!(ws_closed(4008, ""), End::Retry(_)));
        assert!(matches!(ws_closed(1011, ""), End::Retry(_)));
        assert!(matches!(ws_closed(4001, ""), End::Fatal(_)));
        assert!(matches!(ws_closed(4003, ""), End::Fatal(_)));
        assert!(matches!(ws_closed(1000, ""), End::Stop(_)));
    }

    #[test]
    fn refusals_are_fatal_for_the_client_and_retried_for_the_server() {
        let forbidden = br#"{"code":"forbidden","detail":"no"}"#;
        match refused(403, None, forbidden) {
            End::Fatal(e) => assert!(e.to_string().contains("forbidden"), "{e}"),
            _ => panic!("403 is fatal"),
        }
        match refused(503, Some("3"), b"") {
            End::Retry(r) => assert_eq!(r.after, Some(Duration::from_secs(3))),
            _ => panic!("503 is retried"),
        }
    }
}
