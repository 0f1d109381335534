//! HTTP routes: publish, tickets, revocation, health, metrics, node
//! statistics, and the shared state and extractors the
//! handlers use. Handlers are short: extract, call the core, map the result.

mod ack;
mod admin;
mod assets;
mod auth;
pub mod console;
pub mod error;
mod health;
mod metrics;
mod openapi;
pub mod origin;
mod publish;
pub mod socket;

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};

use crate::auth::{AuthError, OriginPolicy, Principal, Tickets, TokenError, Verifier};
use crate::bus::Bus;
use crate::session::gate::Gate;
use crate::store::{Committer, Store};
use crate::topic::{Cursor, Topic};
use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub bus: Arc<dyn Bus>,
    pub verifier: Arc<Verifier>,
    pub limits: crate::publish::Limits,
    pub max_body_bytes: usize,
    pub gate: Arc<Gate>,
    pub sessions: Arc<crate::session::Shared>,
    /// Name of the session cookie that may carry a token.
    pub auth_cookie: String,
    /// Ticket settings and this node's outstanding tickets.
    pub tickets: Tickets,
    /// Web origins whose pages may subscribe, besides this server's own.
    pub origins: Arc<OriginPolicy>,
    /// How long a revocation is kept, in seconds.
    pub revocation_ttl_secs: u64,
}

/// Longest `wait` of a long poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// Default and largest `limit` of a poll.
pub const DEFAULT_POLL_LIMIT: usize = 100;
pub const MAX_POLL_LIMIT: usize = 1_000;

/// The query of a subscribing request (SSE, poll), checked in the contract's
/// order: credentials, then topics, cursor and parameters, then permission.
pub struct SubscribeQuery {
    pub principal: Principal,
    pub topics: Vec<Topic>,
    pub since: Cursor,
    pub wait_secs: u64,
    pub limit: usize,
}

/// The parameters of a subscribing request's query string, before any
/// permission check.
#[derive(Debug)]
pub struct SubscribeParams {
    pub topics: Vec<Topic>,
    pub since: Option<Cursor>,
    pub wait_secs: u64,
    pub limit: usize,
    /// `resume=ack`: topics without a `since` position start from the
    /// subscriber's acknowledged positions.
    pub resume_from_acks: bool,
}

impl SubscribeParams {
    /// Parses a query string; `poll` allows `wait` and `limit`; at most
    /// `max_topics` topics.
    pub fn parse(query: &str, poll: bool, max_topics: usize) -> Result<SubscribeParams, ApiError> {
        let mut topics: Vec<Topic> = Vec::new();
        let mut since = None;
        let mut wait_secs = 0;
        let mut limit = DEFAULT_POLL_LIMIT;
        let mut resume_from_acks = false;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "resume" => {
                    resume_from_acks = crate::ack::ws::resume_from_acks(Some(value.as_ref()))
                        .map_err(|_| ApiError::InvalidParameter("resume is \"ack\"".into()))?
                }
                "topic" => {
                    // Several topics per parameter, comma-separated, are accepted too.
                    for text in value.split(',').filter(|t| !t.is_empty()) {
                        let topic = Topic::parse(text)
                            .map_err(|e| ApiError::InvalidTopic(e.to_string()))?;
                        if !topics.contains(&topic) {
                            topics.push(topic);
                        }
                    }
                }
                "since" => {
                    since = Some(
                        Cursor::parse(&value)
                            .map_err(|e| ApiError::InvalidCursor(e.to_string()))?,
                    )
                }
                "wait" if poll => {
                    wait_secs = value
                        .parse::<u64>()
                        .ok()
                        .filter(|w| *w <= MAX_WAIT_SECS)
                        .ok_or_else(|| {
                            ApiError::InvalidParameter(format!(
                                "wait is whole seconds from 0 to {MAX_WAIT_SECS}"
                            ))
                        })?
                }
                "limit" if poll => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_POLL_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::InvalidParameter(format!(
                                "limit is from 1 to {MAX_POLL_LIMIT}"
                            ))
                        })?
                }
                _ => {}
            }
        }
        if topics.is_empty() {
            return Err(ApiError::InvalidTopic(
                "name at least one topic: ?topic=...".into(),
            ));
        }
        if topics.len() > max_topics {
            return Err(ApiError::TooManyTopics(format!(
                "a connection holds at most {max_topics} topics; this one asks for {}",
                topics.len()
            )));
        }
        Ok(SubscribeParams {
            topics,
            since,
            wait_secs,
            limit,
            resume_from_acks,
        })
    }
}

impl SubscribeQuery {
    /// Parses and authorizes the query; `poll` allows `wait` and `limit`.
    pub async fn parse(
        req: &HttpRequest,
        state: &AppState,
        poll: bool,
    ) -> Result<SubscribeQuery, ApiError> {
        let principal = subscriber_credential(req, state)
            .await?
            .ok_or(AuthError::Missing)?;
        let SubscribeParams {
            topics,
            since,
            wait_secs,
            limit,
            resume_from_acks,
        } = SubscribeParams::parse(req.query_string(), poll, state.sessions.settings.max_topics)?;
        let forbidden: Vec<&str> = topics
            .iter()
            .filter(|t| !principal.may_subscribe(t))
            .map(Topic::as_str)
            .collect();
        if !forbidden.is_empty() {
            return Err(AuthError::Forbidden(format!(
                "the token may not subscribe to {}",
                forbidden.join(", ")
            ))
            .into());
        }
        let mut since = since.unwrap_or_default();
        if resume_from_acks {
            state
                .sessions
                .acks
                .resume(&principal.sub, &topics, &mut since)
                .await?;
        }
        Ok(SubscribeQuery {
            principal,
            topics,
            since,
            wait_secs,
            limit,
        })
    }
}

/// A subscriber's credentials, in the contract's order of preference:
/// `Authorization: Bearer`, the session cookie, a `ticket` query parameter
/// (taken: it opens one connection), an `access_token` query parameter.
/// `None` when there are none (a WebSocket may send them in its first
/// frame); an error when they are there but wrong, expired or revoked.
pub async fn subscriber_credential(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<Principal>, ApiError> {
    let query = || form_urlencoded::parse(req.query_string().as_bytes());
    let param = |name: &str| {
        query()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    };
    let token = if let Some(token) = crate::auth::bearer(req) {
        Some(token.to_owned())
    } else if let Some(cookie) = req
        .cookie(&state.auth_cookie)
        .filter(|c| !c.value().is_empty())
    {
        Some(cookie.value().to_owned())
    } else if let Some(ticket) = param("ticket") {
        let principal = redeem_ticket(state, &ticket).await?;
        return Ok(Some(state.sessions.admit(principal)?));
    } else {
        param("access_token")
    };
    match token {
        Some(token) => Ok(Some(state.sessions.verify(&token)?)),
        None => Ok(None),
    }
}

/// Takes `ticket` from the store (on whichever node minted it): the
/// principal it stands for, once.
async fn redeem_ticket(state: &AppState, ticket: &str) -> Result<Principal, ApiError> {
    let refused = || {
        ApiError::from(AuthError::Token(TokenError::Invalid(
            "unknown, used or expired ticket: get a new one from POST /v1/tickets",
        )))
    };
    let key = crate::auth::tickets::key(ticket).ok_or_else(refused)?;
    let grant = state
        .store
        .take_ticket(&key, crate::event::now_ms())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "redeeming a ticket failed: the store is unavailable");
            ApiError::Unavailable("the store is unavailable; retry shortly".into())
        })?
        .ok_or_else(refused)?;
    crate::auth::tickets::decode_grant(&grant).ok_or_else(refused)
}

/// The caller, authenticated by its bearer token.
pub struct Bearer(pub Principal);

impl FromRequest for Bearer {
    type Error = ApiError;
    type Future = Ready<Result<Bearer, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Bearer, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("the application always registers its state");
    let token = crate::auth::bearer(req).ok_or(AuthError::Missing)?;
    Ok(Bearer(state.sessions.verify(token)?))
}

/// Registers every route. The endpoints that act for a subscriber check the
/// page's `Origin` first; those that pages reach with `fetch` or
/// `EventSource` answer CORS for the allowed origins.
pub fn routes(origins: Arc<OriginPolicy>) -> impl Fn(&mut web::ServiceConfig) {
    move |cfg| {
        let browser = |path: &str, route: actix_web::Route| {
            web::resource(path)
                .route(route)
                .wrap(origin::cors(origins.clone()))
                .wrap(actix_web::middleware::from_fn(origin::enforce))
        };
        cfg.route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(metrics::metrics))
            .route("/openapi.json", web::get().to(openapi::openapi))
            .route("/v1/admin/stats", web::get().to(admin::stats))
            .route("/v1/dev/token", web::get().to(console::dev_token))
            .route("/v1/publish", web::post().to(publish::publish))
            .service(browser("/v1/tickets", web::post().to(auth::ticket)))
            .route("/v1/admin/revoke", web::post().to(auth::revoke))
            .service(browser("/v1/ack", web::post().to(ack::ack)))
            .route("/v1/acks", web::get().to(ack::receipts))
            .route("/v1/admin/acks", web::delete().to(ack::delete))
            .service(
                web::resource("/v1/ws")
                    .route(web::get().to(crate::session::ws::handler))
                    .wrap(actix_web::middleware::from_fn(origin::enforce)),
            )
            .service(browser(
                "/v1/sse",
                web::get().to(crate::session::sse::handler),
            ))
            .service(browser(
                "/v1/poll",
                web::get().to(crate::session::poll::handler),
            ))
            .configure(assets::routes);
    }
}

/// Answers unknown routes with a problem document.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Turns query-string errors into problem documents.
pub fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidParameter(err.to_string()).into()
}
