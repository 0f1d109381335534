//! `GET /metrics`: the node's metrics in the Prometheus text format. Each
//! scrape first checks the bus and pings the store, so their health gauges
//! are as of the scrape.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};

use super::error::ApiError;
use crate::node::Node;
use crate::telemetry::metrics;

/// Longest wait for the store's ping during a scrape.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn metrics(state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let ping = tokio::time::timeout(STORE_PING_TIMEOUT, state.store.ping()).await;
    let store_ping = matches!(ping, Ok(Ok(()))).then(|| started.elapsed());
    metrics::health(state.bus.healthy(), store_ping);
    let text = metrics::render().map_err(|e| {
        tracing::error!(error = %e, "rendering the metrics failed");
        ApiError::Unavailable("the metrics could not be rendered".into())
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(text))
}
