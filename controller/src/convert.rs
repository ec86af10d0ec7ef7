//! Translation: Kubernetes objects into the index's plain types (the only code that
//! knows k8s-openapi's shapes, shared by every source), and validated profiles into
//! the destination API's messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::destination as pb;
use mesh_api::profile::{RequestMatch, ResponseMatch, RetryBudget};
use mesh_api::{FieldError, ServiceProfileSpec};

use crate::index::{
    NamespaceInfo, PodInfo, ServiceInfo, ServicePort, SliceEndpoint, SliceInfo, TargetPort,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The annotation that meshes a namespace or pod, and Linkerd's name for it.
pub const INJECT_ANNOTATIONS: [&str; 2] = ["mesh.io/inject", "linkerd.io/inject"];
/// The name of the proxy's container in an injected pod.
pub const PROXY_CONTAINER: &str = "mesh-proxy";

/// The inject annotation (`mesh.io/inject`, or Linkerd's): `Some(true)` enabled.
pub fn inject(annotations: Option<&BTreeMap<String, String>>) -> Option<bool> {
    let annotations = annotations?;
    INJECT_ANNOTATIONS
        .iter()
        .find_map(|k| match annotations.get(*k).map(String::as_str) {
            Some("enabled") => Some(true),
            Some("disabled") => Some(false),
            _ => None,
        })
}

/// A Namespace's inject setting.
pub fn namespace(ns: &Namespace) -> NamespaceInfo {
    NamespaceInfo {
        inject: inject(ns.metadata.annotations.as_ref()),
    }
}

/// A Service's ports and selector.
pub fn service(svc: &Service) -> Result<ServiceInfo, Vec<FieldError>> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => match ip.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(FieldError::new(
                    "spec.clusterIP",
                    format!("not an IP address: {ip:?}"),
                ));
                None
            }
        },
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        let Ok(port) = u16::try_from(p.port) else {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].port"),
                format!("{} is not a port", p.port),
            ));
            continue;
        };
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => {
                    errors.push(FieldError::new(
                        format!("spec.ports[{i}].targetPort"),
                        format!("{n} is not a port"),
                    ));
                    continue;
                }
            },
            Some(IntOrString::String(name)) => match name.parse::<u16>() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Name(name.clone()),
            },
        };
        ports.push(ServicePort {
            port,
            name: p.name.clone(),
            target,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ServiceInfo {
        cluster_ip,
        ports,
        selector: spec.selector.unwrap_or_default(),
        external_name: spec.type_.as_deref() == Some("ExternalName"),
    })
}

/// A Pod's address, labels, readiness, identity and mesh status.
pub fn pod(pod: &Pod) -> Result<PodInfo, Vec<FieldError>> {
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let ip = match status.pod_ip.as_deref() {
        None | Some("") => None,
        Some(ip) => Some(ip.parse().map_err(|_| {
            vec![FieldError::new(
                "status.podIP",
                format!("not an IP address: {ip:?}"),
            )]
        })?),
    };
    // No conditions at all (a hand-written local pod) counts as ready.
    let ready = match &status.conditions {
        None => true,
        Some(c) => c.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    } && status.phase.as_deref().is_none_or(|p| p == "Running");
    let mut named_ports = std::collections::HashMap::new();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers.clone() {
        for p in c.ports.iter().flatten() {
            if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                named_ports.insert(name.clone(), port);
            }
        }
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let workload = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(
            |o| match (o.kind.as_str(), labels.get("pod-template-hash")) {
                // A Deployment's pods belong to a ReplicaSet named `<deployment>-<hash>`.
                ("ReplicaSet", Some(hash)) => o
                    .name
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(&o.name)
                    .to_string(),
                _ => o.name.clone(),
            },
        )
        .or_else(|| labels.get("app").cloned());
    Ok(PodInfo {
        ip,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        ready,
        inject: inject(pod.metadata.annotations.as_ref()),
        has_proxy: containers.clone().any(|c| c.name == PROXY_CONTAINER),
        named_ports,
        workload,
        labels,
    })
}

/// An EndpointSlice's service, ports and endpoints (FQDN slices carry nothing usable).
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<SliceInfo, Vec<FieldError>> {
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    let Some(service) = labels.get("kubernetes.io/service-name").cloned() else {
        return Err(vec![FieldError::new(
            "metadata.labels",
            "no kubernetes.io/service-name label",
        )]);
    };
    if slice.address_type == "FQDN" {
        return Ok(SliceInfo {
            service,
            ..Default::default()
        });
    }
    let mut errors = Vec::new();
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        match p.port.map(u16::try_from) {
            Some(Ok(n)) => ports.push((p.name.clone(), n)),
            _ => errors.push(FieldError::new(
                format!("ports[{i}].port"),
                "missing or not a port",
            )),
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse() {
                Ok(ip) => addresses.push(ip),
                Err(_) => errors.push(FieldError::new(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("not an IP: {a:?}"),
                )),
            }
        }
        // Kubernetes: an unknown readiness means ready.
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            pod,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SliceInfo {
        service,
        ports,
        endpoints,
    })
}

/// A validated ServiceProfile as the destination API's message.
pub fn profile(spec: &ServiceProfileSpec, fqdn: &str) -> pb::Profile {
    pb::Profile {
        fully_qualified_name: fqdn.to_string(),
        routes: spec
            .routes
            .iter()
            .map(|r| pb::Route {
                name: r.name.clone(),
                condition: Some(request_match(&r.condition)),
                response_classes: r
                    .response_classes
                    .iter()
                    .map(|c| pb::ResponseClass {
                        condition: Some(response_match(&c.condition)),
                        is_failure: c.is_failure,
                    })
                    .collect(),
                is_retryable: r.retryable(),
                // 0 means no timeout, so anything shorter than 1 ms becomes 1 ms.
                timeout_ms: r.timeout().map_or(0, |t| {
                    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
                }),
                retry_budget: r.retry_budget.as_ref().map(budget),
            })
            .collect(),
        retry_budget: Some(budget(
            spec.retry_budget
                .as_ref()
                .unwrap_or(&RetryBudget::default()),
        )),
        dst_overrides: spec
            .dst_overrides
            .iter()
            .map(|d| pb::WeightedDst {
                authority: d.authority.clone(),
                weight: d.weight.0,
            })
            .collect(),
        opaque_protocol: false,
    }
}

fn budget(b: &RetryBudget) -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl_ms: b.ttl().map_or(10_000, |t| t.as_millis() as u64),
    }
}

/// Several conditions in one object all hold: they become an `all`.
fn request_match(m: &RequestMatch) -> pb::RequestMatch {
    use pb::request_match::{Match, Seq};
    let mut parts = Vec::new();
    if let Some(re) = &m.path_regex {
        parts.push(Match::PathRegex(mesh_api::profile::anchored(re)));
    }
    if let Some(method) = &m.method {
        parts.push(Match::Method(method.to_ascii_uppercase()));
    }
    if let Some(all) = &m.all {
        parts.push(Match::All(Seq {
            matches: all.iter().map(request_match).collect(),
        }));
    }
    if let Some(any) = &m.any {
        parts.push(Match::Any(Seq {
            matches: any.iter().map(request_match).collect(),
        }));
    }
    if let Some(not) = &m.not {
        parts.push(Match::Not(Box::new(request_match(not))));
    }
    let r#match = match parts.len() {
        // An empty condition matches everything: an empty `all`.
        0 => Match::All(Seq { matches: vec![] }),
        1 => parts.remove(0),
        _ => Match::All(Seq {
            matches: parts
                .into_iter()
                .map(|m| pb::RequestMatch { r#match: Some(m) })
                .collect(),
        }),
    };
    pb::RequestMatch {
        r#match: Some(r#match),
    }
}

fn response_match(m: &ResponseMatch) -> pb::ResponseMatch {
    use pb::response_match::{Match, Seq, StatusRange};
    let mut parts = Vec::new();
    if let Some(s) = &m.status {
        parts.push(Match::Status(StatusRange {
            min: s.min.unwrap_or(100),
            max: s.max.unwrap_or(599),
        }));
    }
    if let Some(all) = &m.all {
        parts.push(Match::All(Seq {
            matches: all.iter().map(response_match).collect(),
        }));
    }
    if let Some(any) = &m.any {
        parts.push(Match::Any(Seq {
            matches: any.iter().map(response_match).collect(),
        }));
    }
    if let Some(not) = &m.not {
        parts.push(Match::Not(Box::new(response_match(not))));
    }
    let r#match = match parts.len() {
        0 => Match::All(Seq { matches: vec![] }),
        1 => parts.remove(0),
        _ => Match::All(Seq {
            matches: parts
                .into_iter()
                .map(|m| pb::ResponseMatch { r#match: Some(m) })
                .collect(),
        }),
    };
    pb::ResponseMatch {
        r#match: Some(r#match),
    }
}
