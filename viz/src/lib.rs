//! mesh-viz: scrapes proxies, merges their latency histograms per edge, workload and
//! route over a sliding window, receives the proxies' spans over OTLP, and serves the
//! query API, Prometheus metrics and the dashboard.

pub mod query;
pub mod scrape;
pub mod server;
pub mod stats;
pub mod store;
pub mod tap;
pub mod traces;
