//! planfeed: pulls a ticketing provider's XML feed into a store and serves `GET /search` over it.
//!
//! - [`clock`]: the hybrid logical clock behind fetch ids and plan versions.
//! - [`domain`]: plans, zones, keys and time ranges, apart from XML and storage.
//! - [`feed`]: chunking the streamed feed at base-plan boundaries and parsing chunks.
//! - [`fetch`]: what a fetch is made of apart from its actor: its typed failures.
//! - [`delivery`]: what becomes of accepted plans: the store, else the durable spool, replayed in
//!   order; one timeout, one retry policy, one classifier; the days written announced as events.
//! - [`store`]: the `Store` trait and its implementations (embedded SQLite, ClickHouse).
//! - [`actors`]: the ingestion pipeline (supervisor, scheduler, fetcher, parsers, batch writer).
//! - [`search`]: answers searches from the store through a per-day cache.
//! - [`http`]: the server and its routes: `/search`, `/health`, `/ready`, `/metrics`, `/openapi.yaml`.
//! - [`config`]: typed settings from `config/*.toml` and `PLANFEED__*` variables.
//! - [`simulator`]: a provider simulator (real HTTP, real XML) for tests, benchmarks and demos.
//! - [`metrics`]: Prometheus metrics for `/metrics`.
//! - [`service`]: wires everything together for `planfeed serve`.
//! - [`reload`]: applies a changed configuration while running (file watch, `SIGHUP`).
//! - [`retry`]: the one backoff policy and retry loop, every retry counted.
//! - [`readiness`]: what `GET /ready` checks.
//! - [`cpu`]: the lower-priority threads where ingestion's CPU-heavy work runs.

pub mod actors;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod delivery;
pub mod domain;
pub mod feed;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod readiness;
pub mod reload;
pub mod retry;
pub mod search;
pub mod service;
pub mod simulator;
pub mod store;
