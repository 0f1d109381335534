//! The WebSocket side of acknowledgments: the `ack` frame, and a
//! `subscribe` frame with `"resume":"ack"`.
//!
//! An `ack` is not answered when it is taken (acknowledging every event
//! must stay cheap); a refused one gets an `error` frame.

use actix::prelude::*;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::json;

use super::Session;
use super::ws::{Ws, WsFrame};
use crate::ack::AckError;
use crate::topic::{Cursor, Topic};

/// `{"op":"ack","cursor":"orders.42:17,user.7:3"}`
#[derive(Deserialize)]
pub struct AckOp {
    pub cursor: String,
}

/// The value of a `subscribe` frame's `resume` field: `"ack"` resumes the
/// topics without a `since` position from the subscriber's acknowledged
/// positions. Anything else is refused.
pub fn resume_from_acks(resume: Option<&str>) -> Result<bool, &'static str> {
    match resume {
        None => Ok(false),
        Some("ack") => Ok(true),
        Some(_) => Err(r#"subscribe: "resume" is "ack" or absent"#),
    }
}

fn error_frame(session: &mut Session<Ws>, error: &AckError, ctx: &mut Context<Session<Ws>>) {
    let topics = error.topics();
    let value = if topics.is_empty() {
        json!({"op": "error", "code": error.code(), "message": error.to_string()})
    } else {
        json!({"op": "error", "code": error.code(), "topics": topics, "message": error.to_string()})
    };
    let text = value.to_string();
    let size = text.len();
    session.send(WsFrame::Text(ByteString::from(text)), size, ctx);
}

impl Session<Ws> {
    /// An `ack` frame: checked, then taken into the node's pending set.
    pub fn on_ack(&mut self, op: AckOp, ctx: &mut Context<Self>) {
        let Some(principal) = self.principal.as_ref() else {
            return;
        };
        let entries = match crate::ack::parse(&op.cursor, principal) {
            Ok(entries) => entries,
            Err(e) => return error_frame(self, &e, ctx),
        };
        if entries.is_empty() {
            return;
        }
        let sub = principal.sub.clone();
        // What this connection has sent is known to exist: no store read.
        let known: Option<Vec<u64>> = entries
            .iter()
            .map(|(topic, seq)| self.subs.position(topic).filter(|p| seq <= p))
            .collect();
        if let Some(heads) = known {
            if let Err(e) = self.env.acks.offer(&sub, &entries, &heads) {
                error_frame(self, &e, ctx);
            }
            return;
        }
        let store = self.env.store.clone();
        let topics: Vec<Topic> = entries.iter().map(|(t, _)| t.clone()).collect();
        let heads = async move { store.heads(&topics).await };
        ctx.spawn(heads.into_actor(self).map(move |heads, session, ctx| {
            let taken = heads
                .map_err(AckError::from)
                .and_then(|heads| crate::ack::check_heads(&entries, &heads).map(|()| heads))
                .and_then(|heads| session.env.acks.offer(&sub, &entries, &heads));
            if let Err(e) = taken {
                error_frame(session, &e, ctx);
            }
        }));
    }

    /// Subscribes `topics`, those without a position in `since` from the
    /// subscriber's acknowledged positions (after this node's pending
    /// acknowledgments of that subscriber are written).
    pub fn subscribe_from_acks(
        &mut self,
        topics: Vec<Topic>,
        mut since: Cursor,
        ctx: &mut Context<Self>,
    ) {
        if topics.is_empty() {
            return;
        }
        let Some(principal) = self.principal.as_ref() else {
            return;
        };
        let sub = principal.sub.clone();
        let acks = self.env.acks.clone();
        let read_topics = topics.clone();
        let positions = async move {
            acks.resume(&sub, &read_topics, &mut since).await?;
            Ok::<Cursor, AckError>(since)
        };
        ctx.spawn(
            positions
                .into_actor(self)
                .map(move |since, session, ctx| match since {
                    Ok(since) => session.subscribe(topics, since, ctx),
                    Err(e) => {
                        let topics: Vec<String> = topics.iter().map(Topic::to_string).collect();
                        let text = json!({
                            "op": "error", "code": e.code(), "topics": topics,
                            "message": format!("reading the acknowledged positions failed: {e}"),
                        })
                        .to_string();
                        let size = text.len();
                        session.send(WsFrame::Text(ByteString::from(text)), size, ctx);
                    }
                }),
        );
    }
}
