//! Settings: every one a command-line flag with a `HERALD_*` environment twin,
//! defaults as named constants, validated before anything binds.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db";
pub const DEFAULT_HEARTBEAT_SECS: u64 = 25;
/// Default acknowledgment flush interval, in milliseconds.
pub const DEFAULT_ACK_FLUSH_MS: u64 = 250;
/// Default bound of a node's pending acknowledgments (subscriber and topic pairs).
pub const DEFAULT_ACK_MAX_PENDING: usize = 100_000;
pub const DEFAULT_RETENTION_SECS: u64 = 86_400;
pub const DEFAULT_RETENTION_EVENTS: u64 = 10_000;
pub const DEFAULT_PRUNE_INTERVAL_SECS: u64 = 30;
pub const DEFAULT_DRAIN_SECS: u64 = 20;
/// How long an idle HTTP connection is kept open for its next request: long
/// enough that a client polling every few seconds reuses its connection.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 75;
/// How long data the server has written may wait unacknowledged (a client
/// that stopped reading) before the connection is cut.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// How long a client may take to send a request's head (slow headers).
pub const DEFAULT_REQUEST_HEAD_TIMEOUT_SECS: u64 = 5;
/// A 1 MiB publish at 35 KB/s still arrives within it.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_SECS: u64 = 30;
/// Long enough for a client that writes its whole body before reading to
/// finish writing over a slow link and read its answer; nginx lingers up
/// to 30 s, at most 5 s between reads.
pub const DEFAULT_LINGER_SECS: u64 = 5;
/// Fan-out lag past which publishes wait: above a healthy node's few
/// milliseconds, and low enough that eight saturating publishers are held
/// back before the connections' queues fill (at 50 ms, 655 to 820 of 1,000
/// subscribers were closed as slow consumers; at 20 ms none: see
/// docs/BENCHMARKS.md, "One connection path").
pub const DEFAULT_PACE_LAG_MS: u64 = 20;
/// Longest a publish waits for fan-out to catch up.
pub const DEFAULT_PACE_MAX_WAIT_MS: u64 = 5_000;
/// How many `subscribe` and `unsubscribe` frames a WebSocket may send per
/// second (a burst of as many is allowed).
pub const DEFAULT_MAX_SUBSCRIPTION_OPS_PER_SEC: u32 = 50;
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 0;
pub const DEFAULT_TICKET_SECS: u64 = 30;
pub const DEFAULT_MAX_TICKETS: usize = 100_000;
/// A browser mints one ticket per stream it opens or reopens: a hundred in
/// a ticket's lifetime is far beyond what one user's tabs need.
pub const DEFAULT_MAX_TICKETS_PER_SUBJECT: usize = 100;
/// Longest token lifetime (`exp - iat`) accepted: 30 days, a common
/// session length.
pub const DEFAULT_JWT_MAX_LIFETIME_SECS: u64 = 30 * 86_400;
/// Longer than the longest token by a day, so a leeway of up to 12 hours
/// needs no change to it.
pub const DEFAULT_REVOCATION_TTL_SECS: u64 = 31 * 86_400;
pub const DEFAULT_AUTH_TIMEOUT_SECS: u64 = 10;
/// WebSockets waiting for their `auth` frame, per node.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 5_000;
pub const DEFAULT_AUTH_COOKIE: &str = "herald_token";
pub const DEFAULT_MAX_TOPICS_PER_CONNECTION: usize = 256;
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
pub const DEFAULT_QUEUE_EVENTS: usize = 1_024;
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_DATA_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1_000;
pub const DEFAULT_STORE_WRITERS: usize = 4;
pub const DEFAULT_NATS_PREFIX: &str = "herald";

/// Herald: a real-time notification service.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    Migrate(MigrateArgs),
    /// Mint a token from the configured key (for development and scripts).
    Token(TokenArgs),
    /// Publish one event to a running server.
    Publish(PublishArgs),
    /// Print a topic's events as JSON lines.
    Subscribe(SubscribeArgs),
    /// Make keys.
    Keys(KeysArgs),
}

/// `herald keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub kind: KeyKind,
}

/// Which keys `herald keys` makes.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyKind {
    /// A new VAPID key pair for Web Push: the private key for
    /// HERALD_VAPID_PRIVATE_KEY and the public key pages subscribe with.
    Vapid,
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Wraps bytes as a secret.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the secret must not be empty".into());
        }
        Ok(Secret(s.as_bytes().to_vec()))
    }
}

/// Token verification keys.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// HS256 shared secret for tokens.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// PEM public key file(s) for RS256 or ES256 tokens; several (comma-separated)
    /// for key rotation. `KID=PATH` binds a key id.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<String>,
    /// Clock leeway for token `exp`, `nbf` and `iat` (how far in the future), in seconds.
    #[arg(long, env = "HERALD_JWT_LEEWAY_SECS", default_value_t = DEFAULT_JWT_LEEWAY_SECS)]
    pub jwt_leeway_secs: u64,
    /// Longest token lifetime accepted (`exp` minus `iat`), in seconds;
    /// longer-lived tokens, and tokens without `iat`, are refused.
    /// HERALD_REVOCATION_TTL_SECS must outlast it.
    #[arg(
        long,
        env = "HERALD_JWT_MAX_LIFETIME_SECS",
        default_value_t = DEFAULT_JWT_MAX_LIFETIME_SECS,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..)
    )]
    pub jwt_max_lifetime_secs: u64,
    /// Required token audience (`aud`); unset: not checked.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Required token issuer (`iss`); unset: not checked.
    #[arg(long, env = "HERALD_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
}

impl KeyArgs {
    /// The public key files as `(kid, path)`.
    pub fn public_keys(&self) -> Vec<(Option<String>, PathBuf)> {
        self.jwt_public_key
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.split_once('=') {
                Some((kid, path)) if !kid.contains('/') => {
                    (Some(kid.trim().to_owned()), PathBuf::from(path.trim()))
                }
                _ => (None, PathBuf::from(s.trim())),
            })
            .collect()
    }

    /// Whether any key is configured.
    pub fn any(&self) -> bool {
        self.jwt_secret.is_some() || !self.public_keys().is_empty()
    }
}

/// The database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://relative.db`, `sqlite:///absolute.db` (embedded, one node) or `postgres://...`.
    #[arg(long, env = "HERALD_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when standard error is not a terminal, human text when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `herald serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve on (port 0: any free port).
    #[arg(long, env = "HERALD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// NATS server URL; unset: in-process fan-out (one node).
    #[arg(long, env = "HERALD_NATS_URL")]
    pub nats_url: Option<String>,
    /// Prefix of the NATS subjects Herald uses.
    #[arg(long, env = "HERALD_NATS_PREFIX", default_value = DEFAULT_NATS_PREFIX)]
    pub nats_prefix: String,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub acks: AckArgs,
    #[command(flatten)]
    pub push: crate::push::PushArgs,
    /// Development mode: without a configured key, make a random one and print a ready admin token.
    #[arg(long, env = "HERALD_DEV")]
    pub dev: bool,
    /// Do not apply pending migrations at start-up.
    #[arg(long, env = "HERALD_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Heartbeat and token re-check interval, in seconds.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = DEFAULT_HEARTBEAT_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub heartbeat_secs: u64,
    /// How long events stay replayable, in seconds.
    #[arg(long, env = "HERALD_RETENTION_SECS", default_value_t = DEFAULT_RETENTION_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub retention_secs: u64,
    /// At most this many events are kept per topic.
    #[arg(long, env = "HERALD_RETENTION_EVENTS", default_value_t = DEFAULT_RETENTION_EVENTS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub retention_events: u64,
    /// How often retention pruning runs, in seconds.
    #[arg(long, env = "HERALD_PRUNE_INTERVAL_SECS", default_value_t = DEFAULT_PRUNE_INTERVAL_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub prune_interval_secs: u64,
    /// How long a draining node spreads its clients' reconnects, in seconds.
    #[arg(long, env = "HERALD_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,
    /// How long an idle HTTP connection stays open for its next request, in
    /// seconds (0: close after each response).
    #[arg(long, env = "HERALD_KEEP_ALIVE_SECS", default_value_t = DEFAULT_KEEP_ALIVE_SECS)]
    pub keep_alive_secs: u64,
    /// How long, in seconds, data written to a client may stay unsent or
    /// unacknowledged (a client that stopped reading keeps its receive
    /// window at zero) before the connection is cut and its descriptor and
    /// buffers freed (0: no limit). Applies to every connection of the node.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_SECS", default_value_t = DEFAULT_WRITE_TIMEOUT_SECS)]
    pub write_timeout_secs: u64,
    /// How long, in seconds, a client may take to send a request's line and
    /// headers after connecting (or after its previous request on a
    /// keep-alive connection); past it the answer is `408` and the
    /// connection is closed (0: no limit).
    #[arg(
        long,
        env = "HERALD_REQUEST_HEAD_TIMEOUT_SECS",
        default_value_t = DEFAULT_REQUEST_HEAD_TIMEOUT_SECS
    )]
    pub request_head_timeout_secs: u64,
    /// How long, in seconds, a client may take to send a request's body
    /// after its head; past it the answer is `408` and the connection is
    /// closed (0: no limit).
    #[arg(
        long,
        env = "HERALD_REQUEST_BODY_TIMEOUT_SECS",
        default_value_t = DEFAULT_REQUEST_BODY_TIMEOUT_SECS
    )]
    pub request_body_timeout_secs: u64,
    /// How long, in seconds, a connection answered before its request's
    /// body was all read (`413`, a refusal) goes on reading and dropping
    /// what the client sends before it closes, so that the client reads
    /// the answer instead of a reset (0: close at once).
    #[arg(long, env = "HERALD_LINGER_SECS", default_value_t = DEFAULT_LINGER_SECS)]
    pub linger_secs: u64,
    /// A publish waits, before its commit, while some thread's fan-out lags
    /// more than this many milliseconds behind this node's receipt of
    /// events (measured on this node's monotonic clock).
    #[arg(long, env = "HERALD_PACE_LAG_MS", default_value_t = DEFAULT_PACE_LAG_MS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub pace_lag_ms: u64,
    /// Longest such a wait, in milliseconds (0: publishes never wait).
    #[arg(long, env = "HERALD_PACE_MAX_WAIT_MS", default_value_t = DEFAULT_PACE_MAX_WAIT_MS)]
    pub pace_max_wait_ms: u64,
    /// How long a ticket (`POST /v1/tickets`) can be used, in seconds.
    #[arg(long, env = "HERALD_TICKET_SECS", default_value_t = DEFAULT_TICKET_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub ticket_secs: u64,
    /// Most unused tickets a node holds; past it (after sweeping expired
    /// ones), `POST /v1/tickets` answers `503 unavailable`.
    #[arg(long, env = "HERALD_MAX_TICKETS", default_value_t = DEFAULT_MAX_TICKETS, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tickets: usize,
    /// Most unexpired tickets one subject (`sub`) holds on a node; past it,
    /// `POST /v1/tickets` answers `429 rate_limited` with `Retry-After`, so
    /// one subscriber cannot take the node's whole HERALD_MAX_TICKETS.
    #[arg(
        long,
        env = "HERALD_MAX_TICKETS_PER_SUBJECT",
        default_value_t = DEFAULT_MAX_TICKETS_PER_SUBJECT,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_tickets_per_subject: usize,
    /// Revocations are kept this long, in seconds: longer than
    /// HERALD_JWT_MAX_LIFETIME_SECS plus twice HERALD_JWT_LEEWAY_SECS, so
    /// that every token a revocation covers has expired before it is
    /// forgotten (checked at start-up).
    #[arg(long, env = "HERALD_REVOCATION_TTL_SECS", default_value_t = DEFAULT_REVOCATION_TTL_SECS, value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub revocation_ttl_secs: u64,
    /// Web origins, besides this server's own, whose pages may subscribe
    /// (WebSocket, SSE, polling, tickets): comma-separated
    /// `scheme://host[:port]`, or `https://*.example.com` for every
    /// subdomain. `--dev` allows any origin.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<crate::auth::OriginRule>,
    /// Name of the session cookie that may carry a token.
    #[arg(long, env = "HERALD_AUTH_COOKIE", default_value = DEFAULT_AUTH_COOKIE)]
    pub auth_cookie: String,
    /// Most topics one connection may hold.
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_CONNECTION", default_value_t = DEFAULT_MAX_TOPICS_PER_CONNECTION, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_topics_per_connection: usize,
    /// Most `subscribe` and `unsubscribe` frames one WebSocket may send per
    /// second (as many may come in a burst); more are refused with an
    /// `error` frame (`rate_limited`), without touching the store.
    #[arg(
        long,
        env = "HERALD_MAX_SUBSCRIPTION_OPS_PER_SEC",
        default_value_t = DEFAULT_MAX_SUBSCRIPTION_OPS_PER_SEC,
        value_parser = RangedU64ValueParser::<u32>::new().range(1..)
    )]
    pub max_subscription_ops_per_sec: u32,
    /// Largest inbound WebSocket frame, in bytes.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES, value_parser = RangedU64ValueParser::<usize>::new().range(1024..))]
    pub max_frame_bytes: usize,
    /// Most WebSocket and SSE connections (and pending long polls) per node.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Most WebSockets per node waiting for their first `auth` frame (those
    /// that gave no credentials in the upgrade request); they take a place
    /// of `HERALD_MAX_CONNECTIONS` only once authenticated. Past it, an
    /// upgrade without credentials is `503 unavailable`.
    #[arg(long, env = "HERALD_MAX_UNAUTHENTICATED", default_value_t = DEFAULT_MAX_UNAUTHENTICATED, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_unauthenticated: usize,
    /// How long a WebSocket may take to send its first `auth` frame, in seconds.
    #[arg(long, env = "HERALD_AUTH_TIMEOUT_SECS", default_value_t = DEFAULT_AUTH_TIMEOUT_SECS)]
    pub auth_timeout_secs: u64,
    /// Events a connection's outbound queue holds before it is closed as a slow consumer.
    #[arg(long, env = "HERALD_QUEUE_EVENTS", default_value_t = DEFAULT_QUEUE_EVENTS, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub queue_events: usize,
    /// Bytes a connection's outbound queue holds before it is closed as a slow consumer.
    #[arg(long, env = "HERALD_QUEUE_BYTES", default_value_t = DEFAULT_QUEUE_BYTES)]
    pub queue_bytes: usize,
    /// Largest publish request body, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_parser = RangedU64ValueParser::<usize>::new().range(1024..))]
    pub max_body_bytes: usize,
    /// Largest `data` of one event (its JSON text), in bytes.
    #[arg(long, env = "HERALD_MAX_DATA_BYTES", default_value_t = DEFAULT_MAX_DATA_BYTES, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_data_bytes: usize,
    /// Most events in one publish batch.
    #[arg(long, env = "HERALD_MAX_BATCH_EVENTS", default_value_t = DEFAULT_MAX_BATCH_EVENTS, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_batch_events: usize,
    /// Concurrent group-commit transactions on Postgres (SQLite always uses one).
    #[arg(long, env = "HERALD_STORE_WRITERS", default_value_t = DEFAULT_STORE_WRITERS, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub store_writers: usize,
    /// HTTP worker threads; 0: one per core.
    #[arg(long, env = "HERALD_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Log format (`auto`: JSON when standard error is not a terminal, text
    /// when it is, and always text with `--dev`).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// A topic whose every event is logged at each stage (committed, bus,
    /// hub, each connection) at `debug` under the target `herald::follow`,
    /// which this setting switches on; unset: none.
    #[arg(long, env = "HERALD_LOG_TOPIC")]
    pub log_topic: Option<String>,
}

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct SettingError {
    pub name: &'static str,
    pub reason: String,
}

fn check(ok: bool, name: &'static str, reason: &str) -> Result<(), SettingError> {
    if ok {
        Ok(())
    } else {
        Err(SettingError {
            name,
            reason: reason.to_owned(),
        })
    }
}

impl ServeArgs {
    /// Rejects settings that cannot work, before anything binds.
    pub fn validate(&self) -> Result<(), SettingError> {
        check(
            self.log_topic
                .as_deref()
                .is_none_or(|t| crate::topic::Topic::parse(t).is_ok()),
            "HERALD_LOG_TOPIC",
            "must be a topic name",
        )?;
        check(
            self.queue_bytes >= self.max_data_bytes,
            "HERALD_QUEUE_BYTES",
            "must be at least HERALD_MAX_DATA_BYTES, or one large event would close every connection",
        )?;
        check(
            !self.auth_cookie.is_empty(),
            "HERALD_AUTH_COOKIE",
            "must not be empty",
        )?;
        check(
            self.listen.parse::<std::net::SocketAddr>().is_ok(),
            "HERALD_LISTEN",
            "must be IP:PORT, such as 127.0.0.1:8080",
        )?;
        // A token is accepted from `iat` minus the leeway to `exp` plus the
        // leeway; its revocation must last longer.
        let covered_secs = self
            .keys
            .jwt_max_lifetime_secs
            .saturating_add(self.keys.jwt_leeway_secs.saturating_mul(2));
        check(
            self.revocation_ttl_secs > covered_secs,
            "HERALD_REVOCATION_TTL_SECS",
            &format!(
                "must be longer than HERALD_JWT_MAX_LIFETIME_SECS plus twice \
                 HERALD_JWT_LEEWAY_SECS ({covered_secs} s), or a revoked token would be \
                 accepted again once its revocation is forgotten; raise it or lower the \
                 token lifetime"
            ),
        )?;
        check(
            self.keys.any() || self.dev,
            "HERALD_JWT_SECRET",
            "no token key is configured: set HERALD_JWT_SECRET or HERALD_JWT_PUBLIC_KEY, or run with --dev",
        )?;
        self.push.validate()?;
        Ok(())
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

/// Acknowledgment settings.
#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// How often this node writes the acknowledgments it gathered to the
    /// store, in milliseconds (at most one write per subscriber and topic
    /// per interval).
    #[arg(
        long,
        env = "HERALD_ACK_FLUSH_MS",
        default_value_t = DEFAULT_ACK_FLUSH_MS,
        value_parser = RangedU64ValueParser::<u64>::new().range(10..=60_000)
    )]
    pub ack_flush_ms: u64,
    /// Most subscriber and topic pairs waiting to be written on this node;
    /// past it, acknowledgments for new pairs are refused (`rate_limited`)
    /// until the next write.
    #[arg(
        long,
        env = "HERALD_ACK_MAX_PENDING",
        default_value_t = DEFAULT_ACK_MAX_PENDING,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub ack_max_pending: usize,
}

impl AckArgs {
    /// The flush interval.
    pub fn flush(&self) -> Duration {
        Duration::from_millis(self.ack_flush_ms)
    }
}

/// `herald migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `herald token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token's subject (`sub`).
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// Topic patterns the token may subscribe to (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Topic patterns the token may publish to (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Whether the token is an administrator's.
    #[arg(long)]
    pub admin: bool,
    /// Lifetime, in seconds (a server refuses tokens living longer than its
    /// HERALD_JWT_MAX_LIFETIME_SECS, 30 days by default).
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
    /// A token id (`jti`), for revocation of this one token.
    #[arg(long)]
    pub jti: Option<String>,
    /// Audience (`aud`).
    #[arg(long)]
    pub aud: Option<String>,
    /// Issuer (`iss`).
    #[arg(long)]
    pub iss: Option<String>,
    /// Sign with this PEM private key (RS256 or ES256) instead of HERALD_JWT_SECRET.
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY")]
    pub private_key: Option<PathBuf>,
    /// Key id (`kid`) to put in the header.
    #[arg(long)]
    pub kid: Option<String>,
    /// HS256 shared secret.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

/// Where a client command finds the server and its credentials.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token. Without one, a short-lived token is minted from HERALD_JWT_SECRET.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// HS256 shared secret, used to mint a token when none is given.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

impl ClientArgs {
    /// The bearer token a client command sends: the given one, or a short-lived
    /// one minted from the shared secret for exactly what the command needs.
    pub fn token(&self, subscribe: &[String], publish: &[String]) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(String::from_utf8_lossy(token.expose()).into_owned());
        }
        let Some(secret) = &self.jwt_secret else {
            anyhow::bail!("no credentials: set HERALD_TOKEN (or HERALD_JWT_SECRET to mint one)");
        };
        let now = crate::auth::token::now_secs();
        let claims = crate::auth::Claims {
            sub: "herald-cli".into(),
            exp: now + 3600,
            iat: Some(now),
            herald: crate::auth::HeraldClaims {
                subscribe: subscribe.to_vec(),
                publish: publish.to_vec(),
                admin: false,
            },
            ..crate::auth::Claims::default()
        };
        Ok(crate::auth::Minter::hs256(secret.expose()).mint(&claims)?)
    }
}

/// `herald publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// The event's data, as JSON; read from standard input when absent or `-`.
    pub data: Option<String>,
    /// Idempotency key.
    #[arg(long)]
    pub id: Option<String>,
    /// Event type.
    #[arg(long = "type")]
    pub kind: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Transports for `herald subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

/// `herald subscribe`.
#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// Topics to watch.
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Resume after this cursor (`topic:seq,...`); absent: live events only.
    #[arg(long)]
    pub since: Option<String>,
    /// Transport to use.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Acknowledge every event once printed (`POST /v1/ack`, or the
    /// WebSocket `ack` frame); without `--since`, start each topic after
    /// this subscriber's acknowledged position.
    #[arg(long)]
    pub ack: bool,
    /// Exit after printing this many events (for tests).
    #[arg(long, hide = true)]
    pub max_events: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}
