//! The node: every part of a running Herald server, built once, in
//! dependency order, with nothing set afterwards.
//!
//! The store comes first (the truth), then access checks (with the
//! revocations the store holds), the open connections, the hubs (with the
//! interest a cluster bus follows), what sessions share, the bus (it
//! delivers to the hubs and applies other nodes' revocations), and last the
//! committer (it commits to the store, then publishes on the bus). The HTTP
//! routes take a [`Node`]; nothing it owns knows about HTTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::auth::{
    Access, OriginPolicy, Revocation, RevocationKind, Revocations, Tickets, Verifier,
    VerifierSettings,
};
use crate::bus::{Bus, LocalBus, NatsBus};
use crate::config::ServeArgs;
use crate::hub::{Hubs, Interest};
use crate::publish::{Committer, CommitterSettings, Limits};
use crate::session::gate::Gate;
use crate::session::{Connections, Env, SessionSettings};
use crate::store::{self, Retention, Store, StoreError};

/// What the HTTP layer needs besides the parts.
pub struct NodeSettings {
    pub limits: Limits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Name of the session cookie that may carry a token.
    pub auth_cookie: String,
    /// Web origins whose pages may subscribe, besides this server's own.
    pub origins: Arc<OriginPolicy>,
    /// How long a revocation is kept, in seconds: longer than any token
    /// it covers can be accepted (checked at start-up).
    pub revocation_ttl_secs: u64,
}

/// One Herald node.
pub struct Node {
    pub store: Arc<dyn Store>,
    pub access: Arc<Access>,
    pub connections: Arc<Connections>,
    pub hubs: Arc<Hubs>,
    /// What every session reaches.
    pub env: Arc<Env>,
    pub bus: Arc<dyn Bus>,
    pub committer: Committer,
    pub gate: Arc<Gate>,
    /// Ticket settings.
    pub tickets: Tickets,
    /// Push to offline devices (its scheduler runs when a provider is configured).
    pub push: Arc<crate::push::Push>,
    pub settings: NodeSettings,
    /// The pruner and the revocation refresher; stopped with the node.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Builds a node from checked settings: opens the store (migrating it
    /// unless told not to), connects the bus, starts the committer, the
    /// pruner and the revocation refresher.
    pub async fn build(settings: &ServeArgs) -> anyhow::Result<Node> {
        let verifier = load_verifier(settings)?;
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

        // Known before the first request, so a restart never forgets one; a
        // store that cannot be read yet is retried every heartbeat.
        let revocations = Arc::new(Revocations::default());
        let mut revocations_seen = 0;
        match store.revocations(0, crate::auth::token::now_secs()).await {
            Ok(known) => {
                revocations.merge(known.revocations);
                revocations_seen = known.last_change;
            }
            Err(e) => tracing::warn!(error = %e, "reading revocations failed; will retry"),
        }
        let access = Arc::new(Access {
            verifier,
            revocations,
            leeway_secs: settings.keys.jwt_leeway_secs,
        });
        let connections = Arc::new(Connections::default());
        let acks = crate::ack::Acks::new(
            store.clone(),
            settings.acks.flush(),
            settings.acks.ack_max_pending,
        );
        let ack_flusher = acks.spawn_flusher();
        let push = crate::push::Push::build(&settings.push, store.clone(), acks.clone())
            .context("setting up push")?;

        let pacing = crate::hub::Pacing {
            lag_limit: Duration::from_millis(settings.pace_lag_ms),
            longest: Duration::from_millis(settings.pace_max_wait_ms),
        };
        let (hubs, interest) = match settings.nats_url {
            Some(_) => {
                let (interest, changes) = Interest::channel();
                (Hubs::with_interest(pacing, interest), Some(changes))
            }
            None => (Hubs::new(pacing), None),
        };
        let env = Arc::new(Env {
            store: store.clone(),
            hubs: hubs.clone(),
            access: access.clone(),
            connections: connections.clone(),
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
            acks,
        });

        let bus: Arc<dyn Bus> = match (&settings.nats_url, interest) {
            (Some(url), Some(interest)) => Arc::new(
                NatsBus::connect(
                    url,
                    &settings.nats_prefix,
                    hubs.clone(),
                    interest,
                    env.clone(),
                    store.clone(),
                    settings.heartbeat(),
                )
                .await
                .context("starting the NATS bus")?,
            ),
            _ => Arc::new(LocalBus::new(hubs.clone())),
        };
        let committer = Committer::start(
            store.clone(),
            bus.clone(),
            CommitterSettings::new(&*store, settings.store_writers),
        );

        let pruner = store::spawn_pruner(
            store.clone(),
            Retention {
                max_age: Duration::from_secs(settings.retention_secs),
                max_events_per_topic: settings.retention_events,
                interval: Duration::from_secs(settings.prune_interval_secs),
            },
        );
        let refresher =
            spawn_revocation_refresher(env.clone(), revocations_seen, settings.revocation_ttl_secs);
        let mut tasks = vec![pruner, refresher, ack_flusher];
        if push.enabled() {
            tasks.push(push.spawn_scheduler());
        }

        Ok(Node {
            store,
            access,
            connections,
            hubs,
            env,
            bus,
            committer,
            gate: Gate::new(
                settings.max_connections,
                settings.max_unauthenticated,
                settings.drain_secs,
            ),
            tickets: Tickets::new(
                Duration::from_secs(settings.ticket_secs),
                settings.max_tickets,
                settings.max_tickets_per_subject,
            ),
            settings: NodeSettings {
                limits: Limits {
                    max_data_bytes: settings.max_data_bytes,
                    max_batch_events: settings.max_batch_events,
                },
                max_body_bytes: settings.max_body_bytes,
                auth_cookie: settings.auth_cookie.clone(),
                origins: Arc::new(OriginPolicy {
                    any: settings.dev,
                    rules: settings.allowed_origins.clone(),
                }),
                revocation_ttl_secs: settings.revocation_ttl_secs,
            },
            push,
            tasks,
        })
    }

    /// Revokes `value` (a subject or a token id) as of this second: records
    /// it in the store, kept for the revocation TTL, tells the other nodes,
    /// then applies it on this node at once, closing the connections it
    /// covers. Returns the second.
    pub async fn revoke(&self, kind: RevocationKind, value: String) -> Result<u64, StoreError> {
        let revoked_at_secs = crate::auth::token::now_secs();
        let ttl_secs = self.settings.revocation_ttl_secs;
        self.store
            .revoke(kind, &value, revoked_at_secs, revoked_at_secs + ttl_secs)
            .await?;
        let revocation = Revocation {
            kind,
            value,
            revoked_at_secs,
        };
        // The other nodes learn it at once from the bus, or from the store
        // within a heartbeat if the bus is away.
        if let Err(e) = self.bus.announce_revocation(&revocation).await {
            tracing::warn!(error = %e, "announcing a revocation on the bus failed; other nodes read it from the store within a heartbeat");
        }
        let closed = self.env.apply_revocation(revocation);
        tracing::info!(%kind, closed, "revoked");
        Ok(revoked_at_secs)
    }

    /// Stops the node's background tasks (the server has stopped).
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads the revocations stored or renewed since the last read, every
/// heartbeat (other nodes' revocations arrive this way when the bus cannot
/// bring them), closing at once the connections of this node that a newly
/// learned one covers, and forgets the expired ones.
fn spawn_revocation_refresher(
    env: Arc<Env>,
    mut seen: u64,
    ttl_secs: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(env.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let revocations = &env.access.revocations;
        loop {
            tick.tick().await;
            let now = crate::auth::token::now_secs();
            revocations.expire(now, ttl_secs);
            match env.store.revocations(seen, now).await {
                Ok(changes) => {
                    seen = changes.last_change;
                    if revocations.merge(changes.revocations) {
                        env.connections.close_revoked(revocations);
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
        max_lifetime_secs: settings.keys.jwt_max_lifetime_secs,
    })?)
}
