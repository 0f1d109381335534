//! Herald: a real-time notification service. Product services publish events
//! over HTTP; browsers and apps receive them over WebSocket, Server-Sent
//! Events or polling, and resume after a dropped connection without loss.
//!
//! # Layout
//!
//! - [`config`]: settings from flags and `HERALD_*` variables
//! - [`topic`]: topic names and cursors
//! - [`event`]: events and their one wire encoding
//! - [`auth`]: tokens, topic patterns
//! - [`ack`]: acknowledgments: cumulative per subscriber and topic, coalesced per node
//! - [`store`]: the durable event log (SQLite, Postgres), group commit, retention
//! - [`bus`]: carries committed events to every node (in-process, NATS)
//! - [`publish`]: the publish path: parse, check, commit, fan out
//! - [`subscribe`]: `herald subscribe`, a resuming client for every transport
//! - [`http`]: routes and the table of error codes
//! - [`app`]: building and running the server
//! - [`drain`]: owning the signals; draining the node before it exits
//! - [`cli`]: the `herald` command line
#![forbid(unsafe_code)]

pub mod ack;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod drain;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod publish;
pub mod session;
pub mod store;
pub mod subscribe;
pub mod telemetry;
pub mod topic;
