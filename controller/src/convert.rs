//! Translation: Kubernetes objects into the index's plain types (the only code that
//! knows k8s-openapi's shapes, shared by every source).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::FieldError;

use crate::compile::{InboundTls, TlsMode};
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

/// The annotation that sets a pod's (or a namespace's pods') inbound mTLS mode:
/// `strict` or `permissive`.
pub const INBOUND_TLS: &str = "config.mesh.io/inbound-tls";
/// The annotation listing ports that are strict whatever the mode (`8080,9090`).
pub const INBOUND_STRICT_PORTS: &str = "config.mesh.io/inbound-strict-ports";
/// The annotation listing ports that are permissive whatever the mode.
pub const INBOUND_PERMISSIVE_PORTS: &str = "config.mesh.io/inbound-permissive-ports";
/// Linkerd's default inbound policy annotation: what admits requests no authorization
/// does. It leaves the TLS mode alone: unmeshed clients of an `*-authenticated` port
/// are refused by the policy (403), so that the kubelet's plaintext probes still pass.
pub const LINKERD_DEFAULT_POLICY: &str = "config.linkerd.io/default-inbound-policy";
/// The mesh's name for the same annotation (it wins over Linkerd's when both are set).
pub const DEFAULT_POLICY: &str = "config.mesh.io/default-inbound-policy";
/// Ports (and ranges, `4000-4100`) whose traffic is opaque TCP, on a Service, pod or
/// namespace: the mesh's name, then Linkerd's.
pub const OPAQUE_PORTS: [&str; 2] = [
    "config.mesh.io/opaque-ports",
    "config.linkerd.io/opaque-ports",
];

/// The opaque-ports annotation: `None` when absent; a bad value is an error naming it.
pub fn opaque_ports(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Vec<(u16, u16)>>, FieldError> {
    let Some((key, value)) =
        annotations.and_then(|a| OPAQUE_PORTS.iter().find_map(|k| Some((*k, a.get(*k)?))))
    else {
        return Ok(None);
    };
    let mut ranges = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            FieldError::new(
                format!("metadata.annotations[{key:?}]"),
                format!("{part:?} is not a port or a range (expected e.g. 25,3306,4000-4100)"),
            )
        };
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let range = match part.split_once('-') {
            Some((lo, hi)) => (port(lo).ok_or_else(bad)?, port(hi).ok_or_else(bad)?),
            None => {
                let p = port(part).ok_or_else(bad)?;
                (p, p)
            }
        };
        if range.0 > range.1 {
            return Err(bad());
        }
        ranges.push(range);
    }
    Ok(Some(ranges))
}

/// The inbound-TLS annotations of a pod or namespace; a bad value is an error naming
/// the annotation.
pub fn inbound_tls(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<InboundTls, Vec<FieldError>> {
    let Some(annotations) = annotations else {
        return Ok(InboundTls::default());
    };
    let field = |name: &str| format!("metadata.annotations[{name:?}]");
    let mut errors = Vec::new();
    let default_policy = [DEFAULT_POLICY, LINKERD_DEFAULT_POLICY]
        .into_iter()
        .find_map(|k| Some((k, annotations.get(k)?)))
        .and_then(
            |(k, v)| match mesh_api::linkerd::DefaultPolicy::parse(v.trim()) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(FieldError::new(field(k), e));
                    None
                }
            },
        );
    let mode = match annotations.get(INBOUND_TLS).map(String::as_str) {
        Some("strict") => Some(TlsMode::Strict),
        Some("permissive") => Some(TlsMode::Permissive),
        Some(other) => {
            errors.push(FieldError::new(
                field(INBOUND_TLS),
                format!("{other:?}: expected strict or permissive"),
            ));
            None
        }
        None => None,
    };
    let opaque = opaque_ports(Some(annotations)).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let mut ports = |name: &str| -> Vec<u16> {
        let Some(list) = annotations.get(name) else {
            return Vec::new();
        };
        let parsed: Result<Vec<u16>, _> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(p))
            .collect();
        parsed.unwrap_or_else(|bad| {
            errors.push(FieldError::new(
                field(name),
                format!("{bad:?} is not a port (expected e.g. 8080,9090)"),
            ));
            Vec::new()
        })
    };
    let strict_ports = ports(INBOUND_STRICT_PORTS);
    let permissive_ports = ports(INBOUND_PERMISSIVE_PORTS);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(InboundTls {
        mode,
        strict_ports,
        permissive_ports,
        default_policy,
        opaque_ports: opaque,
    })
}

/// A Namespace's inject and inbound-TLS settings.
pub fn namespace(ns: &Namespace) -> Result<NamespaceInfo, Vec<FieldError>> {
    let annotations = ns.metadata.annotations.as_ref();
    Ok(NamespaceInfo {
        inject: inject(annotations),
        inbound_tls: inbound_tls(annotations)?,
    })
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
    // Bad client-policy annotations do not refuse the Service (its endpoints still
    // serve): the index keeps their last good values and reports them.
    let (client, mut client_errors) =
        match crate::annotations::parse(svc.metadata.annotations.as_ref(), true) {
            Ok(c) => (c, vec![]),
            Err(e) => (Default::default(), e),
        };
    let opaque = match opaque_ports(svc.metadata.annotations.as_ref()) {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => {
            client_errors.push(e);
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ServiceInfo {
        cluster_ip,
        ports,
        selector: spec.selector.unwrap_or_default(),
        external_name: spec.type_.as_deref() == Some("ExternalName"),
        client,
        client_errors,
        opaque_ports: opaque,
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
    // The kubelet's HTTP probes, by the port they hit: admitted whatever the policy.
    let mut probes = Vec::new();
    for c in containers.clone() {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let Some(get) = &probe.http_get else {
                continue;
            };
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => named_ports.get(name).copied(),
            };
            if let Some(port) = port {
                let path = get.path.clone().unwrap_or_else(|| "/".into());
                if !probes.contains(&(port, path.clone())) {
                    probes.push((port, path));
                }
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
        inbound_tls: inbound_tls(pod.metadata.annotations.as_ref())?,
        has_proxy: containers.clone().any(|c| c.name == PROXY_CONTAINER),
        named_ports,
        probes,
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
