//! What handlers extract from a request: the caller ([`Bearer`],
//! [`Admin`]), a subscriber's credentials in the contract's order of
//! preference, a subscribing request's query, and the version of the
//! protocol it speaks ([`check_protocol`]).

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};

use super::error::ApiError;
use crate::auth::{AuthError, Principal, TokenError};
use crate::node::Node;
use crate::topic::{Cursor, Topic};

/// Longest `wait` of a long poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// Default and largest `limit` of a poll.
pub const DEFAULT_POLL_LIMIT: usize = 100;
pub const MAX_POLL_LIMIT: usize = 1_000;

/// The version of the subscribing protocol (WebSocket frames, SSE messages,
/// poll answers) this server speaks. A client names the one it speaks with
/// `?protocol=` on `/v1/ws`, `/v1/sse` and `/v1/poll`; without it, 1.
pub const PROTOCOL_VERSION: &str = "1";

/// Checks the `protocol` parameters of a subscribing request's query: each
/// must name [`PROTOCOL_VERSION`]; none is version 1 (clients that predate
/// the parameter).
pub fn check_protocol(query: &str) -> Result<(), ApiError> {
    match form_urlencoded::parse(query.as_bytes())
        .find(|(key, value)| key == "protocol" && value != PROTOCOL_VERSION)
    {
        Some((_, value)) => Err(ApiError::UnsupportedProtocol(format!(
            "this server speaks protocol {PROTOCOL_VERSION}, not {value:?}: use a client made for it"
        ))),
        None => Ok(()),
    }
}

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
                    resume_from_acks =
                        crate::session::ack::resume_from_acks(Some(value.as_ref()))
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
        node: &Node,
        poll: bool,
    ) -> Result<SubscribeQuery, ApiError> {
        let principal = subscriber_credential(req, node)
            .await?
            .ok_or(AuthError::Missing)?;
        let SubscribeParams {
            topics,
            since,
            wait_secs,
            limit,
            resume_from_acks,
        } = SubscribeParams::parse(req.query_string(), poll, node.env.settings.max_topics)?;
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
            node.env
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
    node: &Node,
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
        .cookie(&node.settings.auth_cookie)
        .filter(|c| !c.value().is_empty())
    {
        Some(cookie.value().to_owned())
    } else if let Some(ticket) = param("ticket") {
        let principal = redeem_ticket(node, &ticket).await?;
        return Ok(Some(node.access.admit(principal)?));
    } else {
        param("access_token")
    };
    match token {
        Some(token) => Ok(Some(node.access.verify(&token)?)),
        None => Ok(None),
    }
}

/// Takes `ticket` from the store (on whichever node minted it): the
/// principal it stands for, once.
async fn redeem_ticket(node: &Node, ticket: &str) -> Result<Principal, ApiError> {
    let refused = || {
        ApiError::from(AuthError::Token(TokenError::Invalid(
            "unknown, used or expired ticket: get a new one from POST /v1/tickets",
        )))
    };
    let key = crate::auth::tickets::key(ticket).ok_or_else(refused)?;
    let grant = node
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
        ready(authenticate(req).map(Bearer))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Principal, ApiError> {
    let node = req
        .app_data::<web::Data<Node>>()
        .expect("the application always registers its node");
    let token = crate::auth::bearer(req).ok_or(AuthError::Missing)?;
    Ok(node.access.verify(token)?)
}

/// Proof that the caller is authenticated by its bearer token, an
/// administrator's (`403 forbidden` otherwise).
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|principal| {
            if principal.admin {
                Ok(Admin)
            } else {
                Err(AuthError::Forbidden(format!(
                    "{} {} needs an admin token",
                    req.method(),
                    req.path()
                ))
                .into())
            }
        }))
    }
}
