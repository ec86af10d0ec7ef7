//! mesh-viz: scrapes proxies, merges their latency histograms per edge, workload and
//! route, and serves the query API and the dashboard.
//!
//! Its contents arrive with the viz work (issue 7).
