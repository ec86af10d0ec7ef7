//! The mesh controller: the destination service that tells proxies about endpoints,
//! identities and profiles, the proxy-injector admission webhook, and the cluster sources
//! (Kubernetes or a local folder of YAML) that feed them.
//!
//! Its contents arrive with the destination-service and injection work (issues 4 and 6).
