//! The files a browser loads from Herald itself: `GET /client.js` (the
//! browser client), `GET /client.d.ts` (its typings) and `GET /` (the web
//! console). They are built into the binary, so every node serves the same
//! bytes; each answer carries a strong `ETag` (a hash of the bytes, computed
//! once) and `Cache-Control: no-cache`, so browsers revalidate and get `304
//! Not Modified` until the binary changes.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

/// One embedded file.
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    /// The quoted strong entity tag.
    etag: String,
}

impl Asset {
    fn new(bytes: &'static [u8], content_type: &'static str) -> Asset {
        Asset {
            bytes,
            content_type,
            etag: format!("\"{:016x}-{:x}\"", fnv1a(bytes), bytes.len()),
        }
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, so that every node
/// of a cluster running one binary gives a file the same tag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

static CLIENT_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_bytes!("../../static/client.js"),
        "text/javascript; charset=utf-8",
    )
});
static CLIENT_DTS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
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
        "/client.d.ts",
        "GET",
        web::get().to(|req: HttpRequest| serve(req, &CLIENT_DTS)),
    ));
}

async fn serve(req: HttpRequest, asset: &'static Asset) -> HttpResponse {
    let matches = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == asset.etag);
    let mut answer = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    answer
        .insert_header((header::ETAG, asset.etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if matches {
        return answer.finish();
    }
    answer.content_type(asset.content_type).body(asset.bytes)
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
