//! The `herald` binary: everything lives in the library.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    herald::cli::main()
}
