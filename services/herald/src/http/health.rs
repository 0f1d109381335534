//! `GET /healthz` (the process answers; reports the bus) and `GET /readyz`
//! (this node can serve: the store is reachable and it is not draining).
//!
//! The bus is deliberately not part of readiness: publishing commits to the
//! store and local delivery goes through the hub, neither needs NATS, and the
//! repair after a reconnect brings cross-node events. Failing readiness on a
//! NATS outage would take every node out of the load balancer at once. A bus
//! outage shows in `/healthz`, in `herald_bus_up` and in the log instead.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::node::Node;

/// Always `200` while the process answers; the body tells whether the bus
/// can carry events between nodes.
pub async fn healthz(state: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "bus": {"kind": state.bus.kind(), "ok": state.bus.healthy()},
    }))
}

/// `200` when the store answers a ping within 2 s and the node is not
/// draining; `503` otherwise.
pub async fn readyz(state: web::Data<Node>) -> HttpResponse {
    // A draining node answers at once, without waiting on the store.
    if state.gate.is_draining() {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "draining",
            "store": {"kind": state.store.kind()},
        }));
    }
    let store = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let body = json!({
        "status": if store_ok { "ready" } else { "unavailable" },
        "store": {"kind": state.store.kind(), "ok": store_ok},
    });
    if store_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
