//! The `herald` command line: parses settings and runs a subcommand.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Parser;

use crate::app::Application;
use crate::auth::token::now_secs;
use crate::auth::{Claims, HeraldClaims, Minter};
use crate::config::{
    Cli, Command, KeyKind, LogFormat, MigrateArgs, PublishArgs, ServeArgs, TokenArgs,
};

/// Entry point of the `herald` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Migrate(args) => runtime()?.block_on(migrate(args)),
        Command::Token(args) => token(args),
        Command::Publish(args) => runtime()?.block_on(publish(args)),
        Command::Subscribe(args) => runtime()?.block_on(crate::subscribe::run(args)),
        Command::Keys(args) => {
            keys(args.kind);
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let log_topic = args
        .log_topic
        .as_deref()
        .and_then(|t| crate::topic::Topic::parse(t).ok());
    // A developer's terminal, or its piped output: lines a person reads.
    let log_format = match args.log_format {
        LogFormat::Auto if args.dev => LogFormat::Text,
        format => format,
    };
    let telemetry = crate::telemetry::init(log_format, log_topic);
    let result = actix_rt::System::new().block_on(async move {
        let app = Application::build(args).await?;
        app.run().await?;
        Ok(())
    });
    // Outside the runtime: the OTLP/HTTP client blocks while it flushes.
    telemetry.shutdown();
    result
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = crate::store::open(&args.database.database_url).await?;
    store.migrate().await?;
    println!("migrations applied ({})", store.kind());
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let minter = match (&args.private_key, &args.jwt_secret) {
        (Some(path), _) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading private key {}", path.display()))?;
            Minter::from_private_pem(&pem, args.kid.clone())?
        }
        (None, Some(secret)) => Minter::hs256(secret.expose()),
        (None, None) => bail!("no signing key: set HERALD_JWT_SECRET or --private-key"),
    };
    let now = now_secs();
    let claims = Claims {
        sub: args.sub,
        exp: now + args.ttl_secs,
        iat: Some(now),
        jti: args.jti,
        aud: args.aud.map(serde_json::Value::String),
        iss: args.iss,
        herald: HeraldClaims {
            subscribe: args.subscribe,
            publish: args.publish,
            admin: args.admin,
        },
        ..Claims::default()
    };
    println!("{}", minter.mint(&claims)?);
    Ok(())
}

fn keys(kind: KeyKind) {
    match kind {
        KeyKind::Vapid => {
            let (private, public) = crate::push::webpush::generate_keys();
            println!("HERALD_VAPID_PRIVATE_KEY={private}");
            println!("# the public key (applicationServerKey; GET /v1/push/vapid serves it):");
            println!("HERALD_VAPID_PUBLIC_KEY={public}");
        }
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let data = match args.data.as_deref() {
        None | Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
        Some(text) => text.to_owned(),
    };
    let data: serde_json::Value =
        serde_json::from_str(&data).context("the data must be JSON (quote strings: '\"hi\"')")?;
    let token = args.client.token(&[], std::slice::from_ref(&args.topic))?;
    let mut body = serde_json::json!({"topic": args.topic, "data": data});
    if let Some(id) = args.id {
        body["id"] = id.into();
    }
    if let Some(kind) = args.kind {
        body["type"] = kind.into();
    }
    let url = format!("{}/v1/publish", args.client.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    println!("{text}");
    Ok(())
}
