//! mesh-proxy: the mesh's sidecar. It accepts a pod's inbound and outbound connections,
//! detects HTTP/1, HTTP/2 (and so gRPC) or opaque TCP on each, forwards requests to
//! balanced endpoints over pooled connections, answers its own failures with a
//! `mesh-proxy-error` header, and keeps golden metrics with exact HDR latency
//! histograms, served on the admin port.
//!
//! A request's path through the proxy reads top to bottom in [`inbound::stack`] and
//! [`outbound::stack`]; the layers they share are in [`http`], one per file.

pub mod access_log;
pub mod accrual;
pub mod admin;
pub mod authz;
pub mod backend;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod detect;
pub mod discover;
pub mod error;
pub mod fasthash;
pub mod filters;
pub mod http;
pub mod identity;
pub mod idle;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod origins;
pub mod outbound;
pub mod profile;
pub mod resolve;
pub mod server;
pub mod tap;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod vocab;
pub mod worker;

pub use config::Config;
pub use error::{PROXY_ERROR_HEADER, ProxyError};
pub use server::{Listening, Proxy, StartError};
