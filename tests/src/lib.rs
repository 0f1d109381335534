//! Black-box test support for Herald: the real `herald` binary started as a
//! process on a free port, against a private SQLite file or a fresh database
//! on a private Postgres, with helpers to publish, subscribe and poll.
//!
//! - [`app`]: start and drive a Herald process
//! - [`chaos`]: the chaos run (three nodes, faults, a delivery checker)
//! - [`pg`]: a throwaway Postgres cluster
//! - [`nats`]: a throwaway `nats-server`
//! - [`procs`]: ports, processes, watchdogs
//! - [`otlp`]: a tiny OTLP/HTTP (JSON) span receiver
//! - [`prom`]: a Prometheus text format parser
//! - [`push`]: local stand-ins of the push services (Web Push, FCM, APNs)

pub mod app;
pub mod chaos;
pub mod clients;
pub mod nats;
pub mod otlp;
pub mod pg;
pub mod procs;
pub mod prom;
pub mod push;
