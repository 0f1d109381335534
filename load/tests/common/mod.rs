//! What the scenario tests share: the Herald binary they start.

use std::path::{Path, PathBuf};

/// The debug `herald` binary, from the target directory this test was built
/// in (`target/debug/deps/..`): `herald` when it has been built (`cargo
/// build -p herald`), else `herald-test-server`, the same program
/// (`herald::cli::main`) that `cargo test --workspace` builds for the
/// black-box tests. `cargo test` does not build `herald` itself: a package's
/// binaries are built only for that package's own integration tests.
pub fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    ["herald", "herald-test-server"]
        .iter()
        .map(|name| profile_dir.join(name))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no herald binary in {}: run `cargo build -p herald` first",
                profile_dir.display()
            )
        })
}
