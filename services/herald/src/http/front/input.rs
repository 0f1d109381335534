//! What a lean WebSocket's client sent, decoded, on its way to the
//! session: a queue between the connection (which reads and decodes) and
//! the session's message stream. Bounded: past [`MAX_WAITING`] unread
//! messages the connection stops reading the socket until the session
//! catches up. An idle one holds no allocation.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// Unread messages past which the connection stops reading.
pub const MAX_WAITING: usize = 64;

struct Shared<T> {
    items: VecDeque<T>,
    ended: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// The connection's end.
pub struct Feed<T>(Weak<RefCell<Shared<T>>>);

/// The session's end: a stream of what the client sent.
pub struct Input<T>(Rc<RefCell<Shared<T>>>);

/// Whether the connection should read the socket now.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    More,
    /// The session has enough unread; the task is woken when it has not.
    Later,
    /// The session is gone.
    Nothing,
}

/// A connected pair.
pub fn pair<T>() -> (Feed<T>, Input<T>) {
    let shared = Rc::new(RefCell::new(Shared {
        items: VecDeque::new(),
        ended: false,
        reader: None,
        writer: None,
    }));
    (Feed(Rc::downgrade(&shared)), Input(shared))
}

impl<T> Feed<T> {
    /// Hands `item` to the session.
    pub fn push(&self, item: T) {
        if let Some(shared) = self.0.upgrade() {
            let mut shared = shared.borrow_mut();
            shared.items.push_back(item);
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
        }
    }

    /// The client sent everything it will.
    pub fn end(&self) {
        if let Some(shared) = self.0.upgrade() {
            let mut shared = shared.borrow_mut();
            shared.ended = true;
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
        }
    }

    /// Whether to read the socket now.
    pub fn want(&self, cx: &mut Context<'_>) -> Want {
        let Some(shared) = self.0.upgrade() else {
            return Want::Nothing;
        };
        let mut shared = shared.borrow_mut();
        if shared.items.len() < MAX_WAITING {
            Want::More
        } else {
            shared.writer = Some(cx.waker().clone());
            Want::Later
        }
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<T> futures_util::Stream for Input<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut shared = self.0.borrow_mut();
        if let Some(item) = shared.items.pop_front() {
            if shared.items.is_empty() {
                // Give back the queue's memory while the client is quiet.
                shared.items = VecDeque::new();
            }
            if let Some(writer) = shared.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(item));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        shared.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn items_arrive_in_order_then_the_end() {
        let (feed, mut input) = pair();
        feed.push(1);
        feed.push(2);
        drop(feed);
        assert_eq!(input.next().await, Some(1));
        assert_eq!(input.next().await, Some(2));
        assert_eq!(input.next().await, None);
    }

    #[tokio::test]
    async fn the_feed_pauses_past_the_bound_and_stops_when_the_session_goes() {
        let (feed, mut input) = pair();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(feed.want(&mut cx), Want::More);
        for i in 0..MAX_WAITING {
            feed.push(i);
        }
        assert_eq!(feed.want(&mut cx), Want::Later);
        assert_eq!(input.next().await, Some(0));
        assert_eq!(feed.want(&mut cx), Want::More);
        drop(input);
        assert_eq!(feed.want(&mut cx), Want::Nothing);
    }
}
