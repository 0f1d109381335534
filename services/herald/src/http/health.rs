//! `GET /healthz` (the process answers) and `GET /readyz` (the store and bus
//! are reachable, and the node is not draining).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // A draining node answers at once, without waiting on the store.
    if state.gate.is_draining() {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "draining",
            "store": {"kind": state.store.kind()},
            "bus": {"kind": state.bus.kind()},
        }));
    }
    let store = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let store_ok = matches!(store, Ok(Ok(())));
    let bus_ok = state.bus.healthy();
    let body = json!({
        "status": if store_ok && bus_ok { "ready" } else { "unavailable" },
        "store": {"kind": state.store.kind(), "ok": store_ok},
        "bus": {"kind": state.bus.kind(), "ok": bus_ok},
    });
    if store_ok && bus_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
