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

/// The label on the Istio and Linkerd policy CRDs the mesh generates.
pub const POLICY_LABEL: (&str, &str) = ("mesh.io/crd", "policy");

/// The policy kinds of Istio and Linkerd the mesh reads: (group, kind, plural,
/// versions served, the stored one last).
const POLICY_KINDS: [(&str, &str, &str, &[&str]); 13] = [
    (
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
        &["v1beta1", "v1"],
    ),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
        &["v1beta1", "v1"],
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        "requestauthentications",
        &["v1beta1", "v1"],
    ),
    (
        "networking.istio.io",
        "EnvoyFilter",
        "envoyfilters",
        &["v1alpha3"],
    ),
    (
        "policy.linkerd.io",
        "Server",
        "servers",
        &["v1beta1", "v1beta2", "v1beta3"],
    ),
    (
        "policy.linkerd.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
        &["v1alpha1"],
    ),
    (
        "policy.linkerd.io",
        "MeshTLSAuthentication",
        "meshtlsauthentications",
        &["v1alpha1"],
    ),
    (
        "policy.linkerd.io",
        "NetworkAuthentication",
        "networkauthentications",
        &["v1alpha1"],
    ),
    (
        "policy.linkerd.io",
        "HTTPLocalRateLimitPolicy",
        "httplocalratelimitpolicies",
        &["v1alpha1"],
    ),
    (
        "policy.linkerd.io",
        "HTTPRoute",
        "httproutes",
        &["v1beta1", "v1beta2", "v1beta3"],
    ),
    (
        "networking.istio.io",
        "VirtualService",
        "virtualservices",
        &["v1alpha3", "v1beta1", "v1"],
    ),
    (
        "networking.istio.io",
        "DestinationRule",
        "destinationrules",
        &["v1alpha3", "v1beta1", "v1"],
    ),
    (
        "telemetry.istio.io",
        "Telemetry",
        "telemetries",
        &["v1alpha1", "v1"],
    ),
];

/// CRDs for Istio's security kinds and Linkerd's policy kinds, so that users' objects
/// of those kinds apply as written on a cluster that runs neither: installed only
/// where the cluster has no CRD of that name (Istio's or Linkerd's own are left alone).
/// Their schemas take any spec: the controller validates it, refusing bad objects
/// naming the field (with a Warning Event), as for every other kind.
pub fn policy() -> Vec<(String, CustomResourceDefinition)> {
    let (key, value) = POLICY_LABEL;
    POLICY_KINDS
        .iter()
        .map(|(group, kind, plural, versions)| {
            let name = format!("{plural}.{group}");
            let stored = versions.len() - 1;
            let versions: Vec<serde_json::Value> = versions
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::json!({
                        "name": v,
                        "served": true,
                        "storage": i == stored,
                        "schema": {"openAPIV3Schema": {
                            "type": "object",
                            "description": format!("{kind}: validated by mesh-controller."),
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            },
                        }},
                    })
                })
                .collect();
            let crd = serde_json::json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": name,
                    "labels": {key: value},
                    "annotations": {"helm.sh/resource-policy": "keep"},
                },
                "spec": {
                    "group": group,
                    "names": {
                        "kind": kind,
                        "listKind": format!("{kind}List"),
                        "plural": plural,
                        "singular": kind.to_ascii_lowercase(),
                    },
                    "scope": "Namespaced",
                    "versions": versions,
                },
            });
            let crd: CustomResourceDefinition =
                serde_json::from_value(crd).expect("a well-formed CustomResourceDefinition");
            (format!("{name}.yaml"), crd)
        })
        .collect()
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
