//! The mesh controller: the destination service that tells proxies about endpoints,
//! identities and profiles, and the sources (Kubernetes, or a local folder of the same YAML) that feed its index.
//!
//! Split by dependency: [`index`] is plain logic; [`convert`] translates Kubernetes
//! objects into it; [`dir`] reads them from a folder; [`destination`] serves the index
//! over gRPC.

pub mod convert;
pub mod crd;
pub mod destination;
pub mod dir;
pub mod index;
pub mod inject;
pub mod kubernetes;
pub mod webhook;

pub use index::Index;
