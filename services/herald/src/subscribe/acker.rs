//! The acknowledging side of `herald subscribe --ack` over SSE and polling:
//! a task that posts the latest cursor to `POST /v1/ack`, one request at a
//! time. A cursor handed over while a request is on its way replaces any
//! not yet sent (acknowledgments are cumulative), so printing never waits
//! for the server's flush interval.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::ClientArgs;

/// How long a finishing subscriber waits for its last acknowledgment.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one acknowledgment request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The running acknowledging task.
pub struct Acker {
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    /// Starts the task posting to `url` with the client's credentials
    /// (minted for `patterns`); returns where to hand it cursors.
    pub fn start(
        http: reqwest::Client,
        url: String,
        args: ClientArgs,
        patterns: Vec<String>,
    ) -> (watch::Sender<String>, Acker) {
        let (tx, mut rx) = watch::channel(String::new());
        let task = tokio::spawn(async move {
            // Ends once the sender is gone and its last cursor is sent.
            while rx.changed().await.is_ok() {
                let cursor = rx.borrow_and_update().clone();
                if let Err(e) = post(&http, &url, &args, &patterns, &cursor).await {
                    eprintln!("acknowledging {cursor} failed: {e:#}");
                }
            }
        });
        (tx, Acker { task })
    }

    /// Waits (bounded) until the last cursor handed over is acknowledged;
    /// call after dropping the sender.
    pub async fn finish(self) {
        if tokio::time::timeout(FINISH_TIMEOUT, self.task)
            .await
            .is_err()
        {
            eprintln!("the last acknowledgment did not finish in time");
        }
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    args: &ClientArgs,
    patterns: &[String],
    cursor: &str,
) -> anyhow::Result<()> {
    let token = args.token(patterns, &[])?;
    let response = http
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "cursor": cursor }))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the server answered {status}: {}", body.trim());
    }
    Ok(())
}
