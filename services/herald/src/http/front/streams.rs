//! The threads that run long-lived streams, apart from the HTTP workers.
//!
//! A stream's connection, its session actor and every write of its fan-out
//! live on one of these threads. The HTTP workers keep requests that come
//! and go (publishing above all): a publish's `201` waits for its commit,
//! not behind the fan-out of the events before it.
//!
//! [`Streams`] owns its threads. Each thread builds its application and
//! starts its hub before [`Streams::start`] returns, so the first
//! connection finds both ready; it then takes connections from its own
//! channel. [`Streams::stop`] closes the channels; each thread lets go of
//! its application and its hub (the hub leaves the node's set) while its
//! runtime still runs, reports that it is done, and is joined.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_rt::Arbiter;
use actix_web::rt::net::TcpStream;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::Application;
use super::lean;
use crate::hub::Hubs;

/// Builds the application for one stream thread.
pub type MakeApplication =
    Arc<dyn Fn() -> LocalBoxFuture<'static, Option<Application>> + Send + Sync>;

/// A connection on its way to a stream thread: the socket, its stream
/// request, and what the client sent after the request.
type Handoff = (std::net::TcpStream, lean::Checked, Option<Bytes>);

/// One stream thread, as its owner holds it.
struct Thread {
    arbiter: Arbiter,
    /// Answers once the thread has let go of its application and hub.
    done: oneshot::Receiver<()>,
}

/// The stream threads.
pub struct Streams {
    /// Each thread's channel; emptied by [`Streams::stop`].
    senders: std::sync::RwLock<Vec<mpsc::UnboundedSender<Handoff>>>,
    threads: Mutex<Vec<Thread>>,
    next: AtomicUsize,
}

impl Streams {
    /// Starts `threads` stream threads, each with its own application and
    /// hub; returns once every one is ready, or `None` when one could not
    /// build its application.
    pub async fn start(threads: usize, make: MakeApplication, hubs: Arc<Hubs>) -> Option<Streams> {
        let mut senders = Vec::new();
        let mut started = Vec::new();
        for _ in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let (ready_tx, ready) = oneshot::channel();
            let (done_tx, done) = oneshot::channel();
            let arbiter = Arbiter::new();
            let make = make.clone();
            let hubs = hubs.clone();
            arbiter.spawn_fn(move || {
                actix_rt::spawn(run(make, hubs, rx, ready_tx, done_tx));
            });
            senders.push(tx);
            started.push((Thread { arbiter, done }, ready));
        }
        let mut threads = Vec::new();
        let mut all_ready = true;
        for (thread, ready) in started {
            all_ready &= ready.await.unwrap_or(false);
            threads.push(thread);
        }
        let streams = Streams {
            senders: std::sync::RwLock::new(senders),
            threads: Mutex::new(threads),
            next: AtomicUsize::new(0),
        };
        if all_ready {
            Some(streams)
        } else {
            streams.stop().await;
            None
        }
    }

    /// Hands a connection whose request `head` opens a stream to the next
    /// stream thread. `rest`: bytes the client sent after the request.
    pub fn take(&self, io: TcpStream, head: lean::Checked, rest: Option<Bytes>) {
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "handing a connection to a stream thread failed");
                return;
            }
        };
        let senders = self
            .senders
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if senders.is_empty() {
            // Stopping: the connection closes.
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % senders.len();
        // A thread that already stopped drops the connection, which closes.
        let _ = senders[i].send((io, head, rest));
    }

    /// Stops the threads: no connection is taken any more; each thread
    /// lets go of its application and hub, then is joined. Called once the
    /// drain has closed the streams.
    pub async fn stop(&self) {
        self.senders
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for thread in threads {
            let _ = thread.done.await;
            thread.arbiter.stop();
            let joined = tokio::task::spawn_blocking(move || thread.arbiter.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("a stream thread did not end cleanly");
            }
        }
    }
}

/// A stream thread's life: build the application and start the hub, say
/// so, serve the connections handed over, then let go of both.
async fn run(
    make: MakeApplication,
    hubs: Arc<Hubs>,
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    ready: oneshot::Sender<bool>,
    done: oneshot::Sender<()>,
) {
    let Some(app) = make().await else {
        tracing::error!("a stream thread could not build its application");
        let _ = ready.send(false);
        let _ = done.send(());
        return;
    };
    let app = Rc::new(app);
    crate::hub::join_thread(&hubs);
    let _ = ready.send(true);
    while let Some((io, head, rest)) = handoffs.recv().await {
        actix_rt::spawn(serve(io, head, rest, app.clone()));
    }
    // The drain has ended the streams; what is left goes now, while this
    // thread's runtime still runs.
    drop(app);
    crate::hub::leave_thread(&hubs);
    let _ = done.send(());
}

/// Serves a handed-over connection on this stream thread.
async fn serve(
    io: std::net::TcpStream,
    head: lean::Checked,
    rest: Option<Bytes>,
    app: Rc<Application>,
) {
    let Ok(io) = TcpStream::from_std(io) else {
        return;
    };
    let streaming = Box::pin(lean::respond(io, lean::request(head), rest, &app)).await;
    drop(app);
    if let Some(streaming) = streaming {
        let _ = streaming.await;
    }
}
