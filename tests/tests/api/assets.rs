//! The files a browser loads from Herald itself: `/client.js`,
//! `/client-push.js` (the minified build of the client's source), their
//! source maps, `/client.d.ts` and the console at `/`, served with their
//! content types, a strong `ETag`, `Cache-Control: no-cache`, and `304` on
//! `If-None-Match`.

use herald_tests::app::spawn_app;

const CLIENT_JS: &str = include_str!("../../../services/herald/static/dist/client.js");
const CLIENT_JS_MAP: &str = include_str!("../../../services/herald/static/dist/client.js.map");
const CLIENT_DTS: &str = include_str!("../../../services/herald/static/client.d.ts");
const CLIENT_PUSH_JS: &str = include_str!("../../../services/herald/static/dist/client-push.js");
const CLIENT_PUSH_JS_MAP: &str =
    include_str!("../../../services/herald/static/dist/client-push.js.map");
/// The sources the maps lead back to.
const CLIENT_SOURCE: &str = include_str!("../../../services/herald/static/client.js");
const CLIENT_PUSH_SOURCE: &str = include_str!("../../../services/herald/static/client-push.js");

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_with_their_types_a_strong_etag_and_304_on_revalidation() {
    let app = spawn_app().await;
    let cases = [
        (
            "/client.js",
            "text/javascript; charset=utf-8",
            Some(CLIENT_JS),
        ),
        (
            "/client.js.map",
            "application/json; charset=utf-8",
            Some(CLIENT_JS_MAP),
        ),
        (
            "/client-push.js",
            "text/javascript; charset=utf-8",
            Some(CLIENT_PUSH_JS),
        ),
        (
            "/client-push.js.map",
            "application/json; charset=utf-8",
            Some(CLIENT_PUSH_JS_MAP),
        ),
        (
            "/client.d.ts",
            "application/typescript; charset=utf-8",
            Some(CLIENT_DTS),
        ),
        ("/", "text/html; charset=utf-8", None),
    ];
    let mut tags = Vec::new();
    for (path, content_type, body) in cases.iter().copied() {
        let url = format!("{}{path}", app.base_url);
        let response = app.http.get(&url).send().await.expect("the asset answers");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "cache-control"), "no-cache", "{path}");
        let etag = header(&response, "etag");
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "{path}: a strong, quoted ETag: {etag:?}"
        );
        let text = response.text().await.expect("the asset has a body");
        match body {
            Some(expected) => assert_eq!(text, expected, "{path} is the file in the repository"),
            None => assert!(text.contains("/client.js"), "the console loads /client.js"),
        }

        // The same tag again: 304 without a body, with the tag.
        let again = app
            .http
            .get(&url)
            .header("If-None-Match", &etag)
            .send()
            .await
            .expect("the asset answers");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(header(&again, "etag"), etag, "{path}");
        assert!(again.bytes().await.expect("a 304 ends").is_empty());

        // Among others, and weak comparison (a proxy may weaken the tag): still 304.
        let listed = app
            .http
            .get(&url)
            .header("If-None-Match", format!("\"other\", W/{etag}"))
            .send()
            .await
            .expect("the asset answers");
        assert_eq!(listed.status(), 304, "{path}");

        // Another tag: the full answer.
        let stale = app
            .http
            .get(&url)
            .header("If-None-Match", "\"0000000000000000-0\"")
            .send()
            .await
            .expect("the asset answers");
        assert_eq!(stale.status(), 200, "{path}");
        assert_eq!(header(&stale, "etag"), etag, "{path}");
        tags.push(etag);
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), cases.len(), "each file has its own tag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_its_typings_are_importable_from_any_origin_and_gzipped_when_accepted() {
    use std::io::Read;
    let app = spawn_app().await;
    for (path, file) in [
        ("/client.js", CLIENT_JS),
        ("/client.js.map", CLIENT_JS_MAP),
        ("/client-push.js", CLIENT_PUSH_JS),
        ("/client-push.js.map", CLIENT_PUSH_JS_MAP),
        ("/client.d.ts", CLIENT_DTS),
    ] {
        let url = format!("{}{path}", app.base_url);
        let gzipped = app
            .http
            .get(&url)
            .header("Origin", "http://elsewhere.example")
            .header("Accept-Encoding", "br;q=1.0, gzip;q=0.8")
            .send()
            .await
            .expect("the asset answers");
        assert_eq!(gzipped.status(), 200, "{path}");
        assert_eq!(
            header(&gzipped, "access-control-allow-origin"),
            "*",
            "{path}"
        );
        assert_eq!(
            header(&gzipped, "access-control-allow-credentials"),
            "",
            "{path}"
        );
        assert_eq!(header(&gzipped, "content-encoding"), "gzip", "{path}");
        assert_eq!(header(&gzipped, "vary"), "Accept-Encoding", "{path}");
        let gzip_tag = header(&gzipped, "etag");
        let bytes = gzipped.bytes().await.expect("the asset has a body");
        assert!(
            bytes.len() < file.len() * 2 / 3,
            "{path}: compressed, {} bytes",
            bytes.len()
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .expect("the body is gzip");
        assert_eq!(text, file, "{path}: the file, compressed");

        // Revalidating the compressed answer with its tag: 304.
        let again = app
            .http
            .get(&url)
            .header("Accept-Encoding", "gzip")
            .header("If-None-Match", &gzip_tag)
            .send()
            .await
            .expect("the asset answers");
        assert_eq!(again.status(), 304, "{path}");

        // gzip refused (q=0), or no Accept-Encoding: the plain bytes, still for any origin.
        for accept in [Some("gzip;q=0, identity"), None] {
            let mut request = app.http.get(&url);
            if let Some(accept) = accept {
                request = request.header("Accept-Encoding", accept);
            }
            let plain = request.send().await.expect("the asset answers");
            assert_eq!(header(&plain, "content-encoding"), "", "{path} {accept:?}");
            assert_eq!(header(&plain, "access-control-allow-origin"), "*", "{path}");
            assert_eq!(header(&plain, "vary"), "Accept-Encoding", "{path}");
            assert_ne!(
                header(&plain, "etag"),
                gzip_tag,
                "{path}: each representation its tag"
            );
            assert_eq!(
                plain.text().await.expect("a body"),
                file,
                "{path} {accept:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_modules_are_minified_and_lead_to_their_source_through_a_relative_map() {
    let app = spawn_app().await;
    for (path, source) in [
        ("/client.js", CLIENT_SOURCE),
        ("/client-push.js", CLIENT_PUSH_SOURCE),
    ] {
        let module = app
            .http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .expect("the module answers")
            .text()
            .await
            .expect("the module has a body");
        assert!(
            module.len() < source.len() * 2 / 3,
            "{path}: minified, {} bytes from {}",
            module.len(),
            source.len()
        );
        let name = path.trim_start_matches('/');
        assert!(
            module.ends_with(&format!("\n//# sourceMappingURL={name}.map\n")),
            "{path} names its map relatively, so it is found through proxies and from any origin"
        );
        let map: serde_json::Value = app
            .http
            .get(format!("{}{path}.map", app.base_url))
            .send()
            .await
            .expect("the map answers")
            .json()
            .await
            .expect("the map is JSON");
        assert_eq!(map["version"], 3, "{path}.map");
        assert_eq!(
            map["sourcesContent"][0].as_str(),
            Some(source),
            "{path}.map carries the source it was built from (scripts/build-client regenerates it)"
        );
    }
}
