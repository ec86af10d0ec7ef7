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

/// The Gateway API's HTTPRoute spec, as the CRD the mesh installs (where the cluster
/// has none) sees it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    status = "mesh_api::gateway::RouteStatus"
)]
pub struct HttpRouteCrdSpec {
    /// The spec.
    #[serde(flatten)]
    pub spec: mesh_api::gateway::HttpRouteSpec,
}

/// The Gateway API's GRPCRoute spec, as the CRD the mesh installs sees it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    plural = "grpcroutes",
    namespaced,
    status = "mesh_api::gateway::RouteStatus"
)]
pub struct GrpcRouteCrdSpec {
    /// The spec.
    #[serde(flatten)]
    pub spec: mesh_api::gateway::GrpcRouteSpec,
}

/// The label on the Gateway API CRDs the mesh generates.
pub const GATEWAY_API_LABEL: (&str, &str) = ("mesh.io/crd", "gateway-api");

/// The Gateway API's ReferenceGrant spec, as the CRD the mesh installs sees it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1beta1",
    kind = "ReferenceGrant",
    plural = "referencegrants",
    namespaced
)]
pub struct ReferenceGrantCrdSpec {
    /// The spec.
    #[serde(flatten)]
    pub spec: mesh_api::gateway::ReferenceGrantSpec,
}

/// The Gateway API's CRDs the mesh serves (the standard channel's route kinds), with
/// the file each is committed under: installed unless the cluster already has them.
pub fn gateway_api() -> Vec<(&'static str, CustomResourceDefinition)> {
    let mut http = HTTPRoute::crd();
    // v1beta1 has the same fields; v1 is stored.
    if let Some(v1) = http.spec.versions.first().cloned() {
        let mut beta = v1;
        beta.name = "v1beta1".into();
        beta.storage = false;
        http.spec.versions.push(beta);
    }
    let mut grpc = GRPCRoute::crd();
    let mut grant = ReferenceGrant::crd();
    // Kept when the chart is uninstalled: other controllers' routes may use them. The
    // label tells the mesh's own from the upstream CRDs (which `mesh install` leaves
    // alone).
    let (key, value) = GATEWAY_API_LABEL;
    for crd in [&mut http, &mut grpc, &mut grant] {
        crd.metadata.annotations =
            Some([("helm.sh/resource-policy".to_string(), "keep".to_string())].into());
        crd.metadata.labels = Some([(key.to_string(), value.to_string())].into());
    }
    vec![
        ("httproutes.gateway.networking.k8s.io.yaml", http),
        ("grpcroutes.gateway.networking.k8s.io.yaml", grpc),
        ("referencegrants.gateway.networking.k8s.io.yaml", grant),
    ]
}

/// Every CRD of the mesh's own kinds, with the file name each is committed under.
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
