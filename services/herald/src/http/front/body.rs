//! A request's body between the connection and the application: the
//! connection reads it from the socket while the handler runs, and only as
//! fast as the handler takes it.
//!
//! The handler's side is the request's payload stream; the connection's
//! side ([`Feed`]) learns whether more is wanted (nothing is read from the
//! socket while [`MAX_BUFFERED_BYTES`] wait unread, and nothing at all
//! before the handler first asks, so `100 Continue` goes out only to a
//! request whose handler reads its body), pushes what arrives, and ends it,
//! or fails it when the client stalls.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Most body bytes read ahead of the handler.
pub const MAX_BUFFERED_BYTES: usize = 64 * 1024;

/// How a body ended short of its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client sent nothing for too long.
    TimedOut,
    /// The client closed the connection, or the framing was wrong.
    Incomplete,
}

#[derive(Default)]
struct Shared {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    /// The handler asked for data at least once.
    asked: bool,
    ended: bool,
    failed: Option<Failure>,
    /// The handler dropped its side: nothing more is wanted.
    dropped: bool,
    /// The handler, waiting for data.
    reader: Option<Waker>,
    /// The connection, waiting for the handler to want more.
    feeder: Option<Waker>,
}

/// The handler's side: the request's payload.
pub struct Body(Rc<RefCell<Shared>>);

/// The connection's side.
pub struct Feed(Rc<RefCell<Shared>>);

/// A body's two sides.
pub fn channel() -> (Feed, Body) {
    let shared = Rc::new(RefCell::new(Shared::default()));
    (Feed(shared.clone()), Body(shared))
}

impl Stream for Body {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut shared = self.0.borrow_mut();
        shared.asked = true;
        if let Some(chunk) = shared.chunks.pop_front() {
            shared.buffered -= chunk.len();
            if let Some(feeder) = shared.feeder.take() {
                feeder.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        if let Some(failure) = shared.failed {
            return Poll::Ready(Some(Err(match failure {
                Failure::TimedOut => PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client sent no body in time",
                )),
                Failure::Incomplete => PayloadError::Incomplete(None),
            })));
        }
        shared.reader = Some(cx.waker().clone());
        if let Some(feeder) = shared.feeder.take() {
            feeder.wake();
        }
        Poll::Pending
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut shared = self.0.borrow_mut();
        shared.dropped = true;
        shared.chunks.clear();
        shared.buffered = 0;
        if let Some(feeder) = shared.feeder.take() {
            feeder.wake();
        }
    }
}

/// What the handler wants of the body now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// More bytes.
    More,
    /// Nothing: the handler dropped the body.
    Nothing,
}

impl Feed {
    /// Ready once the handler has asked for the body and has room for more
    /// (or dropped it).
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<Want> {
        let mut shared = self.0.borrow_mut();
        if shared.dropped {
            return Poll::Ready(Want::Nothing);
        }
        if shared.asked && shared.buffered < MAX_BUFFERED_BYTES {
            return Poll::Ready(Want::More);
        }
        shared.feeder = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits until the handler wants more, or nothing.
    pub async fn want(&self) -> Want {
        std::future::poll_fn(|cx| self.poll_want(cx)).await
    }

    /// Hands the handler a piece of the body.
    pub fn push(&self, chunk: Bytes) {
        let mut shared = self.0.borrow_mut();
        if shared.dropped || chunk.is_empty() {
            return;
        }
        shared.buffered += chunk.len();
        shared.chunks.push_back(chunk);
        wake_reader(&mut shared);
    }

    /// The body is complete.
    pub fn end(&self) {
        let mut shared = self.0.borrow_mut();
        shared.ended = true;
        wake_reader(&mut shared);
    }

    /// The body will not complete.
    pub fn fail(&self, failure: Failure) {
        let mut shared = self.0.borrow_mut();
        shared.failed = Some(failure);
        wake_reader(&mut shared);
    }
}

fn wake_reader(shared: &mut Shared) {
    if let Some(reader) = shared.reader.take() {
        reader.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use futures_util::task::noop_waker_ref;

    #[test]
    fn nothing_is_wanted_before_the_handler_asks_and_while_its_buffer_is_full() {
        let (feed, mut body) = channel();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(feed.poll_want(&mut cx), Poll::Pending, "not asked yet");
        assert!(body.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(feed.poll_want(&mut cx), Poll::Ready(Want::More));
        feed.push(Bytes::from(vec![0; MAX_BUFFERED_BYTES]));
        assert_eq!(feed.poll_want(&mut cx), Poll::Pending, "full");
        match body.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(chunk.len(), MAX_BUFFERED_BYTES),
            other => panic!("expected the chunk, got {other:?}"),
        }
        assert_eq!(feed.poll_want(&mut cx), Poll::Ready(Want::More));
        feed.end();
        assert!(matches!(body.poll_next_unpin(&mut cx), Poll::Ready(None)));
        drop(body);
        assert_eq!(feed.poll_want(&mut cx), Poll::Ready(Want::Nothing));
    }

    #[test]
    fn a_failed_body_is_an_error_after_what_arrived() {
        let (feed, mut body) = channel();
        let mut cx = Context::from_waker(noop_waker_ref());
        feed.push(Bytes::from_static(b"abc"));
        feed.fail(Failure::TimedOut);
        assert!(matches!(
            body.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert!(matches!(
            body.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Err(PayloadError::Io(_))))
        ));
    }
}
