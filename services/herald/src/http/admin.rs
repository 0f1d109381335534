//! `GET /v1/admin/stats` (admin token): what this node holds now: open
//! connections by transport, topics with local subscribers (the busiest
//! first), and queue high-water marks.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::Admin;
use super::error::ApiError;
use crate::node::Node;

/// How many of the busiest topics the answer names.
pub const BUSIEST_TOPICS: usize = 20;

/// Longest wait for one worker's hub to count its topics.
const CENSUS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn stats(_: Admin, state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let census = state.hubs.census(CENSUS_TIMEOUT).await;
    let mut busiest: Vec<(&str, usize)> = census.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    busiest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    busiest.truncate(BUSIEST_TOPICS);
    let snapshot = crate::telemetry::metrics::snapshot();
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "connections": snapshot.connections,
            "topics": {
                "with_local_subscribers": census.len(),
                "busiest": busiest
                    .iter()
                    .map(|(topic, connections)| json!({"topic": topic, "connections": connections}))
                    .collect::<Vec<_>>(),
            },
            "queues": {
                "outbound_high_water_frames": snapshot.queue_high_water_frames,
                "commit_high_water_requests": snapshot.commit_queue_high_water_requests,
            },
            "store": {"kind": state.store.kind()},
            "bus": {"kind": state.bus.kind(), "ok": state.bus.healthy()},
            "draining": state.gate.is_draining(),
        })))
}
