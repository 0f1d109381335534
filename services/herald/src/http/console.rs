//! What the web console (`GET /`, `static/index.html`) needs from the server
//! beyond the public API: in development mode only, `GET /v1/dev/token`
//! hands it the admin token that `serve --dev` prints at start-up, so a
//! developer can open the console and connect without copying it.
//!
//! The application registers a [`DevToken`], holding the token under
//! `--dev` and nothing otherwise; without one the route answers `404`, like
//! any unknown route. The answer has no CORS headers, so only pages of the
//! node's own origin can read it.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::error::ApiError;

/// The development admin token (`serve --dev`), or `None`; registered as
/// application data.
#[derive(Clone, Default)]
pub struct DevToken(pub Option<String>);

/// `GET /v1/dev/token`: `{"token": "..."}` in development mode, else `404`.
pub async fn dev_token(token: Option<web::Data<DevToken>>) -> Result<HttpResponse, ApiError> {
    let token = token
        .as_ref()
        .and_then(|token| token.0.as_deref())
        .ok_or_else(|| {
            ApiError::NotFound(
                "the development token is offered only by `herald serve --dev`".into(),
            )
        })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "token": token })))
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test, web};

    use super::{DevToken, dev_token};

    #[actix_web::test]
    async fn the_dev_token_is_offered_only_when_registered() {
        let dev = test::init_service(
            App::new()
                .app_data(web::Data::new(DevToken(Some("t0k3n".into()))))
                .route("/v1/dev/token", web::get().to(dev_token)),
        )
        .await;
        let answer: serde_json::Value = test::call_and_read_body_json(
            &dev,
            test::TestRequest::get().uri("/v1/dev/token").to_request(),
        )
        .await;
        assert_eq!(answer, serde_json::json!({"token": "t0k3n"}));

        let production = test::init_service(
            App::new()
                .app_data(web::Data::new(DevToken(None)))
                .route("/v1/dev/token", web::get().to(dev_token)),
        )
        .await;
        let answer = test::call_service(
            &production,
            test::TestRequest::get().uri("/v1/dev/token").to_request(),
        )
        .await;
        assert_eq!(answer.status(), 404);

        let unregistered =
            test::init_service(App::new().route("/v1/dev/token", web::get().to(dev_token))).await;
        let answer = test::call_service(
            &unregistered,
            test::TestRequest::get().uri("/v1/dev/token").to_request(),
        )
        .await;
        assert_eq!(answer.status(), 404);
    }
}
