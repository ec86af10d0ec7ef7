//! The CustomResourceDefinitions for the mesh's own kinds, generated from the types in
//! `mesh-api` (committed under `charts/mesh/crds/`; a test fails when they drift).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// ServiceProfile's spec, as the CRD sees it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "linkerd.io",
    version = "v1alpha2",
    kind = "ServiceProfile",
    namespaced,
    shortname = "sp"
)]
pub struct ServiceProfileCrdSpec {
    /// The spec.
    #[serde(flatten)]
    pub spec: mesh_api::ServiceProfileSpec,
}

/// TrafficSplit's spec, as the CRD sees it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha1",
    kind = "TrafficSplit",
    namespaced,
    shortname = "ts"
)]
pub struct TrafficSplitCrdSpec {
    /// The spec.
    #[serde(flatten)]
    pub spec: mesh_api::TrafficSplitSpec,
}

/// Every CRD the mesh installs, with the file name each is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    let mut split = TrafficSplit::crd();
    // SMI's v1alpha1 to v1alpha4 share the fields the mesh reads (weights as quantities
    // or integers), so one schema serves them all; v1alpha1 is stored.
    if let Some(v1) = split.spec.versions.first().cloned() {
        for name in ["v1alpha2", "v1alpha3", "v1alpha4"] {
            let mut v = v1.clone();
            v.name = name.into();
            v.storage = false;
            split.spec.versions.push(v);
        }
    }
    vec![
        ("serviceprofiles.linkerd.io.yaml", ServiceProfile::crd()),
        ("trafficsplits.split.smi-spec.io.yaml", split),
    ]
}

/// A CRD as the YAML committed for it.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, mesh_api::yaml::YamlError> {
    Ok(format!(
        "# Generated from the types in mesh-api by mesh-controller; do not edit.\n{}",
        mesh_api::yaml::to_string(crd)?
    ))
}
