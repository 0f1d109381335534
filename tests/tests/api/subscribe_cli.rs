//! `herald subscribe`: the command-line subscriber, run as a process against a
//! real server over each transport.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use herald_tests::app::{binary, spawn_app, unique_topic};
use herald_tests::clients::WAIT;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a subscriber may take to exit once it has printed its last event.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// A running `herald subscribe`, killed when dropped.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Subscriber {
    /// Starts `herald subscribe ARGS` against the server at `url` with `token`.
    fn start(url: &str, token: &str, args: &[&str]) -> Subscriber {
        let mut child = Command::new(binary())
            .arg("subscribe")
            .args(args)
            .env("HERALD_URL", url)
            .env("HERALD_TOKEN", token)
            .env_remove("HERALD_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("herald subscribe starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Subscriber {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        }
    }

    /// The next line of standard output, parsed as JSON; panics on timeout
    /// or end of output.
    async fn next_event(&mut self) -> (String, Value) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line within {WAIT:?}"))
            .expect("stdout is readable")
            .expect("herald subscribe printed a line before it ended");
        let event =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        (line, event)
    }

    /// Waits for the process to exit (killing it after `timeout`); its status,
    /// the rest of its standard output, and its standard error.
    async fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("the exit status is readable"),
            Err(_) => {
                let _ = self.child.kill().await;
                let stderr = self.stderr.await.unwrap_or_default();
                panic!("herald subscribe did not exit within {timeout:?}; stderr:\n{stderr}");
            }
        };
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            rest.push(line);
        }
        let stderr = self.stderr.await.expect("the stderr reader finishes");
        (status, rest, stderr)
    }
}

/// Publishes 3 events, subscribes from the start, publishes 2 more once the
/// first 3 are out, and checks that exactly seqs 1 to 5 come out in order.
async fn prints_every_event_as_a_json_line(transport: &str) {
    let app = spawn_app().await;
    let topic = unique_topic("subcli");
    for i in 1..=3 {
        app.publish(&topic, json!({"n": i})).await;
    }
    let since = format!("{topic}:0");
    let mut sub = Subscriber::start(
        &app.base_url,
        &app.root_token(),
        &[
            &topic,
            "--since",
            &since,
            "--transport",
            transport,
            "--max-events",
            "5",
        ],
    );
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(sub.next_event().await);
    }
    for i in 4..=5 {
        app.publish(&topic, json!({"n": i})).await;
    }
    for _ in 0..2 {
        events.push(sub.next_event().await);
    }
    let (status, rest, stderr) = sub.finish(EXIT_WAIT).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(rest.is_empty(), "printed more than 5 lines: {rest:?}");
    for (i, (line, event)) in events.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(event["topic"], topic.as_str(), "{line}");
        assert_eq!(event["seq"], n, "{line}");
        assert_eq!(event["data"], json!({"n": n}), "{line}");
        assert!(event.get("op").is_none(), "the op field is dropped: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_websocket_prints_replayed_and_live_events_as_json_lines() {
    prints_every_event_as_a_json_line("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_sse_prints_replayed_and_live_events_as_json_lines() {
    prints_every_event_as_a_json_line("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_polling_prints_replayed_and_live_events_as_json_lines() {
    prints_every_event_as_a_json_line("poll").await;
}

/// Subscribes, kills and restarts the server after 2 events, publishes 2 more
/// while the subscriber reconnects, and checks that it printed seqs 1 to 4
/// exactly once.
async fn resumes_after_the_server_restarts(transport: &str) {
    let mut app = spawn_app().await;
    let topic = unique_topic("subcli");
    for i in 1..=2 {
        app.publish(&topic, json!({"n": i})).await;
    }
    let since = format!("{topic}:0");
    let mut sub = Subscriber::start(
        &app.base_url,
        &app.root_token(),
        &[
            &topic,
            "--since",
            &since,
            "--transport",
            transport,
            "--max-events",
            "4",
        ],
    );
    let mut seqs = Vec::new();
    for _ in 0..2 {
        seqs.push(sub.next_event().await.1["seq"].clone());
    }
    app.restart().await.expect("herald restarts");
    for i in 3..=4 {
        app.publish(&topic, json!({"n": i})).await;
    }
    for _ in 0..2 {
        seqs.push(sub.next_event().await.1["seq"].clone());
    }
    let (status, rest, stderr) = sub.finish(EXIT_WAIT).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(rest.is_empty(), "printed more than 4 lines: {rest:?}");
    assert_eq!(seqs, [1, 2, 3, 4], "stderr:\n{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_websocket_resumes_after_the_server_restarts_without_losing_an_event() {
    resumes_after_the_server_restarts("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_sse_resumes_after_the_server_restarts_without_losing_an_event() {
    resumes_after_the_server_restarts("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_polling_resumes_after_the_server_restarts_without_losing_an_event() {
    resumes_after_the_server_restarts("poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_a_forbidden_topic_exits_with_an_error_over_every_transport() {
    let app = spawn_app().await;
    let topic = unique_topic("subcli");
    let token = app.token("x", &["other.>"], &[], 60);
    for transport in ["ws", "sse", "poll"] {
        let sub = Subscriber::start(&app.base_url, &token, &[&topic, "--transport", transport]);
        let (status, rest, stderr) = sub.finish(WAIT).await;
        assert!(!status.success(), "{transport}: exit {status}");
        assert!(rest.is_empty(), "{transport}: printed {rest:?}");
        assert!(stderr.contains("forbidden"), "{transport}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_an_invalid_topic_exits_with_an_error_before_connecting() {
    let app = spawn_app().await;
    let sub = Subscriber::start(&app.base_url, &app.root_token(), &["not a topic"]);
    let (status, _, stderr) = sub.finish(WAIT).await;
    assert!(!status.success(), "exit {status}");
    assert!(stderr.contains("invalid topic"), "{stderr}");
}

// The server only closes with 1012 or 4008, or sends SSE `drain` and
// `slow_consumer`, when draining or overloaded; these fakes do it on cue so
// the client's resumption can be checked exactly.

/// The event object a fake server sends for `seq`.
fn fake_event(topic: &str, seq: u64) -> String {
    format!(
        r#"{{"topic":"{topic}","seq":{seq},"id":"e-{seq}","time":"2026-01-01T00:00:00.000Z","data":{{"n": {seq}}}}}"#
    )
}

/// Serves three WebSocket connections: events 1 and 2 then close `1012`
/// (draining), event 3 then close `4008` (slow consumer), then event 4.
/// Returns the `subscribe` frame of each connection.
async fn fake_ws_server(listener: tokio::net::TcpListener, topic: String) -> Vec<Value> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let mut subscribes = Vec::new();
    for (seqs, close) in [(1..=2, Some(1012)), (3..=3, Some(4008)), (4..=4, None)] {
        let (tcp, _) = listener.accept().await.expect("the client connects");
        let mut ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("the upgrade succeeds");
        let Some(Ok(Message::Text(frame))) = ws.next().await else {
            panic!("the client sends a subscribe frame first");
        };
        subscribes.push(serde_json::from_str(&frame).expect("a JSON frame"));
        let subscribed =
            json!({"op": "subscribed", "topics": [topic], "heads": format!("{topic}:4")});
        ws.send(Message::text(subscribed.to_string()))
            .await
            .expect("sent");
        for seq in seqs {
            let frame = format!(r#"{{"op":"event",{}"#, &fake_event(&topic, seq)[1..]);
            ws.send(Message::text(frame)).await.expect("sent");
        }
        match close {
            Some(code) => {
                let frame = CloseFrame {
                    code: code.into(),
                    reason: "reconnect".into(),
                };
                let _ = ws.close(Some(frame)).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
            // The client leaves once it has printed enough.
            None => while let Some(Ok(_)) = ws.next().await {},
        }
    }
    subscribes
}

/// Serves three SSE responses: events 1 and 2 then `event: drain`, event 3
/// then `event: error` `slow_consumer`, then event 4. Returns each request's
/// head, lowercased.
async fn fake_sse_server(listener: tokio::net::TcpListener, topic: String) -> Vec<String> {
    use tokio::io::AsyncWriteExt;

    let event = |seq: u64| format!("id: {topic}:{seq}\ndata: {}\n\n", fake_event(&topic, seq));
    let bodies = [
        format!(
            "retry: 1000\n\n{}{}event: drain\ndata: {{\"reason\":\"draining\"}}\n\n",
            event(1),
            event(2)
        ),
        format!(
            "{}event: error\ndata: {{\"code\":\"slow_consumer\",\"message\":\"behind\"}}\n\n",
            event(3)
        ),
        format!(": keepalive\n\n{}", event(4)),
    ];
    let mut heads = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (mut tcp, _) = listener.accept().await.expect("the client connects");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.expect("readable") == 0 {
                panic!("the client hung up mid-request");
            }
            head.push(byte[0]);
        }
        heads.push(String::from_utf8_lossy(&head).to_lowercase());
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n{body}"
        );
        tcp.write_all(response.as_bytes()).await.expect("written");
        if i + 1 == bodies.len() {
            // The client leaves once it has printed enough.
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        }
    }
    heads
}

/// Runs a subscriber for 4 events against a fake server at `url` and checks
/// that it printed seqs 1 to 4, each exactly as sent, and exited 0.
async fn prints_four_fake_events(url: &str, topic: &str, transport: &str) -> String {
    let since = format!("{topic}:0");
    let mut sub = Subscriber::start(
        url,
        "fake-token",
        &[
            topic,
            "--since",
            &since,
            "--transport",
            transport,
            "--max-events",
            "4",
        ],
    );
    for seq in 1..=4 {
        let (line, _) = sub.next_event().await;
        assert_eq!(line, fake_event(topic, seq));
    }
    let (status, rest, stderr) = sub.finish(EXIT_WAIT).await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(rest.is_empty(), "printed more than 4 lines: {rest:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_websocket_resumes_from_its_cursor_after_drain_and_slow_consumer_closes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let topic = unique_topic("subcli");
    let server = tokio::spawn(fake_ws_server(listener, topic.clone()));
    let stderr = prints_four_fake_events(&url, &topic, "ws").await;
    let subscribes = tokio::time::timeout(WAIT, server)
        .await
        .expect("the fake server finishes")
        .expect("the fake server does not panic");
    let since: Vec<&Value> = subscribes.iter().map(|s| &s["since"]).collect();
    let expected = [0, 2, 3].map(|seq| json!(format!("{topic}:{seq}")));
    assert_eq!(since, expected.iter().collect::<Vec<_>>(), "{stderr}");
    assert!(
        stderr.contains("1012") && stderr.contains("4008"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_over_sse_resumes_from_its_last_event_id_after_drain_and_slow_consumer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let topic = unique_topic("subcli");
    let server = tokio::spawn(fake_sse_server(listener, topic.clone()));
    let stderr = prints_four_fake_events(&url, &topic, "sse").await;
    let heads = tokio::time::timeout(WAIT, server)
        .await
        .expect("the fake server finishes")
        .expect("the fake server does not panic");
    assert!(heads[0].starts_with("get /v1/sse?"), "{}", heads[0]);
    assert!(
        heads[0].contains("authorization: bearer fake-token"),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("last-event-id"), "{}", heads[0]);
    for (head, seq) in heads[1..].iter().zip([2, 3]) {
        let resume = format!("last-event-id: {topic}:{seq}\r\n").to_lowercase();
        assert!(head.contains(&resume), "expected {resume:?} in {head}");
    }
    assert!(
        stderr.contains("draining") && stderr.contains("slow_consumer"),
        "{stderr}"
    );
}
