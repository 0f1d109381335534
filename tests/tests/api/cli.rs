//! The `herald` command line: `migrate`, `token`, `publish`.

use std::process::Command;

use herald_tests::app::{SECRET, binary, spawn_app, unique_topic};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_then_publish_from_the_command_line_stores_an_event() {
    let app = spawn_app().await;
    let topic = unique_topic("cli");
    let token = Command::new(binary())
        .args([
            "token",
            "--sub",
            "cli-user",
            "--publish",
            "cli.>",
            "--ttl-secs",
            "60",
        ])
        .env("HERALD_JWT_SECRET", SECRET)
        .output()
        .expect("herald token runs");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let out = Command::new(binary())
        .args([
            "publish",
            &topic,
            r#"{"from":"cli"}"#,
            "--id",
            "cli-1",
            "--type",
            "demo",
        ])
        .env("HERALD_URL", &app.base_url)
        .env("HERALD_TOKEN", &token)
        .output()
        .expect("herald publish runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("prints the receipt");
    assert_eq!(receipt["seq"], 1);
    assert_eq!(receipt["id"], "cli-1");

    // A topic the token does not allow is refused with the server's problem.
    let out = Command::new(binary())
        .args(["publish", "other.topic", "1"])
        .env("HERALD_URL", &app.base_url)
        .env("HERALD_TOKEN", &token)
        .output()
        .expect("herald publish runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

#[test]
fn migrate_creates_a_fresh_sqlite_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/fresh.db", dir.path().display());
    let out = Command::new(binary())
        .args(["migrate"])
        .env("HERALD_DATABASE_URL", &url)
        .output()
        .expect("herald migrate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("fresh.db").exists());
    // Twice is fine.
    let again = Command::new(binary())
        .args(["migrate"])
        .env("HERALD_DATABASE_URL", &url)
        .output()
        .expect("herald migrate runs");
    assert!(again.status.success());
}

#[test]
fn serve_refuses_to_start_without_a_key_and_says_why() {
    let out = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_JWT_PUBLIC_KEY")
        .output()
        .expect("herald serve runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--dev") && stderr.contains("HERALD_JWT_SECRET"),
        "{stderr}"
    );
}
