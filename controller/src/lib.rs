//! The mesh controller: the destination service that tells proxies about endpoints,
//! identities and profiles, and the sources (a local folder of YAML now; Kubernetes
//! next) that feed its index.
//!
//! Split by dependency: [`index`] is plain logic; [`convert`] translates Kubernetes
//! objects into it; [`dir`] reads them from a folder; [`destination`] serves the index
//! over gRPC.

pub mod convert;
pub mod destination;
pub mod dir;
pub mod index;

pub use index::Index;
