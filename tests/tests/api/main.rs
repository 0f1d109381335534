//! Black-box tests: the real `herald` binary against real SQLite and Postgres.

mod acks;
mod assets;
mod auth;
mod bad_input;
mod browser;
mod bus_outage;
mod chaos;
mod cli;
mod cluster;
mod delivery;
mod drain;
mod failover;
mod front;
mod observability;
mod openapi;
mod pacing;
mod publish;
mod push;
mod raw;
mod reliability;
mod security;
mod store;
mod store_outage;
mod subscribe_cli;
mod token_life;

/// Runs an `async fn(Backend)` test once per store: `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(herald_tests::app::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(herald_tests::app::Backend::Postgres).await
            }
        }
    )*};
}
