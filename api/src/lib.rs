//! Contracts between mesh components: the Kubernetes resource types users write
//! (ServiceProfile, TrafficSplit) with their validation, the destination service's gRPC
//! API, and the identity naming scheme. This crate does no I/O.

pub mod duration;
pub mod profile;
pub mod quantity;
#[cfg(feature = "schema")]
pub mod schema;
pub mod split;

pub use profile::ServiceProfileSpec;
pub use quantity::Quantity;
pub use split::TrafficSplitSpec;

/// A problem with one field of a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// The field, e.g. `spec.routes[1].condition.pathRegex`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The destination service's gRPC API (generated from `proto/destination.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod destination {
    tonic::include_proto!("mesh.destination");
}

/// The identity naming scheme.
pub mod identity {
    /// The trust domain every identity lives in.
    pub const TRUST_DOMAIN: &str = "cluster.local";

    /// The DNS name a proxy running as `service_account` in `namespace` presents:
    /// `SA.NS.serviceaccount.identity.mesh.cluster.local`.
    pub fn dns_name(service_account: &str, namespace: &str) -> String {
        format!("{service_account}.{namespace}.serviceaccount.identity.mesh.{TRUST_DOMAIN}")
    }

    /// The SPIFFE ID of the same identity: `spiffe://cluster.local/ns/NS/sa/SA`.
    pub fn spiffe_id(service_account: &str, namespace: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names_follow_the_architecture() {
            assert_eq!(
                super::dns_name("web", "shop"),
                "web.shop.serviceaccount.identity.mesh.cluster.local"
            );
            assert_eq!(
                super::spiffe_id("web", "shop"),
                "spiffe://cluster.local/ns/shop/sa/web"
            );
        }
    }
}
