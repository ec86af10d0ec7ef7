//! Contracts between mesh components: the Kubernetes resource types users write
//! (ServiceProfile, TrafficSplit) with their validation, the destination service's gRPC
//! API, and the identity naming scheme. This crate does no I/O.

pub mod duration;
pub mod profile;
pub mod quantity;
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
