//! mesh-identity: the mesh's certificate authority. It authenticates proxies by their
//! service-account token and issues them short-lived leaf certificates for exactly that
//! service account's identity.

pub mod ca;
pub mod limit;
pub mod server;
pub mod service;
pub mod tokens;
