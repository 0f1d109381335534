//! The files a browser loads from Herald itself: `/client.js`,
//! `/client.d.ts` and the console at `/`, served with their content types,
//! a strong `ETag`, `Cache-Control: no-cache`, and `304` on `If-None-Match`.

use herald_tests::app::spawn_app;

const CLIENT_JS: &str = include_str!("../../../services/herald/static/client.js");
const CLIENT_DTS: &str = include_str!("../../../services/herald/static/client.d.ts");

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
            "/client.d.ts",
            "application/typescript; charset=utf-8",
            Some(CLIENT_DTS),
        ),
        ("/", "text/html; charset=utf-8", None),
    ];
    let mut tags = Vec::new();
    for (path, content_type, body) in cases {
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
    assert_eq!(tags.len(), 3, "each file has its own tag");
}
