//! The request body stream of a lean WebSocket: the bytes the connection
//! reads, handed to the WebSocket's frame decoder. Bounded: past
//! [`HIGH_WATER`] unread bytes the connection stops reading the socket
//! until the decoder catches up. An idle one holds no buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use actix_http::error::PayloadError;
use bytes::Bytes;

/// Unread bytes past which the connection stops reading.
pub const HIGH_WATER: usize = 64 * 1024;

#[derive(Default)]
struct Shared {
    pieces: VecDeque<Bytes>,
    unread: usize,
    eof: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// The connection's end.
pub struct Feed(Weak<RefCell<Shared>>);

/// The decoder's end: a stream of what the client sent.
pub struct Body(Rc<RefCell<Shared>>);

/// Whether the connection should read the socket now.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    More,
    /// The decoder has enough unread; the task is woken when it has not.
    Later,
    /// The decoder is gone.
    Nothing,
}

/// A connected pair.
pub fn pair() -> (Feed, Body) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    (Feed(Rc::downgrade(&shared)), Body(shared))
}

impl Feed {
    /// Hands `bytes` to the decoder.
    pub fn push(&self, bytes: Bytes) {
        if let Some(shared) = self.0.upgrade() {
            let mut shared = shared.borrow_mut();
            shared.unread += bytes.len();
            shared.pieces.push_back(bytes);
            if let Some(reader) = shared.reader.take() {
                reader.wake();
            }
        }
    }

    /// The client sent everything it will.
    pub fn end(&self) {
        if let Some(shared) = self.0.upgrade() {
            let mut shared = shared.borrow_mut();
            shared.eof = true;
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
        if shared.unread < HIGH_WATER {
            Want::More
        } else {
            shared.writer = Some(cx.waker().clone());
            Want::Later
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.end();
    }
}

impl futures_util::Stream for Body {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut shared = self.0.borrow_mut();
        if let Some(piece) = shared.pieces.pop_front() {
            shared.unread -= piece.len();
            if shared.pieces.is_empty() {
                // Give back the queue's memory while the client is quiet.
                shared.pieces = VecDeque::new();
            }
            if let Some(writer) = shared.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(piece)));
        }
        if shared.eof {
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
    async fn bytes_arrive_in_order_then_the_end() {
        let (feed, mut body) = pair();
        feed.push(Bytes::from_static(b"ab"));
        feed.push(Bytes::from_static(b"c"));
        drop(feed);
        assert_eq!(
            body.next().await.map(|r| r.ok()),
            Some(Some(Bytes::from_static(b"ab")))
        );
        assert_eq!(
            body.next().await.map(|r| r.ok()),
            Some(Some(Bytes::from_static(b"c")))
        );
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn the_feed_pauses_past_the_high_water_mark_and_stops_when_the_reader_goes() {
        let (feed, mut body) = pair();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(feed.want(&mut cx), Want::More);
        feed.push(Bytes::from(vec![0; HIGH_WATER]));
        assert_eq!(feed.want(&mut cx), Want::Later);
        assert!(body.next().await.is_some());
        assert_eq!(feed.want(&mut cx), Want::More);
        drop(body);
        assert_eq!(feed.want(&mut cx), Want::Nothing);
    }
}
