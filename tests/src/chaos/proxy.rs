//! A TCP proxy of the test's own, between one Herald node and NATS, that
//! can cut or stall the link on demand: the "network partition" faults of
//! the chaos run, on 127.0.0.1 only.
//!
//! - [`LinkMode::Pass`]: bytes flow both ways.
//! - [`LinkMode::Stall`]: bytes stop flowing (nothing is read, so the
//!   kernel's buffers fill and TCP pushes back) but the connections stay
//!   open: a blackhole that heals without a reconnect, unless one side
//!   gives up on the other first.
//! - [`LinkMode::Cut`]: every proxied connection is closed at once and new
//!   ones are closed as soon as they are accepted, until the link heals.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the link does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Stall,
    Cut,
}

/// A running proxy; stops accepting (and closes every connection) when
/// dropped.
pub struct LinkProxy {
    port: u16,
    mode: watch::Sender<LinkMode>,
    acceptor: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to
    /// 127.0.0.1:`upstream_port`.
    pub async fn start(upstream_port: u16) -> anyhow::Result<LinkProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(LinkMode::Pass);
        let modes = mode.clone();
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let acceptor = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *modes.borrow() == LinkMode::Cut {
                    drop(client);
                    continue;
                }
                let mode = modes.subscribe();
                connections.spawn(async move {
                    // NATS may be down: then the client sees the close.
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        splice(client, server, mode).await;
                    }
                });
                // Reap the finished ones so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(LinkProxy {
            port,
            mode,
            acceptor,
        })
    }

    /// `nats://127.0.0.1:PORT`: the URL to give the node.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Switches the link to `mode`.
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.set(LinkMode::Cut);
        self.acceptor.abort();
    }
}

/// Forwards both ways until either side closes or the link is cut.
async fn splice(client: TcpStream, server: TcpStream, mode: watch::Receiver<LinkMode>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // When one direction ends, dropping the other closes both sockets.
    tokio::select! {
        () = pump(client_read, server_write, mode.clone()) => {}
        () = pump(server_read, client_write, mode) => {}
    }
}

/// Copies `from` to `to`, pausing while the link stalls and returning when
/// it is cut or either side closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<LinkMode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // Wait out a stall; a cut (or the proxy going away) ends the copy.
        match mode.wait_for(|m| *m != LinkMode::Stall).await {
            Ok(m) if *m == LinkMode::Pass => {}
            _ => return,
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // The mode changed while waiting for bytes: look again.
            _ = mode.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes already read are delivered after a stall, never dropped
        // half-way (which would corrupt the protocol rather than cut it).
        match mode.wait_for(|m| *m != LinkMode::Stall).await {
            Ok(m) if *m == LinkMode::Pass => {}
            _ => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on a free port.
    async fn echo() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut got = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_proxy_passes_stalls_and_cuts() {
        let proxy = LinkProxy::start(echo().await).await.expect("proxy");
        let addr = (Ipv4Addr::LOCALHOST, proxy.port);
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, Duration::from_secs(5)).await,
            Some(b"ping".to_vec())
        );

        proxy.set(LinkMode::Stall);
        assert_eq!(
            round_trip(&mut stream, Duration::from_millis(300)).await,
            None,
            "nothing flows while stalled"
        );
        proxy.set(LinkMode::Pass);
        let mut late = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut late))
            .await
            .expect("the stalled bytes arrive after healing")
            .expect("read");
        assert_eq!(&late, b"ping");

        proxy.set(LinkMode::Cut);
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(end.is_ok(), "a cut closes the connection");
        let mut refused = TcpStream::connect(addr)
            .await
            .expect("accepted, then closed");
        assert_eq!(round_trip(&mut refused, Duration::from_secs(2)).await, None);

        proxy.set(LinkMode::Pass);
        let mut healed = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(
            round_trip(&mut healed, Duration::from_secs(5)).await,
            Some(b"ping".to_vec())
        );
    }
}
