//! Contracts between mesh components: the destination, identity and viz gRPC services,
//! the Kubernetes resource types (ServiceProfile, TrafficSplit) and the identity naming
//! scheme. This crate does no I/O.
//!
//! Its contents arrive with the identity and destination-service work (issues 3 and 4).
