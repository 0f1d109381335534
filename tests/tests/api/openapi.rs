//! `GET /openapi.json`: the OpenAPI 3.1 description is served, is the
//! repository's `docs/openapi.json`, and describes every route the server
//! registers (and no route it lacks).

use std::collections::BTreeSet;

use herald_tests::app::spawn_app;
use serde_json::Value;

/// The `(METHOD, path)` pairs registered by the `routes` functions of
/// services/herald/src/http/mod.rs, http/assets.rs and http/devices.rs:
/// every path literal there, with each `web::METHOD()` that follows it
/// before the next path.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for source in [
        include_str!("../../../services/herald/src/http/mod.rs"),
        include_str!("../../../services/herald/src/http/assets.rs"),
        include_str!("../../../services/herald/src/http/devices.rs"),
    ] {
        let start = source
            .find("pub fn routes(")
            .expect("the file defines routes()");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("routes() ends")];
        for piece in body.split("\"/").skip(1) {
            let path = format!("/{}", piece.split('"').next().expect("a closed literal"));
            let methods: Vec<&str> = piece
                .split("web::")
                .skip(1)
                .filter_map(|rest| rest.split("()").next())
                .filter(|m| ["get", "post", "put", "delete", "patch"].contains(m))
                .collect();
            assert!(
                !methods.is_empty(),
                "a route names its method as web::METHOD()"
            );
            for method in methods {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(routes.len() >= 14, "routes() was not read: {routes:?}");
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths is an object");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().expect("a path item is an object") {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_lists_every_registered_route() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(format!("{}/openapi.json", app.base_url))
        .send()
        .await
        .expect("/openapi.json answers");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let text = response.text().await.expect("a body");
    let doc: Value = serde_json::from_str(&text).expect("/openapi.json is JSON");
    assert_eq!(
        text,
        include_str!("../../../docs/openapi.json"),
        "the served document is docs/openapi.json"
    );
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3.1."), "OpenAPI 3.1.x, not {version}");

    let registered = registered_routes();
    let documented = documented_routes(&doc);
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        unregistered.is_empty(),
        "documented routes the server lacks: {unregistered:?}"
    );

    // Every documented route answers (no `not_found`), and every problem
    // status it can answer without credentials is documented for it.
    for (method, path) in &documented {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let response = app
            .http
            .request(method.clone(), format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let responses = &doc["paths"][path][method.as_str().to_lowercase()]["responses"];
        // A 404 is a missing route, unless documented (a development-only route).
        assert!(
            status != 404 || responses.get("404").is_some(),
            "{method} {path} is not routed"
        );
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which docs/openapi.json does not list"
        );
    }
}

#[test]
fn every_error_code_of_the_api_is_in_the_problem_schema() {
    let doc: Value =
        serde_json::from_str(include_str!("../../../docs/openapi.json")).expect("JSON");
    let codes: BTreeSet<&str> =
        doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
            .as_array()
            .expect("the problem code is an enum")
            .iter()
            .map(|c| c.as_str().expect("codes are strings"))
            .collect();
    // Every `code` the server can answer (services/herald/src/http/error.rs
    // and auth/mod.rs).
    let sources = [
        include_str!("../../../services/herald/src/http/error.rs"),
        include_str!("../../../services/herald/src/auth/mod.rs"),
    ];
    for source in sources {
        for line in source.lines().filter(|l| l.contains("=> \"")) {
            let code = line
                .split("=> \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("a quoted code");
            if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                assert!(
                    codes.contains(code),
                    "code {code:?} is not in the Problem schema"
                );
            }
        }
    }
}
