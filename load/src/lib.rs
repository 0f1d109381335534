//! herald-load: scenarios that drive a real Herald process over its public
//! API and report what it costs: throughput, latency, errors, server CPU.
//!
//! # Layout
//!
//! - [`cli`]: the `herald-load` command line, one subcommand per scenario
//! - [`target`]: the server under load: a Herald this tool starts, or one at `--url`
//! - [`server`]: starting, watching and killing a local `herald serve` process
//! - [`cpu`]: CPU time of a process, from `/proc`
//! - [`proc`]: resident memory and open files of a process, and this process's open-file limit
//! - [`client`]: subscriber connections (WebSocket, SSE) from chosen source addresses
//! - [`machine`]: what the machine is, for the record
//! - [`report`]: each run's figures, the human table and the JSON record
//! - [`nginx`]: nginx as a reverse proxy with an upstream keep-alive pool (`conns --via-nginx`)
//! - [`wire`]: byte-counting connections and a minimal HTTP/1.1 client (`poll-cost`)
//! - [`plot`]: SVG plots of latency distributions and memory per connection
//! - [`kit`]: what the scenarios share: publishing, subscribing, frames and
//!   seqs, latency and CPU sampling, common figures, the fan-out run
//! - [`scenarios`]: one file per scenario (`publish`, `conns`, `fanout`, `topics`, `storm`, `poll-cost`, `soak`)
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cpu;
pub mod kit;
pub mod machine;
pub mod nginx;
pub mod plot;
pub mod proc;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod target;
pub mod wire;

pub use cli::{Cli, Command, run};
