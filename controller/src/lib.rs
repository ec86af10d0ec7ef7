//! The mesh controller: the destination service that tells proxies about endpoints
//! and identities, the policy services that give them each service's client policy and
//! each port's server policy, and the sources (Kubernetes, or a local folder of the same
//! YAML) that feed its index.
//!
//! Split by dependency: [`index`] is plain logic; [`convert`] translates Kubernetes
//! objects into it; [`dir`] reads them from a folder; [`compile`], [`gateway`] and [`istio_traffic`] turn users' objects
//! into the policy model; [`destination`] and [`policy`] serve the index over gRPC, one target per
//! stream, and [`discovery`] many targets on one stream (what proxies use).

pub mod annotations;
pub mod authz;
pub mod compile;
pub mod convert;
pub mod crd;
pub mod destination;
pub mod dir;
pub mod discovery;
pub mod gateway;
pub mod index;
pub mod inject;
pub mod istio_traffic;
pub mod jwks;
pub mod kubernetes;
pub mod policy;
pub mod servers;
pub mod status;
pub mod webhook;

pub use index::Index;
