//! The files a browser loads from Herald itself: `GET /client.js` (the
//! browser client), `GET /client-push.js` (its Web Push part, which
//! `registerPush` imports on first use), their source maps
//! (`/client.js.map`, `/client-push.js.map`), `GET /client.d.ts` (its
//! typings) and `GET /` (the web console). The two modules are the minified
//! build of `static/client.js` and `static/client-push.js` that
//! `scripts/build-client` writes to `static/dist/` (committed, so building
//! the binary needs no Node). They are built into the binary, so every node
//! serves the same bytes; each answer carries a strong `ETag` (a hash of the
//! bytes, computed once) and `Cache-Control: no-cache`, so browsers
//! revalidate and get `304 Not Modified` until the binary changes. The
//! client, its maps and its typings are compressed once (gzip, sent when
//! `Accept-Encoding` allows it) and carry `Access-Control-Allow-Origin: *`,
//! so a page on any origin can import the module (it is public code; no
//! credentials are involved).

use std::io::Write;
use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

/// One embedded file.
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    /// The quoted strong entity tag.
    etag: String,
    /// For the files other origins import: the gzip bytes and their tag.
    gzip: Option<(Vec<u8>, String)>,
}

impl Asset {
    fn new(bytes: &'static [u8], content_type: &'static str) -> Asset {
        Asset {
            bytes,
            content_type,
            etag: format!("\"{:016x}-{:x}\"", fnv1a(bytes), bytes.len()),
            gzip: None,
        }
    }

    /// An asset for pages of any origin, served compressed where the browser accepts it.
    fn shared(bytes: &'static [u8], content_type: &'static str) -> Asset {
        let mut asset = Asset::new(bytes, content_type);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(bytes)
            .expect("writing to a Vec cannot fail");
        let gzip = encoder.finish().expect("writing to a Vec cannot fail");
        // Another representation, another strong tag.
        let etag = format!("{}-gzip\"", asset.etag.trim_end_matches('"'));
        asset.gzip = Some((gzip, etag));
        asset
    }
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*` with a q above 0).
fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && (coding.eq_ignore_ascii_case("gzip") || coding == "*")
        })
}

/// 64-bit FNV-1a: stable across builds and platforms, so that every node
/// of a cluster running one binary gives a file the same tag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

static CLIENT_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::shared(
        include_bytes!("../../static/dist/client.js"),
        "text/javascript; charset=utf-8",
    )
});
static CLIENT_JS_MAP: LazyLock<Asset> = LazyLock::new(|| {
    Asset::shared(
        include_bytes!("../../static/dist/client.js.map"),
        "application/json; charset=utf-8",
    )
});
static CLIENT_PUSH_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::shared(
        include_bytes!("../../static/dist/client-push.js"),
        "text/javascript; charset=utf-8",
    )
});
static CLIENT_PUSH_JS_MAP: LazyLock<Asset> = LazyLock::new(|| {
    Asset::shared(
        include_bytes!("../../static/dist/client-push.js.map"),
        "application/json; charset=utf-8",
    )
});
static CLIENT_DTS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::shared(
        include_bytes!("../../static/client.d.ts"),
        "application/typescript; charset=utf-8",
    )
});
static INDEX_HTML: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../static/index.html"),
        "text/html; charset=utf-8",
    )
});

/// Registers the asset routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Compressed once, as the routes are set up, not on a first request.
    LazyLock::force(&CLIENT_JS);
    LazyLock::force(&CLIENT_JS_MAP);
    LazyLock::force(&CLIENT_PUSH_JS);
    LazyLock::force(&CLIENT_PUSH_JS_MAP);
    LazyLock::force(&CLIENT_DTS);
    cfg.service(super::only(
        "/",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &INDEX_HTML)),
    ))
    .service(super::only(
        "/client.js",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_JS)),
    ))
    .service(super::only(
        "/client.js.map",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_JS_MAP)),
    ))
    .service(super::only(
        "/client-push.js",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_PUSH_JS)),
    ))
    .service(super::only(
        "/client-push.js.map",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_PUSH_JS_MAP)),
    ))
    .service(super::only(
        "/client.d.ts",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_DTS)),
    ));
}

async fn serve(req: HttpRequest, asset: &'static Asset) -> HttpResponse {
    let gzip = asset.gzip.as_ref().filter(|_| accepts_gzip(&req));
    let (body, etag): (&'static [u8], &'static str) = match gzip {
        Some((bytes, etag)) => (bytes, etag),
        None => (asset.bytes, &asset.etag),
    };
    let matches = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
    let mut answer = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    answer
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if asset.gzip.is_some() {
        answer
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
            .insert_header((header::VARY, "Accept-Encoding"));
        if gzip.is_some() {
            answer.insert_header((header::CONTENT_ENCODING, "gzip"));
        }
    }
    if matches {
        return answer.finish();
    }
    answer.content_type(asset.content_type).body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_changes_with_the_bytes_and_is_quoted() {
        let a = Asset::new(b"export default 1;", "text/javascript");
        let b = Asset::new(b"export default 2;", "text/javascript");
        assert_ne!(a.etag, b.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
