//! SMI `TrafficSplit` (`split.smi-spec.io` v1alpha1 to v1alpha4), and its validation.

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::quantity::Quantity;

/// The API group of TrafficSplit; versions v1alpha1 to v1alpha4 share the fields used.
pub const GROUP: &str = "split.smi-spec.io";

/// The TrafficSplit spec: an apex service and its weighted backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The apex service clients address.
    pub service: String,
    /// The services that actually receive the traffic.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// A backend service and its weight (a quantity in v1alpha1, an integer later).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Backend {
    /// The backend service's name, in the split's namespace.
    pub service: String,
    /// Its relative weight.
    pub weight: Quantity,
}

impl TrafficSplitSpec {
    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.service.trim().is_empty() {
            errors.push(FieldError::new(
                "spec.service",
                "the apex service is required",
            ));
        }
        if self.backends.is_empty() {
            errors.push(FieldError::new(
                "spec.backends",
                "at least one backend is required",
            ));
        } else if self.backends.iter().all(|b| b.weight.0 == 0) {
            errors.push(FieldError::new("spec.backends", "weights sum to zero"));
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.weight > Quantity::MAX_WEIGHT {
                errors.push(FieldError::new(
                    format!("spec.backends[{i}].weight"),
                    "larger than 1000000",
                ));
            }
            if b.service.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("spec.backends[{i}].service"),
                    "a backend needs a service",
                ));
            }
        }
        errors
    }
}
