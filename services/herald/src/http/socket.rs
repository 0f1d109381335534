//! Socket options of every accepted connection.
//!
//! actix-http has no write timeout: a response whose socket never drains
//! (a client that keeps its TCP receive window at zero) is simply not
//! written, and the connection keeps its descriptor and buffers for as long
//! as the client lives. The kernel's `TCP_USER_TIMEOUT` bounds that: once
//! written data has stayed unsent or unacknowledged for the timeout, the
//! kernel resets the connection, the server's next write fails, and
//! actix-http drops the connection (and with it a WebSocket's writer or an
//! SSE body, which ends the session).

use std::any::Any;
use std::time::Duration;

use actix_web::dev::Extensions;

/// An `HttpServer::on_connect` callback that sets the write timeout on
/// each plain TCP connection (`None`: no limit).
pub fn on_connect(write_timeout: Option<Duration>) -> impl Fn(&dyn Any, &mut Extensions) {
    move |conn, _| {
        let (Some(timeout), Some(stream)) = (
            write_timeout,
            conn.downcast_ref::<actix_web::rt::net::TcpStream>(),
        ) else {
            return;
        };
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(error = %e, "setting the write timeout of a connection failed");
        }
    }
}
