//! Building the application: settings in, a bound server out. Building binds
//! the listener and exposes the bound port, so tests can ask for port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_service::{
    IntoServiceFactory, ServiceExt, ServiceFactory, boxed, fn_factory, fn_service,
};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};
use anyhow::Context;
use futures_util::FutureExt;

use crate::auth::{Claims, HeraldClaims, Minter};
use crate::config::{Secret, ServeArgs};
use crate::http;
use crate::http::front::{Front, FrontSettings, Streams};
use crate::node::Node;

/// A built, bound, not yet running server.
pub struct Application {
    server: actix_web::dev::Server,
    node: web::Data<Node>,
    /// The stream threads, stopped after the drain.
    streams: Arc<Streams>,
}

impl Application {
    /// Validates settings, builds the node (opening the store, migrating it
    /// unless told not to), and binds the listener.
    pub async fn build(mut settings: ServeArgs) -> anyhow::Result<Application> {
        settings.validate()?;
        if settings.dev && !settings.keys.any() {
            let secret: [u8; 32] = rand::random();
            settings.keys.jwt_secret = Some(Secret::new(hex(&secret).into_bytes()));
        }
        let node = web::Data::new(Node::build(&settings).await?);
        let origins = node.settings.origins.clone();
        let state = node.clone();

        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let dev_token = web::Data::new(http::console::DevToken(dev_token(&settings)?));
        let console_token = dev_token.clone();
        let make_app = move || {
            App::new()
                .app_data(state.clone())
                .app_data(console_token.clone())
                .app_data(web::QueryConfig::default().error_handler(http::query_error))
                .configure(http::routes(origins.clone()))
                .default_service(web::to(http::not_found))
        };
        let seconds = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        let front = FrontSettings {
            head_timeout: seconds(settings.request_head_timeout_secs),
            keep_alive: seconds(settings.keep_alive_secs),
            body_timeout: seconds(settings.request_body_timeout_secs),
            linger: Duration::from_secs(settings.linger_secs),
            write_timeout: seconds(settings.write_timeout_secs),
        };
        // Each thread that answers requests builds its own application:
        // the HTTP workers and the stream threads (see `http::front`).
        let build = move || -> futures_util::future::LocalBoxFuture<'static, Option<http::front::Application>> {
            let factory = make_app().into_factory();
            Box::pin(async move {
                let app = factory.new_service(AppConfig::default()).await.ok()?;
                Some(boxed::service(
                    app.map(|response| response.map_into_boxed_body()),
                ))
            })
        };
        let threads = match settings.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let make: http::front::MakeApplication = Arc::new(build.clone());
        let streams = Streams::start(threads, make, node.hubs.clone())
            .await
            .context("starting the stream threads")?;
        let streams = Arc::new(streams);
        let mut server = actix_server::Server::build()
            // The drain owns SIGTERM and SIGINT (see `crate::drain`).
            .disable_signals()
            .shutdown_timeout(crate::drain::STOP_TIMEOUT.as_secs());
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let door_streams = streams.clone();
        let gate = node.gate.clone();
        let server = server
            .listen("herald", listener, move || {
                let front = front.clone();
                let streams = door_streams.clone();
                let gate = gate.clone();
                let build = build.clone();
                fn_factory(move || {
                    let app = build();
                    let front = front.clone();
                    let streams = streams.clone();
                    let gate = gate.clone();
                    async move {
                        let Some(app) = app.await else {
                            tracing::error!("an HTTP worker could not build its application");
                            return Err(());
                        };
                        let door = Front::new(app, front, streams, gate);
                        Ok::<_, ()>(fn_service(move |io: TcpStream| {
                            door.clone().connection(io).map(Ok::<_, ()>)
                        }))
                    }
                })
            })?
            .run();

        if settings.dev {
            print_dev_banner(dev_token.0.as_deref(), addr);
        }
        println!("listening on http://{addr}");
        tracing::info!(%addr, "listening");
        Ok(Application {
            server,
            node,
            streams,
        })
    }

    /// Serves until the server stops: the first SIGTERM or SIGINT drains the
    /// node, then returns (see `crate::drain`).
    pub async fn run(self) -> std::io::Result<()> {
        let result =
            crate::drain::serve(self.server, self.node.gate.clone(), &self.node.connections).await;
        // In order: the HTTP workers have stopped; then the stream threads
        // (their streams drained), then the node's own tasks.
        self.streams.stop().await;
        self.node.stop();
        // Acknowledgments taken but not yet written go to the store now.
        self.node.env.acks.flush_all().await;
        result
    }
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
