//! Replays the fuzz corpus (`fuzz/corpus/TARGET/`) through the same entry
//! points the fuzz targets call, on the stable toolchain: every seed and every
//! crash reproducer found so far stays a regression test.

use std::path::PathBuf;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("listing the corpus").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no seed for {target}",
        dir.display()
    );
    for path in &files {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{target}: {} panics", path.display());
    }
}

#[test]
fn websocket_client_frames_in_the_corpus_never_panic() {
    replay("ws_frame", herald::fuzzing::ws_frame);
}

#[test]
fn cursors_in_the_corpus_never_panic_and_round_trip() {
    replay("cursor", herald::fuzzing::cursor);
}

#[test]
fn topics_and_patterns_in_the_corpus_never_panic() {
    replay("topic_pattern", herald::fuzzing::topic_pattern);
}

#[test]
fn publish_bodies_in_the_corpus_never_panic() {
    replay("publish_body", herald::fuzzing::publish_body);
}

#[test]
fn subscribe_query_strings_in_the_corpus_never_panic() {
    replay("subscribe_query", herald::fuzzing::subscribe_query);
}

#[test]
fn tokens_in_the_corpus_never_panic() {
    replay("token", herald::fuzzing::token);
}

#[test]
fn request_heads_in_the_corpus_never_panic() {
    replay("request_head", herald::fuzzing::request_head);
}

#[test]
fn lean_websocket_bytes_in_the_corpus_never_panic_and_decode_alike_split_anywhere() {
    replay("ws_wire", herald::fuzzing::ws_wire);
}
