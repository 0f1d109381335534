//! Building the application: settings in, a bound server out. Building binds
//! the listener and exposes the bound port, so tests can ask for port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::auth::{
    Claims, HeraldClaims, Minter, OriginPolicy, Revocations, Tickets, Verifier, VerifierSettings,
};
use crate::bus::{Bus, LocalBus, NatsBus};
use crate::config::{Secret, ServeArgs};
use crate::http::{self, AppState};
use crate::hub::Hubs;
use crate::session::gate::Gate;
use crate::session::{Connections, SessionSettings, Shared};
use crate::store::{self, Committer, CommitterSettings, Retention};

/// A built, bound, not yet running server.
pub struct Application {
    server: actix_web::dev::Server,
    port: u16,
    pruner: tokio::task::JoinHandle<()>,
    revocation_refresher: tokio::task::JoinHandle<()>,
    ack_flusher: tokio::task::JoinHandle<()>,
    gate: Arc<Gate>,
    sessions: Arc<Shared>,
}

impl Application {
    /// Validates settings, opens the store (migrating it unless told not to),
    /// and binds the listener.
    pub async fn build(mut settings: ServeArgs) -> anyhow::Result<Application> {
        settings.validate()?;
        if settings.dev && !settings.keys.any() {
            let secret: [u8; 32] = rand::random();
            settings.keys.jwt_secret = Some(Secret::new(hex(&secret).into_bytes()));
        }
        let verifier = Arc::new(load_verifier(&settings)?);

        if settings.nats_url.is_some() && !settings.database.database_url.starts_with("postgres") {
            anyhow::bail!(
                "HERALD_NATS_URL needs a Postgres store: several nodes cannot share a SQLite file"
            );
        }
        let store = store::open(&settings.database.database_url)
            .await
            .context("opening the store")?;
        if !settings.no_migrate {
            store.migrate().await.context("migrating the store")?;
        }
        let mut committer_settings = CommitterSettings::for_store(&*store);
        if store.kind() == "postgres" {
            committer_settings.writers = settings.store_writers;
        }
        let committer = Committer::start(store.clone(), committer_settings);
        let hubs = Hubs::new();
        let bus: Arc<dyn Bus> = match &settings.nats_url {
            Some(url) => Arc::new(
                NatsBus::connect(
                    url,
                    &settings.nats_prefix,
                    hubs.clone(),
                    store.clone(),
                    settings.heartbeat(),
                )
                .await
                .context("starting the NATS bus")?,
            ),
            None => Arc::new(LocalBus::new(hubs.clone())),
        };
        committer.set_bus(bus.clone());
        let pruner = store::spawn_pruner(
            store.clone(),
            Retention {
                max_age: Duration::from_secs(settings.retention_secs),
                max_events_per_topic: settings.retention_events,
                interval: Duration::from_secs(settings.prune_interval_secs),
            },
        );

        let acks = crate::ack::Acks::new(store.clone(), &settings.acks);
        let ack_flusher = acks.spawn_flusher();

        let revocations = Arc::new(Revocations::default());
        // Known before the first request, so a restart never forgets one; a
        // store that cannot be read yet is retried every heartbeat.
        let mut revocations_seen = 0;
        match store.revocations(0, crate::auth::token::now_secs()).await {
            Ok(known) => {
                revocations.merge(known.revocations);
                revocations_seen = known.last_change;
            }
            Err(e) => tracing::warn!(error = %e, "reading revocations failed; will retry"),
        }

        let sessions = Arc::new(Shared {
            store: store.clone(),
            bus: bus.clone(),
            hubs,
            verifier: verifier.clone(),
            revocations,
            settings: SessionSettings {
                heartbeat: settings.heartbeat(),
                queue_events: settings.queue_events,
                queue_bytes: settings.queue_bytes,
                max_topics: settings.max_topics_per_connection,
                max_frame_bytes: settings.max_frame_bytes,
                leeway_secs: settings.keys.jwt_leeway_secs,
                auth_timeout: Duration::from_secs(settings.auth_timeout_secs),
                max_subscription_ops_per_sec: settings.max_subscription_ops_per_sec,
            },
            connections: Connections::default(),
            acks,
        });
        bus.set_control(sessions.clone());
        let revocation_refresher = spawn_revocation_refresher(
            sessions.clone(),
            revocations_seen,
            settings.revocation_ttl_secs,
        );
        let gate = Gate::new(settings.max_connections, settings.drain_secs);
        let origins = Arc::new(OriginPolicy {
            any: settings.dev,
            rules: settings.allowed_origins.clone(),
        });
        let state = web::Data::new(AppState {
            store,
            committer,
            bus,
            verifier,
            gate: gate.clone(),
            sessions: sessions.clone(),
            auth_cookie: settings.auth_cookie.clone(),
            tickets: Tickets::new(
                Duration::from_secs(settings.ticket_secs),
                settings.max_tickets,
            ),
            origins: origins.clone(),
            revocation_ttl_secs: settings.revocation_ttl_secs,
            limits: crate::publish::Limits {
                max_data_bytes: settings.max_data_bytes,
                max_batch_events: settings.max_batch_events,
            },
            max_body_bytes: settings.max_body_bytes,
        });

        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let dev_token = web::Data::new(http::console::DevToken(dev_token(&settings)?));
        let console_token = dev_token.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(console_token.clone())
                .app_data(web::QueryConfig::default().error_handler(http::query_error))
                .configure(http::routes(origins.clone()))
                .default_service(web::to(http::not_found))
        })
        .client_request_timeout(Duration::from_secs(settings.request_head_timeout_secs))
        .on_connect(http::socket::on_connect(
            (settings.write_timeout_secs > 0)
                .then(|| Duration::from_secs(settings.write_timeout_secs)),
        ))
        // The drain owns SIGTERM and SIGINT (see `crate::drain`).
        .disable_signals()
        .keep_alive(match settings.keep_alive_secs {
            0 => actix_web::http::KeepAlive::Disabled,
            secs => actix_web::http::KeepAlive::Timeout(Duration::from_secs(secs)),
        })
        .shutdown_timeout(crate::drain::STOP_TIMEOUT.as_secs())
        .listen(listener)?;
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let server = server.run();

        if settings.dev {
            print_dev_banner(dev_token.0.as_deref(), addr);
        }
        println!("listening on http://{addr}");
        tracing::info!(%addr, "listening");
        Ok(Application {
            server,
            port: addr.port(),
            pruner,
            revocation_refresher,
            ack_flusher,
            gate,
            sessions,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops: the first SIGTERM or SIGINT drains the
    /// node, then returns (see `crate::drain`).
    pub async fn run(self) -> std::io::Result<()> {
        let result = crate::drain::serve(self.server, self.gate, &self.sessions.connections).await;
        self.pruner.abort();
        self.revocation_refresher.abort();
        self.ack_flusher.abort();
        self.sessions.acks.flush_all().await;
        result
    }
}

/// Reads the revocations stored or renewed since the last read, every
/// heartbeat (other nodes' revocations arrive this way when the bus cannot
/// bring them), closing at once the connections of this node that a newly
/// learned one covers, and forgets the expired ones.
fn spawn_revocation_refresher(
    shared: Arc<Shared>,
    mut seen: u64,
    ttl_secs: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(shared.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = crate::auth::token::now_secs();
            shared.revocations.expire(now, ttl_secs);
            match shared.store.revocations(seen, now).await {
                Ok(changes) => {
                    seen = changes.last_change;
                    if shared.revocations.merge(changes.revocations) {
                        shared.connections.close_revoked(&shared.revocations);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading revocations failed; will retry"),
            }
        }
    })
}

fn load_verifier(settings: &ServeArgs) -> anyhow::Result<Verifier> {
    let mut public_keys_pem = Vec::new();
    for (kid, path) in settings.keys.public_keys() {
        let pem = std::fs::read(&path)
            .with_context(|| format!("reading HERALD_JWT_PUBLIC_KEY file {}", path.display()))?;
        public_keys_pem.push((kid, pem));
    }
    Ok(Verifier::new(&VerifierSettings {
        secret: settings
            .keys
            .jwt_secret
            .as_ref()
            .map(|s| s.expose().to_vec()),
        public_keys_pem,
        leeway_secs: settings.keys.jwt_leeway_secs,
        audience: settings.keys.jwt_audience.clone(),
        issuer: settings.keys.jwt_issuer.clone(),
    })?)
}

/// The development admin token (24 h, every topic), when `--dev` signs with
/// a secret.
fn dev_token(settings: &ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(secret) = settings.keys.jwt_secret.as_ref().filter(|_| settings.dev) else {
        return Ok(None);
    };
    let claims = Claims {
        sub: "dev".into(),
        exp: crate::auth::token::now_secs() + 24 * 3600,
        iat: Some(crate::auth::token::now_secs()),
        herald: HeraldClaims {
            subscribe: vec![">".into()],
            publish: vec![">".into()],
            admin: true,
        },
        ..Claims::default()
    };
    Ok(Some(Minter::hs256(secret.expose()).mint(&claims)?))
}

fn print_dev_banner(token: Option<&str>, addr: std::net::SocketAddr) {
    let Some(token) = token else {
        println!("development mode: tokens are checked against the configured public key");
        return;
    };
    println!(
        "\nHerald is running in development mode. Admin token (24 h, every topic):\n\n\
         export TOKEN={token}\n\n\
         Web console: http://{addr}/\n\
         Publish:\n  curl -i http://{addr}/v1/publish -H \"Authorization: Bearer $TOKEN\" \\\n    \
         -H 'Content-Type: application/json' -d '{{\"topic\":\"demo\",\"data\":{{\"hello\":\"world\"}}}}'\n\
         Read everything retained on a topic:\n  curl \"http://{addr}/v1/poll?topic=demo&since=demo:0\" -H \"Authorization: Bearer $TOKEN\"\n"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
