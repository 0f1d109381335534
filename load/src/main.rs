//! The `herald-load` binary: parse the command line, run the scenario.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = herald_load::Cli::parse();
    if let herald_load::Command::Plot(args) = &cli.command {
        return herald_load::cli::plot_records(args);
    }
    let runtime = cli.runtime()?;
    let report = runtime.block_on(herald_load::run(cli))?;
    // Failed publishes are reported, not fatal, but a script should notice them.
    if report.failures() > 0 {
        std::process::exit(2);
    }
    Ok(())
}
