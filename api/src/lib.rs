//! Contracts between mesh components: the Kubernetes resource types users write
//! (ServiceProfile, TrafficSplit, the Gateway API's HTTPRoute and GRPCRoute) with their validation, the destination service's gRPC
//! API, and the identity naming scheme. This crate does no I/O, but for the `start`
//! feature's helper that every binary starts with.

pub mod codec;
pub mod duration;
pub mod gateway;
pub mod istio;
pub mod istio_networking;
pub mod linkerd;
pub mod net;
pub mod profile;
pub mod quantity;
#[cfg(feature = "schema")]
pub mod schema;
pub mod split;
#[cfg(feature = "start")]
pub mod start;
pub mod stats;
#[cfg(feature = "yaml")]
pub mod yaml;

pub use profile::ServiceProfileSpec;
pub use quantity::Quantity;
pub use split::TrafficSplitSpec;

/// The most gRPC streams the controller serves on one connection.
pub const CONTROLLER_MAX_STREAMS: u32 = 10_000;

/// The most subscriptions one connection's `Discovery.Watch` streams may hold at once
/// (a proxy's watches all share one stream).
pub const MAX_SUBSCRIPTIONS: usize = 40_000;

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

/// The policy API every front-end compiles into (generated from `proto/policy.proto`):
/// `OutboundPolicies.Watch` and `InboundPolicies.Watch`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod policy {
    tonic::include_proto!("mesh.policy");
}

/// One stream per proxy for all it follows (generated from `proto/discovery.proto`):
/// `Discovery.Watch` multiplexes the destination and policy subscriptions.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod discovery {
    tonic::include_proto!("mesh.discovery");
}

/// The identity service's gRPC API (generated from `proto/identity.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod identity_api {
    tonic::include_proto!("mesh.identity");
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

    /// The service account and namespace a DNS identity names, if it is one of ours.
    pub fn parse_dns_name(name: &str) -> Option<(&str, &str)> {
        let rest = name.strip_suffix(&format!(".serviceaccount.identity.mesh.{TRUST_DOMAIN}"))?;
        // Namespaces are DNS labels (no dots); service-account names may have dots.
        let (sa, ns) = rest.rsplit_once('.')?;
        (!sa.is_empty() && !ns.is_empty()).then_some((sa, ns))
    }

    /// The DNS identity of the identity service itself, running as `mesh-identity` in
    /// `namespace`: what proxies check its certificate against.
    pub fn service_name(namespace: &str) -> String {
        dns_name("mesh-identity", namespace)
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
            let name = super::dns_name("web.v2", "shop");
            assert_eq!(super::parse_dns_name(&name), Some(("web.v2", "shop")));
            assert_eq!(super::parse_dns_name("web.shop.svc.cluster.local"), None);
            assert_eq!(
                super::parse_dns_name(".serviceaccount.identity.mesh.cluster.local"),
                None
            );
        }
    }
}
