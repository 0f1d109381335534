//! Start a real `herald serve` process for a test, and talk to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald::auth::{Claims, HeraldClaims, Minter};
use serde_json::Value;

/// Where a test server keeps its events.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the test's temporary directory.
    Sqlite,
    /// A fresh database on the shared private Postgres.
    Postgres,
    /// A given database URL.
    Url(String),
}

/// The HS256 secret every test server is started with.
pub const SECRET: &str = "test-secret-for-herald-black-box-tests";

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the binary under test: Cargo builds it next to the test
/// executables (`target/<profile>/deps/..`) for this package's integration
/// tests, and next to this package's own binaries (`herald-chaos`, in
/// `target/<profile>`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let own_dir = exe.parent().expect("an executable lives in a folder");
    let beside_deps = own_dir
        .parent()
        .expect("test executables live in target/<profile>/deps")
        .join("herald-test-server");
    let beside = own_dir.join("herald-test-server");
    if !beside_deps.exists() && beside.exists() {
        return beside;
    }
    beside_deps
}

/// Options for [`spawn_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    /// Extra `HERALD_*` settings.
    pub env: Vec<(String, String)>,
}

impl Options {
    /// Defaults on `backend`.
    pub fn new(backend: Backend) -> Options {
        Options {
            backend,
            env: Vec::new(),
        }
    }

    /// Adds a setting.
    pub fn env(mut self, key: &str, value: impl ToString) -> Options {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

/// A running Herald process, killed when dropped.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// The bound port.
    pub port: u16,
    /// The database URL it uses.
    pub database_url: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    options: Options,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Starts Herald on SQLite.
pub async fn spawn_app() -> TestApp {
    spawn_with(Options::new(Backend::Sqlite)).await
}

/// Starts Herald with `options`.
pub async fn spawn_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory can be made");
    let database_url = match &options.backend {
        Backend::Sqlite => format!("sqlite://{}/herald.db", dir.path().display()),
        Backend::Postgres => crate::pg::shared()
            .create_database()
            .expect("the private Postgres makes databases"),
        Backend::Url(url) => url.clone(),
    };
    let mut app = TestApp {
        base_url: String::new(),
        port: 0,
        database_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client builds"),
        options,
        child: None,
        dir,
    };
    app.start(None).await.expect("herald starts");
    app
}

impl TestApp {
    /// Starts the process (on `port`, or a free one).
    async fn start(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HERALD_LISTEN", format!("127.0.0.1:{}", port.unwrap_or(0)))
            .env("HERALD_DATABASE_URL", &self.database_url)
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_WORKERS", "2")
            .env("HERALD_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        let mut child = command.spawn().context("spawning herald")?;
        let stdout = child.stdout.take().context("herald's stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading so the process never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
            .await?
            .map_err(|_| {
                anyhow::anyhow!(
                    "herald did not start within {START_TIMEOUT:?}; its log:\n{}",
                    crate::procs::tail(&self.log_path(), 40)
                )
            })?;
        self.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the listening line ends in a port")?;
        self.base_url = addr;
        self.child = Some(child);
        Ok(())
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("herald.log")
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (such as `TERM`) and waits up to `timeout` for the exit
    /// status.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running")
        };
        crate::procs::signal(&[child.id()], signal)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("herald did not exit within {timeout:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (no signal
    /// sent) and returns its exit status; kills it if it does not.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running")
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("herald did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts the process on the same port and database.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let port = self.port;
        self.start(Some(port)).await
    }

    /// A token signed with the test secret.
    pub fn token(&self, sub: &str, subscribe: &[&str], publish: &[&str], ttl_secs: i64) -> String {
        token_with(Claims {
            sub: sub.into(),
            exp: (now_secs() + ttl_secs).max(0) as u64,
            iat: Some(now_secs() as u64),
            herald: HeraldClaims {
                subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                publish: publish.iter().map(|s| s.to_string()).collect(),
                admin: false,
            },
            ..Claims::default()
        })
    }

    /// An administrator's token (no topics) for an hour.
    pub fn admin_token(&self) -> String {
        token_with(Claims {
            sub: "admin".into(),
            exp: (now_secs() + 3600) as u64,
            iat: Some(now_secs() as u64),
            herald: HeraldClaims {
                admin: true,
                ..HeraldClaims::default()
            },
            ..Claims::default()
        })
    }

    /// A token that may publish and subscribe to every topic for an hour.
    pub fn root_token(&self) -> String {
        self.token("root", &[">"], &[">"], 3600)
    }

    /// POSTs `body` to `/v1/publish` with `token`.
    pub async fn publish_as(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/publish", self.base_url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("the publish request gets an answer")
    }

    /// Publishes `data` to `topic` with a root token; panics unless `201`.
    pub async fn publish(&self, topic: &str, data: Value) -> Value {
        let response = self
            .publish_as(
                &self.root_token(),
                &serde_json::json!({"topic": topic, "data": data}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.expect("publish answers JSON");
        assert_eq!(status, 201, "publish failed: {body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Signs `claims` with the test secret.
pub fn token_with(claims: Claims) -> String {
    Minter::hs256(SECRET.as_bytes())
        .mint(&claims)
        .expect("HS256 signing cannot fail")
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A topic name unique to this call (tests share servers and databases).
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}.{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
