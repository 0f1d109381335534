//! nginx as a reverse proxy in front of the server under test, configured
//! as ingress-nginx is by default: HTTP/1.1 to the upstream with a pool of
//! keep-alive connections, WebSocket upgrades passed on, responses not
//! buffered. A stream whose client made a request first on its connection
//! then usually reaches Herald on a pooled upstream connection: as the
//! second (or later) request of that connection.
//!
//! nginx runs from a private prefix (configuration, pid, logs and temp
//! files in a temporary directory), listens on 127.0.0.1 only, and is
//! stopped when the value is dropped.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where nginx is looked for (the Debian package's path).
pub const DEFAULT_NGINX_BIN: &str = "/usr/sbin/nginx";
/// Worker processes: with `reuseport` each takes a share of the clients, so
/// none needs more descriptors than a process may hold here (20,000).
const WORKERS: u32 = 4;
/// Descriptors per worker: its clients and as many upstream connections.
const WORKER_FILES: u32 = 19_000;
/// Idle upstream connections each worker keeps for reuse.
const UPSTREAM_KEEPALIVE: u32 = 2_048;
/// How long nginx may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx in front of one upstream.
pub struct Nginx {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddrV4,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts `bin` proxying 127.0.0.1:`listen` (any free port) to
    /// `upstream`.
    pub fn start(bin: &Path, upstream: SocketAddrV4) -> anyhow::Result<Nginx> {
        if !bin.exists() {
            bail!(
                "{} not found: install nginx (apt-get install -y nginx) or pass --nginx-bin",
                bin.display()
            );
        }
        let dir = tempfile::tempdir().context("a directory for nginx")?;
        let port = free_port()?;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, configuration(dir.path(), addr, upstream))
            .context("writing nginx.conf")?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut nginx = Nginx {
            child,
            addr,
            _dir: dir,
        };
        nginx.wait_listening()?;
        Ok(nginx)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited with {status} before listening: {log}");
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen on {} within {START_TIMEOUT:?}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The configuration: one server, everything proxied to `upstream`.
fn configuration(prefix: &Path, listen: SocketAddrV4, upstream: SocketAddrV4) -> String {
    let p = prefix.display();
    // Run as root, nginx would hand its workers to `nobody`, who cannot use
    // the private prefix: keep them as the caller.
    let user = if rustix::process::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        r#"{user}daemon off;
master_process on;
worker_processes {WORKERS};
worker_rlimit_nofile {WORKER_FILES};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections {WORKER_FILES};
}}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream herald {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 100000;
        keepalive_timeout 300s;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
    server {{
        listen {listen} reuseport backlog=4096;
        location / {{
            proxy_pass http://herald;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_pools_upstream_connections_and_passes_upgrades() {
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000);
        let upstream = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
        let conf = configuration(Path::new("/tmp/x"), listen, upstream);
        assert!(conf.contains("server 127.0.0.1:8080;"));
        assert!(conf.contains("keepalive 2048;"));
        assert!(conf.contains("listen 127.0.0.1:9000 reuseport"));
        assert!(conf.contains("proxy_set_header Connection $connection_upgrade;"));
    }
}
