//! Herald: a real-time notification service. Product services publish events
//! over HTTP; browsers and apps receive them over WebSocket, Server-Sent
//! Events or polling, and resume after a dropped connection without loss.
//!
//! # Layout
//!
//! Listed from the bottom up: a module uses only those above it (and
//! `telemetry`, which every layer reports to). Nothing below [`http`]
//! knows about HTTP.
//!
//! - [`topic`]: topic names and cursors
//! - [`event`]: events and their one wire encoding
//! - [`close`]: why a connection ends (codes and messages)
//! - [`telemetry`]: logs, traces and metrics
//! - [`config`]: settings from flags and `HERALD_*` variables
//! - [`auth`]: tokens, topic patterns, origins, tickets, revocations, access checks
//! - [`store`]: the durable event log (SQLite, Postgres), retention
//! - [`hub`]: which local connections want which topic, one registry per worker
//! - [`bus`]: carries committed events to every node's hubs (in-process, NATS)
//! - [`publish`]: the publish pipeline: parse, authorize, group commit, then the bus
//! - [`ack`]: acknowledgments: cumulative per subscriber and topic, coalesced per node and written to the store
//! - [`push`]: push to offline devices: devices, the outbox and its
//!   scheduler, Web Push, FCM and APNs
//! - [`session`]: connections (WebSocket, SSE, polling): the session actor,
//!   the catch-up machine, outbound queues, the node's gate
//! - [`node`]: one node's parts, built in dependency order
//! - [`http`]: routes, extractors and the table of error codes
//! - [`drain`]: owning the signals; draining the node before it exits
//! - [`app`]: building and running the server
//! - [`subscribe`]: `herald subscribe`, a resuming client for every transport
//! - [`cli`]: the `herald` command line
//!
//! The crate's API is what its tests, the load generator and the fuzz
//! targets use: [`auth`] (claims, minting), [`cli`], [`event`], [`store`],
//! [`topic`], [`push`] (Web Push keys) and [`fuzzing`]. Every other module
//! is `pub(crate)`.
#![forbid(unsafe_code)]

pub(crate) mod ack;
pub(crate) mod app;
pub mod auth;
pub(crate) mod bus;
pub mod cli;
pub(crate) mod close;
pub(crate) mod config;
pub(crate) mod drain;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod node;
pub(crate) mod publish;
pub mod push;
pub(crate) mod session;
pub mod store;
pub(crate) mod subscribe;
pub(crate) mod telemetry;
pub mod topic;
