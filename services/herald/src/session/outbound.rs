//! A connection's outbound queue: bounded in items and in bytes, with a
//! final message (a close) that jumps the queue.
//!
//! The connection's actor pushes frames without waiting; when the queue is
//! full the client is not keeping up and is closed as a slow consumer. The
//! transport side (the WebSocket writer, or the SSE response body) takes
//! frames as the socket accepts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The queue is full: the client is not keeping up.
    Full,
    /// The transport's end is gone: the client disconnected.
    Closed,
}

/// How full the queue is, seen by both ends.
struct Fill {
    bytes: AtomicUsize,
    /// Signalled each time the transport takes a frame.
    progress: Notify,
    /// Most items ever queued at once.
    high_water: AtomicUsize,
}

/// The actor's end.
pub struct Outbound<T> {
    tx: mpsc::Sender<(T, usize)>,
    fill: Arc<Fill>,
    max_items: usize,
    max_bytes: usize,
    last: Option<oneshot::Sender<T>>,
    /// Bytes of every item ever queued (only this end writes it).
    total_bytes: std::sync::atomic::AtomicU64,
}

/// The transport's end.
pub struct OutboundRx<T> {
    rx: mpsc::Receiver<(T, usize)>,
    fill: Arc<Fill>,
    last: Option<oneshot::Receiver<T>>,
    done: bool,
}

/// A queue of at most `max_items` frames and `max_bytes` bytes.
pub fn channel<T>(max_items: usize, max_bytes: usize) -> (Outbound<T>, OutboundRx<T>) {
    let (tx, rx) = mpsc::channel(max_items.max(1));
    let (last_tx, last_rx) = oneshot::channel();
    let fill = Arc::new(Fill {
        bytes: AtomicUsize::new(0),
        progress: Notify::new(),
        high_water: AtomicUsize::new(0),
    });
    (
        Outbound {
            tx,
            fill: fill.clone(),
            max_items: max_items.max(1),
            max_bytes,
            last: Some(last_tx),
            total_bytes: std::sync::atomic::AtomicU64::new(0),
        },
        OutboundRx {
            rx,
            fill,
            last: Some(last_rx),
            done: false,
        },
    )
}

impl<T> Outbound<T> {
    /// Queues `item` of `size` bytes, or says the queue is full.
    pub fn push(&self, item: T, size: usize) -> Result<(), Full> {
        let queued = self.fill.bytes.load(Ordering::Acquire);
        // One item may always be queued alone, whatever its size.
        if queued > 0 && queued + size > self.max_bytes {
            return Err(Full::Full);
        }
        self.tx.try_send((item, size)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Full::Full,
            mpsc::error::TrySendError::Closed(_) => Full::Closed,
        })?;
        self.fill.bytes.fetch_add(size, Ordering::AcqRel);
        self.fill
            .high_water
            .fetch_max(self.len(), Ordering::Relaxed);
        self.total_bytes.fetch_add(size as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of every item ever queued (the final frame aside).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.max_items - self.tx.capacity()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.fill.bytes.load(Ordering::Acquire)
    }

    /// Most frames ever waiting at once.
    pub fn high_water(&self) -> usize {
        self.fill.high_water.load(Ordering::Relaxed)
    }

    /// Whether the transport's end is gone (the client disconnected).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Waits until at most `items` frames and `bytes` bytes are waiting,
    /// for bulk work (replay) that must not crowd out live events.
    pub fn until_below(&self, items: usize, bytes: usize) -> impl Future<Output = ()> + 'static
    where
        T: 'static,
    {
        let fill = self.fill.clone();
        let tx = self.tx.clone();
        let max_items = self.max_items;
        async move {
            loop {
                let notified = fill.progress.notified();
                let len = max_items - tx.capacity();
                if tx.is_closed() || (len <= items && fill.bytes.load(Ordering::Acquire) <= bytes) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// Sends `item` ahead of everything queued; the transport ends after it.
    /// Only the first call has an effect.
    pub fn finish(&mut self, item: T) {
        if let Some(last) = self.last.take() {
            let _ = last.send(item);
        }
    }
}

impl<T> OutboundRx<T> {
    /// The next frame: the final one as soon as it is set, else the oldest
    /// queued. `None` once the final frame was taken or the actor is gone.
    pub async fn next(&mut self) -> Option<T> {
        if self.done {
            return None;
        }
        let item = match &mut self.last {
            Some(last) => tokio::select! {
                biased;
                item = last => {
                    self.last = None;
                    if let Ok(item) = item {
                        self.done = true;
                        return Some(item);
                    }
                    self.rx.recv().await
                }
                item = self.rx.recv() => item,
            },
            None => self.rx.recv().await,
        };
        let (item, size) = item?;
        self.fill.bytes.fetch_sub(size, Ordering::AcqRel);
        self.fill.progress.notify_waiters();
        Some(item)
    }

    /// Waits until the final frame is set, and takes it.
    pub async fn last(&mut self) -> Option<T> {
        let last = self.last.as_mut()?;
        let item = last.await.ok();
        self.last = None;
        self.done = true;
        item
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
