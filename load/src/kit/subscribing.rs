//! The subscriber side of a run: where subscribers connect, waiting until
//! every one is open before publishing starts, and collecting them once
//! the end events are out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{Endpoint, OpenError};
use crate::target::Target;

/// Where subscribers connect: every node but the first (published to) when
/// there are several, else the only one.
pub(crate) async fn subscriber_endpoints(target: &Target) -> anyhow::Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for url in target.subscriber_urls() {
        endpoints.push(Endpoint::resolve(url, &target.token).await?);
    }
    Ok(endpoints)
}

/// Waits until `count` subscribers (`noun`: what the report calls them)
/// have reported opening on `opened`, for at most `open_timeout_secs`;
/// fails when any failed to open or time ran out.
pub(crate) async fn await_opened(
    opened: &mut mpsc::UnboundedReceiver<Result<(), OpenError>>,
    count: usize,
    open_timeout_secs: u64,
    noun: &str,
) -> anyhow::Result<()> {
    let open_deadline = Instant::now() + Duration::from_secs(open_timeout_secs);
    let mut open_errors: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..count {
        match tokio::time::timeout_at(open_deadline.into(), opened.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => *open_errors.entry(e.0).or_default() += 1,
            Ok(None) => break,
            Err(_) => bail!(
                "{count} {noun} did not all open within {open_timeout_secs} s (--open-timeout-secs)"
            ),
        }
    }
    if !open_errors.is_empty() {
        bail!("{count} {noun}: some failed to open: {open_errors:?}");
    }
    Ok(())
}

/// Collects the subscriber tasks in `tasks` as they finish, until
/// `deadline`; their results, and how many were still running then (left
/// in `tasks`). `noun` names one subscriber in a panic's message.
pub(crate) async fn drain<T: 'static>(
    tasks: &mut JoinSet<T>,
    deadline: Instant,
    noun: &str,
) -> anyhow::Result<(Vec<T>, u64)> {
    let mut done = Vec::with_capacity(tasks.len());
    loop {
        match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
            Ok(Some(joined)) => done.push(joined.with_context(|| format!("a {noun} panicked"))?),
            Ok(None) => return Ok((done, 0)),
            Err(_) => return Ok((done, tasks.len() as u64)),
        }
    }
}
