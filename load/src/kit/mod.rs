//! The load toolkit: what the scenarios share, one file per idea. A
//! scenario takes its pieces from here, never from another scenario.
//!
//! - [`checks`]: checks of the arguments several scenarios share
//! - [`defaults`]: defaults of the arguments several scenarios share
//! - [`fds`]: open-file budgets, this process's and the server's
//! - [`publishing`]: HTTP clients, event bodies, publishers and their
//!   tallies, end events, failure kinds
//! - [`subscribing`]: where subscribers connect, waiting for them to open,
//!   collecting them at the end
//! - [`frames`]: parsing what a subscriber reads, and its seqs
//! - [`sampling`]: latency histograms, the clock in events, CPU samples
//! - [`figures`]: the correctness and server-cost figures scenarios report
//!   alike
//! - [`fanout_run`]: the fan-out run that `fanout`, `topics` and `soak`
//!   are made of

pub mod checks;
pub mod defaults;
pub mod fanout_run;
pub mod fds;
pub mod figures;
pub mod frames;
pub mod publishing;
pub mod sampling;
pub mod subscribing;
