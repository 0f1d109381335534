//! A connection's outbound queue: bounded in items and in bytes, with a
//! final message (a close) that jumps the queue.
//!
//! The connection's actor pushes frames without waiting; when the queue is
//! full the client is not keeping up and is closed as a slow consumer. The
//! transport side (the WebSocket writer, or the SSE response body) takes
//! frames as the socket accepts them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::hub::Ticket;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The queue is full: the client is not keeping up.
    Full,
    /// The transport's end is gone: the client disconnected.
    Closed,
}

/// The queue itself. An idle connection's holds no allocation: the
/// frames' ring is given back whenever it empties.
struct Queue<T> {
    /// Each frame, its size, and for a live event its hold on the thread's
    /// books (given back as the frame is taken for the socket).
    items: VecDeque<(T, usize, Option<Ticket>)>,
    /// The final frame, once set.
    last: Option<T>,
    /// The final frame was taken: nothing follows it.
    done: bool,
    /// The transport waiting for a frame.
    waiting: Option<Waker>,
    /// Each end, while it exists.
    sender: bool,
    receiver: bool,
}

/// What both ends share.
struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// Frames and bytes waiting (read without the lock).
    items: AtomicUsize,
    bytes: AtomicUsize,
    /// Signalled each time the transport takes a frame, and when it goes.
    progress: Notify,
    /// Most items ever queued at once.
    high_water: AtomicUsize,
    /// The writer's socket takes nothing now ([`Stall`]).
    stalled: std::sync::atomic::AtomicBool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic while holding the lock leaves the queue consistent (every
        // change is a single push or pop), so a poisoned lock is used as is.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer's word to the queue about its socket: stalled (it takes
/// nothing now: the client is not reading) or taking again. While stalled,
/// the queue's frames hold no tickets on the thread's books: a client that
/// does not read is slow on its own account, and its queue's bounds deal
/// with it; publishers wait only for a node that cannot write.
#[derive(Clone)]
pub struct Stall(Arc<dyn Stalls>);

impl Stall {
    /// The socket stalled (`true`) or takes again.
    pub fn set(&self, stalled: bool) {
        self.0.set(stalled);
    }
}

trait Stalls: Send + Sync {
    fn set(&self, stalled: bool);
}

impl<T: Send> Stalls for Shared<T> {
    fn set(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
        if stalled {
            let tickets: Vec<Ticket> = self
                .lock()
                .items
                .iter_mut()
                .filter_map(|(_, _, ticket)| ticket.take())
                .collect();
            drop(tickets);
        }
    }
}

/// The actor's end.
pub struct Outbound<T> {
    shared: Arc<Shared<T>>,
    max_items: usize,
    max_bytes: usize,
    /// Bytes of every item ever queued (only this end writes it).
    total_bytes: AtomicU64,
}

/// The transport's end.
pub struct OutboundRx<T> {
    shared: Arc<Shared<T>>,
}

/// A queue of at most `max_items` frames and `max_bytes` bytes.
pub fn channel<T>(max_items: usize, max_bytes: usize) -> (Outbound<T>, OutboundRx<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            last: None,
            done: false,
            waiting: None,
            sender: true,
            receiver: true,
        }),
        items: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        progress: Notify::new(),
        high_water: AtomicUsize::new(0),
        stalled: std::sync::atomic::AtomicBool::new(false),
    });
    (
        Outbound {
            shared: shared.clone(),
            max_items: max_items.max(1),
            max_bytes,
            total_bytes: AtomicU64::new(0),
        },
        OutboundRx { shared },
    )
}

impl<T> Outbound<T> {
    /// Queues `item` of `size` bytes, or says the queue is full.
    pub fn push(&self, item: T, size: usize) -> Result<(), Full> {
        self.push_held(item, size, None)
    }

    /// Queues a live event's `item` with its `ticket` on the thread's
    /// books, which the queue gives back as the socket takes the frame (or
    /// drops it).
    pub fn push_held(&self, item: T, size: usize, ticket: Option<Ticket>) -> Result<(), Full> {
        // Behind a stalled socket, a frame holds nothing on the books.
        let ticket = ticket.filter(|_| !self.shared.stalled.load(Ordering::Acquire));
        let mut queue = self.shared.lock();
        if !queue.receiver {
            return Err(Full::Closed);
        }
        let queued = self.shared.bytes.load(Ordering::Acquire);
        // One item may always be queued alone, whatever its size.
        if queue.items.len() >= self.max_items || (queued > 0 && queued + size > self.max_bytes) {
            return Err(Full::Full);
        }
        queue.items.push_back((item, size, ticket));
        let len = queue.items.len();
        let waiting = queue.waiting.take();
        drop(queue);
        self.shared.items.store(len, Ordering::Release);
        self.shared.bytes.fetch_add(size, Ordering::AcqRel);
        self.shared.high_water.fetch_max(len, Ordering::Relaxed);
        self.total_bytes.fetch_add(size as u64, Ordering::Relaxed);
        if let Some(waiting) = waiting {
            waiting.wake();
        }
        Ok(())
    }

    /// Bytes of every item ever queued (the final frame aside).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    /// Frames waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shared.items.load(Ordering::Acquire)
    }

    /// Bytes waiting.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }

    /// Most frames ever waiting at once.
    pub fn high_water(&self) -> usize {
        self.shared.high_water.load(Ordering::Relaxed)
    }

    /// Whether the transport's end is gone (the client disconnected).
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().receiver
    }

    /// Waits until at most `items` frames and `bytes` bytes are waiting,
    /// for bulk work (replay) that must not crowd out live events.
    pub fn until_below(&self, items: usize, bytes: usize) -> impl Future<Output = ()> + 'static
    where
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            loop {
                let notified = shared.progress.notified();
                let closed = !shared.lock().receiver;
                if closed
                    || (shared.items.load(Ordering::Acquire) <= items
                        && shared.bytes.load(Ordering::Acquire) <= bytes)
                {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Sends `item` ahead of everything queued; the transport ends after it.
    /// Only the first call has an effect.
    pub fn finish(&mut self, item: T) {
        let mut queue = self.shared.lock();
        if queue.last.is_some() || queue.done {
            return;
        }
        queue.last = Some(item);
        if let Some(waiting) = queue.waiting.take() {
            drop(queue);
            waiting.wake();
        }
    }
}

impl<T> Drop for Outbound<T> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.sender = false;
        if let Some(waiting) = queue.waiting.take() {
            drop(queue);
            waiting.wake();
        }
    }
}

impl<T: Send + 'static> OutboundRx<T> {
    /// The handle through which the writer says its socket stalled.
    pub fn stall(&self) -> Stall {
        Stall(self.shared.clone())
    }
}

impl<T> OutboundRx<T> {
    /// The next frame: the final one as soon as it is set, else the oldest
    /// queued. `None` once the final frame was taken or the actor is gone.
    #[cfg(test)]
    pub async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`next`](Self::next), for hand-written futures.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut queue = self.shared.lock();
        if queue.done {
            return Poll::Ready(None);
        }
        if let Some(last) = queue.last.take() {
            queue.done = true;
            queue.items = VecDeque::new();
            drop(queue);
            self.shared.items.store(0, Ordering::Release);
            self.shared.bytes.store(0, Ordering::Release);
            self.shared.progress.notify_waiters();
            return Poll::Ready(Some(last));
        }
        if let Some((item, size, ticket)) = queue.items.pop_front() {
            let len = queue.items.len();
            if len == 0 && queue.items.capacity() > 4 {
                // Give the ring back while the connection is quiet.
                queue.items = VecDeque::new();
            }
            drop(queue);
            self.shared.items.store(len, Ordering::Release);
            self.shared.bytes.fetch_sub(size, Ordering::AcqRel);
            self.shared.progress.notify_waiters();
            // Taken for the socket: off the books.
            drop(ticket);
            return Poll::Ready(Some(item));
        }
        if !queue.sender {
            return Poll::Ready(None);
        }
        queue.waiting = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for OutboundRx<T> {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.receiver = false;
        // Never written: off the books now, not when the session goes.
        let items = std::mem::take(&mut queue.items);
        drop(queue);
        drop(items);
        self.shared.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_is_bounded_in_items_and_bytes_and_the_final_frame_jumps_it() {
        let (mut tx, mut rx) = channel::<u32>(3, 100);
        assert_eq!(tx.push(1, 10), Ok(()));
        assert_eq!(tx.push(2, 95), Err(Full::Full), "over the byte bound");
        assert_eq!(tx.push(2, 10), Ok(()));
        assert_eq!(tx.push(3, 10), Ok(()));
        assert_eq!(tx.push(4, 10), Err(Full::Full), "over the item bound");
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.bytes(), 20);
        tx.finish(99);
        assert_eq!(rx.next().await, Some(99));
        assert_eq!(rx.next().await, None, "nothing after the final frame");
        assert_eq!(tx.high_water(), 3);
    }

    #[tokio::test]
    async fn one_large_item_fits_an_empty_queue() {
        let (tx, mut rx) = channel::<u32>(3, 100);
        assert_eq!(tx.push(1, 1000), Ok(()));
        assert_eq!(rx.next().await, Some(1));
    }
}
