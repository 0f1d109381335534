//! Scenarios: one file each. A scenario is a subcommand with its own
//! arguments (which flatten the shared [`TargetArgs`] and [`OutputArgs`]),
//! checked settings, and a `run` that loads a [`Target`] once per
//! configuration and returns each run's figures.
//!
//! Adding one: a file here implementing [`Scenario`], a variant of
//! [`crate::cli::Command`], and a variant of [`crate::report::Runs`]. What
//! scenarios share (publishers, subscribers, frames, sampling, common
//! figures) is in [`crate::kit`]; a scenario never imports from another.

use serde::Serialize;

use crate::cli::OutputArgs;
use crate::report::Runs;
use crate::target::{Target, TargetArgs};

pub mod acks;
pub mod conns;
pub mod fanout;
pub mod poll_cost;
pub mod publish;
pub mod soak;
pub mod storm;
pub mod topics;

/// A load scenario.
pub trait Scenario {
    /// Its name (the subcommand).
    const NAME: &'static str;
    /// Its checked settings, recorded in the report.
    type Settings: Serialize;

    /// Which Herald to load.
    fn target(&self) -> &TargetArgs;
    /// Where the report goes.
    fn output(&self) -> &OutputArgs;
    /// Checks the arguments before anything starts.
    fn settings(&self) -> anyhow::Result<Self::Settings>;
    /// How long a minted token must stay valid, in seconds.
    fn token_secs(settings: &Self::Settings) -> u64;
    /// Open files this process needs (one per connection it holds): the
    /// soft limit is raised to it, before a local server is started (which
    /// inherits the limit).
    fn fds_needed(_settings: &Self::Settings) -> u64 {
        0
    }
    /// Runs every configuration in turn against `target`.
    fn run(
        settings: &Self::Settings,
        target: &mut Target,
    ) -> impl Future<Output = anyhow::Result<Runs>>;
}
