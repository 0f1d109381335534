//! What the web console (`GET /`, `static/index.html`) needs from the server
//! beyond the public API: in development mode only, `GET /v1/dev/token`
//! hands it the admin token that `serve --dev` prints at start-up, so a
//! developer can open the console and connect without copying it.
//!
//! The application registers a [`DevToken`], holding the token under
//! `--dev` and nothing otherwise; without one the route answers `404`, like
//! any unknown route. The answer has no CORS headers, so only pages of the
//! node's own origin can read it; and it is given only to requests whose
//! `Host` is a loopback name or address, so a page on a domain an attacker
//! points at 127.0.0.1 (DNS rebinding), whose requests are same-origin for
//! the browser but name the attacker's host, cannot read it either.

use std::net::{Ipv4Addr, Ipv6Addr};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiError;

/// The development admin token (`serve --dev`), or `None`; registered as
/// application data.
#[derive(Clone, Default)]
pub struct DevToken(pub Option<String>);

/// `GET /v1/dev/token`: `{"token": "..."}` in development mode to a
/// loopback `Host` (`403` to any other), else `404`.
pub async fn dev_token(
    req: HttpRequest,
    token: Option<web::Data<DevToken>>,
) -> Result<HttpResponse, ApiError> {
    let token = token
        .as_ref()
        .and_then(|token| token.0.as_deref())
        .ok_or_else(|| {
            ApiError::NotFound(
                "the development token is offered only by `herald serve --dev`".into(),
            )
        })?;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !host.is_some_and(is_loopback_host) {
        return Err(ApiError::HostNotAllowed(
            "the development token is offered only to requests for a loopback host \
             (localhost, 127.0.0.0/8 or [::1], with or without a port); copy it from \
             the output of `herald serve --dev` instead"
                .into(),
        ));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "token": token })))
}

/// Whether `host` (a `Host` header: a name or address, perhaps with a
/// port) names this machine's loopback interface: `localhost`, an address
/// of 127.0.0.0/8, or `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let valid_port = |port: &str| {
        port.is_empty()
            || port.strip_prefix(':').is_some_and(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            })
    };
    if let Some(rest) = host.strip_prefix('[') {
        let Some((address, port)) = rest.split_once(']') else {
            return false;
        };
        return valid_port(port) && address.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    let (name, port) = match host.rfind(':') {
        Some(i) => host.split_at(i),
        None => (host, ""),
    };
    valid_port(port)
        && (name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()))
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test as actix, web};

    use super::{DevToken, dev_token, is_loopback_host};

    #[test]
    fn loopback_hosts_are_localhost_127_0_0_0_8_and_the_ipv6_loopback() {
        for host in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.255.0.9:65535",
            "[::1]",
            "[::1]:8080",
            "[0:0:0:0:0:0:0:1]:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "localhost.",
            "127.0.0.1.example.com",
            "128.0.0.1",
            "0.0.0.0",
            "10.0.0.1:8080",
            "[::2]",
            "[::ffff:127.0.0.1]",
            "[::1",
            "::1",
            "localhost:",
            "localhost:80a",
            "localhost:8080:80",
            "[::1]x",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[actix_web::test]
    async fn the_dev_token_is_offered_only_when_registered() {
        let dev = actix::init_service(
            App::new()
                .app_data(web::Data::new(DevToken(Some("t0k3n".into()))))
                .route("/v1/dev/token", web::get().to(dev_token)),
        )
        .await;
        let answer: serde_json::Value = actix::call_and_read_body_json(
            &dev,
            actix::TestRequest::get()
                .uri("/v1/dev/token")
                .insert_header(("host", "localhost:8080"))
                .to_request(),
        )
        .await;
        assert_eq!(answer, serde_json::json!({"token": "t0k3n"}));
        let rebound = actix::call_service(
            &dev,
            actix::TestRequest::get()
                .uri("/v1/dev/token")
                .insert_header(("host", "attacker.example:8080"))
                .to_request(),
        )
        .await;
        assert_eq!(rebound.status(), 403);

        let production = actix::init_service(
            App::new()
                .app_data(web::Data::new(DevToken(None)))
                .route("/v1/dev/token", web::get().to(dev_token)),
        )
        .await;
        let answer = actix::call_service(
            &production,
            actix::TestRequest::get().uri("/v1/dev/token").to_request(),
        )
        .await;
        assert_eq!(answer.status(), 404);

        let unregistered =
            actix::init_service(App::new().route("/v1/dev/token", web::get().to(dev_token))).await;
        let answer = actix::call_service(
            &unregistered,
            actix::TestRequest::get().uri("/v1/dev/token").to_request(),
        )
        .await;
        assert_eq!(answer.status(), 404);
    }
}
