//! The threads that run long-lived streams, apart from the HTTP workers.
//!
//! A lean stream's connection, its session actor and every write of its
//! fan-out live on one of these threads. The HTTP workers keep requests
//! that come and go (publishing above all): a publish's `201` waits for its
//! commit, not behind the fan-out of the events before it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_rt::{Arbiter, ArbiterHandle};
use actix_web::rt::net::TcpStream;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;

use super::Application;
use super::lean;

/// Builds the application for one stream thread.
pub type MakeApplication =
    Box<dyn Fn() -> LocalBoxFuture<'static, Option<Application>> + Send + Sync>;

thread_local! {
    /// This stream thread's application.
    static APP: RefCell<Option<Rc<Application>>> = const { RefCell::new(None) };
}

/// The stream threads. They run until the process exits: by then the
/// drain has closed their connections, and a thread torn down earlier would
/// drop the actix and tokio state its thread-locals still refer to.
pub struct Streams {
    _threads: Vec<Arbiter>,
    handles: Vec<ArbiterHandle>,
    next: AtomicUsize,
}

impl Streams {
    /// Starts `threads` stream threads, each with its own application.
    pub fn start(threads: usize, make: MakeApplication) -> Streams {
        let make = std::sync::Arc::new(make);
        let threads: Vec<Arbiter> = (0..threads.max(1))
            .map(|_| {
                let arbiter = Arbiter::new();
                let make = make.clone();
                arbiter.spawn_fn(move || {
                    let app = make();
                    actix_rt::spawn(async move {
                        match app.await {
                            Some(app) => APP.with(|cell| *cell.borrow_mut() = Some(Rc::new(app))),
                            None => {
                                tracing::error!("a stream thread could not build its application")
                            }
                        }
                    });
                });
                arbiter
            })
            .collect();
        let handles = threads.iter().map(Arbiter::handle).collect();
        Streams {
            _threads: threads,
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// Hands a connection whose first request `head` opens a stream to the
    /// next stream thread. `rest`: bytes the client sent after the head.
    pub fn take(&self, io: TcpStream, head: lean::Checked, rest: Option<Bytes>) {
        let io = match io.into_std() {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "handing a connection to a stream thread failed");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn_fn(move || {
            actix_rt::spawn(serve(io, head, rest));
        });
    }
}

/// Serves a handed-over connection on this stream thread.
async fn serve(io: std::net::TcpStream, head: lean::Checked, rest: Option<Bytes>) {
    let Ok(io) = TcpStream::from_std(io) else {
        return;
    };
    // The thread's application is set by the first task the thread ran.
    let mut app = APP.with(|cell| cell.borrow().clone());
    for _ in 0..100 {
        if app.is_some() {
            break;
        }
        tokio::task::yield_now().await;
        app = APP.with(|cell| cell.borrow().clone());
    }
    let Some(app) = app else {
        tracing::warn!("a stream thread without its application dropped a connection");
        return;
    };
    let streaming = Box::pin(lean::respond(io, lean::request(head), rest, &app)).await;
    if let Some(streaming) = streaming {
        let _ = streaming.await;
    }
}
