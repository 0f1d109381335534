//! Every open connection of the node (sessions and pending long polls), so
//! that they can be told to close: when the node drains, when a token is
//! revoked.

use std::collections::HashMap;

use actix::prelude::*;
use parking_lot::Mutex;

use super::Close;
use crate::auth::{Revocations, TokenId};
use crate::close::CloseReason;

/// One open connection: how to close it and whose token it holds.
struct Entry {
    close: Recipient<Close>,
    /// `None` until a WebSocket authenticates.
    token: Option<TokenId>,
    /// A pending long poll (told first when draining: it answers normally).
    long_poll: bool,
}

/// Every open connection of the node (sessions and pending long polls), so
/// that they can be told to close (drain, revocation).
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<u64, Entry>>,
}

impl Connections {
    /// Adds connection `id`, holding `token` if it has authenticated.
    pub fn add(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>) {
        self.insert(id, close, token, false);
    }

    /// Adds pending long poll `id`, holding `token`.
    pub fn add_long_poll(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>) {
        self.insert(id, close, token, true);
    }

    fn insert(&self, id: u64, close: Recipient<Close>, token: Option<TokenId>, long_poll: bool) {
        self.open.lock().insert(
            id,
            Entry {
                close,
                token,
                long_poll,
            },
        );
    }

    /// Records that connection `id` now holds `token` (a WebSocket `auth`).
    pub fn set_token(&self, id: u64, token: TokenId) {
        if let Some(entry) = self.open.lock().get_mut(&id) {
            entry.token = Some(token);
        }
    }

    /// Tells every connection whose token `revocations` covers to close as
    /// revoked. Returns how many were told.
    pub fn close_revoked(&self, revocations: &Revocations) -> usize {
        let revoked: Vec<Recipient<Close>> = self
            .open
            .lock()
            .values()
            .filter(|e| e.token.as_ref().is_some_and(|t| revocations.covers(t)))
            .map(|e| e.close.clone())
            .collect();
        for close in &revoked {
            close.do_send(Close(CloseReason::Revoked));
        }
        revoked.len()
    }

    /// Removes connection `id`.
    pub fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open connection with its id, pending long polls first: the
    /// order a draining node tells them to go.
    pub fn drain_order(&self) -> Vec<(u64, Recipient<Close>)> {
        let mut open: Vec<(bool, u64, Recipient<Close>)> = self
            .open
            .lock()
            .iter()
            .map(|(id, e)| (!e.long_poll, *id, e.close.clone()))
            .collect();
        open.sort_by_key(|(not_poll, id, _)| (*not_poll, *id));
        open.into_iter().map(|(_, id, close)| (id, close)).collect()
    }
}
