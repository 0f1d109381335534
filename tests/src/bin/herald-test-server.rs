//! The `herald` binary, built inside the test package so black-box tests can
//! start it as a real process (`CARGO_BIN_EXE_herald-test-server`).
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    herald::cli::main()
}
