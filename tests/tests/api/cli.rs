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

/// The first log line `herald serve --dev` writes to a piped standard error
/// (the `listening` line), with `env` set.
async fn dev_log_line(env: &[(&str, &str)]) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(binary())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .env("HERALD_DATABASE_URL", "sqlite::memory:")
        .env("RUST_LOG", "info")
        .env_remove("HERALD_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("herald serve starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("stderr reads") {
            if line.contains("listening") {
                return line;
            }
        }
        panic!("herald exited before logging that it listens");
    })
    .await
    .expect("herald logs that it listens within 30 s");
    let _ = child.kill().await;
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_logs_lines_a_person_reads_even_when_piped_and_json_when_asked() {
    let text = dev_log_line(&[]).await;
    assert!(
        !text.trim_start().starts_with('{') && text.contains("INFO"),
        "--dev logs text: {text}"
    );
    let json = dev_log_line(&[("HERALD_LOG_FORMAT", "json")]).await;
    let parsed: Value = serde_json::from_str(&json).expect("HERALD_LOG_FORMAT=json logs JSON");
    assert_eq!(parsed["level"], "INFO", "{json}");
}
