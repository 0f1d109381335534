//! The one table of error codes: every error the HTTP API answers, its status
//! and machine-readable `code`, rendered as `application/problem+json`
//! (RFC 9457). Internal causes are logged here and never sent.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::publish::PublishError;
use crate::session::gate::Refused;
use crate::store::StoreError;

/// An error the HTTP API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidEvent(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidCursor(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    TooManyTopics(String),
    /// A device registration that is not one (`POST /v1/devices`).
    #[error("{0}")]
    InvalidDevice(String),
    /// A subject at its bound of devices.
    #[error("{0}")]
    TooManyDevices(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    OriginNotAllowed(String),
    /// The path exists, but not for this method; `allow` lists the one it
    /// serves.
    #[error("{detail}")]
    MethodNotAllowed { allow: &'static str, detail: String },
    /// The request names a `Host` this answer is not given to.
    #[error("{0}")]
    HostNotAllowed(String),
    #[error("{}", store_detail(.0))]
    Store(#[source] Arc<StoreError>),
    #[error("{0}")]
    Unavailable(String),
    /// A subscribing request in a version of the protocol this server does
    /// not speak (`?protocol=`).
    #[error("{0}")]
    UnsupportedProtocol(String),
    /// A WebSocket handshake in a version Herald does not speak (or none):
    /// answered with the one it does.
    #[error("{0}")]
    UpgradeRequired(String),
    /// A stream request that did not come through the front door's stream
    /// path, which alone serves it.
    #[error("{0}")]
    NotServed(String),
    #[error("this node is draining; retry on another node")]
    Draining { retry_after_secs: u64 },
    /// Not a request HTTP/1.1 allows (the front door's parser refused it).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    HeadTooLarge(String),
    /// The client did not send its request head or body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The caller asks for more than its share; it may retry after
    /// `retry_after_secs`.
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after_secs: u64,
    },
}

/// What a publisher may conclude from a store failure.
fn store_detail(error: &StoreError) -> &'static str {
    match error {
        StoreError::CommitUnknown(_) => {
            "the store did not confirm the commit: the events may or may not be stored; \
             retrying with the same id is safe (a stored event answers 200 with its seq), \
             while a retry without an id may store them twice"
        }
        _ => "the store is unavailable; nothing was stored, and retrying with the same id is safe",
    }
}

impl ApiError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Auth(e) => e.code(),
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidEvent(_) => "invalid_event",
            ApiError::InvalidTopic(_) => "invalid_topic",
            ApiError::InvalidCursor(_) => "invalid_cursor",
            ApiError::InvalidParameter(_) => "invalid_parameter",
            ApiError::TooManyTopics(_) => "too_many_topics",
            ApiError::InvalidDevice(_) => "invalid_device",
            ApiError::TooManyDevices(_) => "too_many_devices",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::HostNotAllowed(_) => "forbidden",
            ApiError::Store(_) | ApiError::Unavailable(_) => "unavailable",
            ApiError::Draining { .. } => "draining",
            ApiError::UpgradeRequired(_) => "upgrade_required",
            ApiError::UnsupportedProtocol(_) => "unsupported_protocol",
            ApiError::NotServed(_) => "not_served",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::HeadTooLarge(_) => "head_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::RateLimited { .. } => "rate_limited",
        }
    }

    fn title(&self) -> &'static str {
        match self.status_code() {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            StatusCode::REQUEST_TIMEOUT => "Request timeout",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "Request header fields too large",
            StatusCode::UPGRADE_REQUIRED => "Upgrade required",
            StatusCode::NOT_IMPLEMENTED => "Not implemented",
            _ => "Bad request",
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> ApiError {
        match error {
            PublishError::InvalidJson(m) => ApiError::InvalidJson(m),
            PublishError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(m),
            PublishError::InvalidEvent(m) => ApiError::InvalidEvent(m),
            PublishError::InvalidTopic(m) => ApiError::InvalidTopic(m),
            PublishError::Forbidden(e) => ApiError::Auth(e),
            PublishError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> ApiError {
        match refused {
            Refused::Draining => ApiError::Draining {
                retry_after_secs: 1,
            },
            Refused::Full(_) | Refused::TooManyWaiting(_) => {
                ApiError::Unavailable(refused.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Store(Arc::new(error))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Auth(e) => e.status(),
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidJson(_)
            | ApiError::InvalidEvent(_)
            | ApiError::InvalidTopic(_)
            | ApiError::InvalidCursor(_)
            | ApiError::InvalidParameter(_)
            | ApiError::TooManyTopics(_)
            | ApiError::BadRequest(_)
            | ApiError::UnsupportedProtocol(_)
            | ApiError::InvalidDevice(_) => StatusCode::BAD_REQUEST,
            ApiError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyDevices(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::NotServed(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::OriginNotAllowed(_) | ApiError::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::Store(_) | ApiError::Unavailable(_) | ApiError::Draining { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Store(e) = self {
            tracing::error!(error = %e, "store failure answered 503");
        }
        let code = self.code();
        if let ApiError::Auth(_) = self {
            crate::telemetry::metrics::auth_failure(code);
        }
        let problem = Problem {
            kind: format!("urn:herald:problem:{code}"),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
            code,
        };
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        match self {
            ApiError::Draining { retry_after_secs }
            | ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Store(_) | ApiError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Auth(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::UpgradeRequired(_) => {
                response.insert_header((header::SEC_WEBSOCKET_VERSION, "13"));
                response.insert_header((header::UPGRADE, "websocket"));
            }
            _ => {}
        }
        response.json(problem)
    }
}
