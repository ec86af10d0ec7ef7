//! The Kubernetes source: kube-runtime watchers for Namespaces, Services, Pods,
//! EndpointSlices, ServiceProfiles, TrafficSplits, HTTPRoutes and GRPCRoutes, and
//! Istio's and Linkerd's security and policy kinds (each optional: a cluster without
//! the CRD has none), translated by the same code as the dir source. A
//! refused object is logged and reported as a Warning Event on it; its last good
//! version stays in force. After a watch restart (a relist), objects that are gone are
//! removed.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::convert;
use crate::gateway::{GatewayRoute, RouteSpec};
use crate::index::{Index, Kind, Object, ObjectRef, Rejected};

/// The ServiceProfile API this source watches.
pub fn service_profiles() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "linkerd.io",
        "v1alpha2",
        "ServiceProfile",
    ))
}

/// The TrafficSplit API this source watches (the SMI versions share the fields used).
pub fn traffic_splits() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "split.smi-spec.io",
        "v1alpha2",
        "TrafficSplit",
    ))
}

/// The Gateway API's HTTPRoute, as this source watches it.
pub fn http_routes() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        mesh_api::gateway::GROUP,
        "v1",
        "HTTPRoute",
    ))
}

/// The Gateway API's GRPCRoute, as this source watches it.
pub fn grpc_routes() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        mesh_api::gateway::GROUP,
        "v1",
        "GRPCRoute",
    ))
}

/// The Gateway API's ReferenceGrant, as this source watches it.
pub fn reference_grants() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        mesh_api::gateway::GROUP,
        "v1beta1",
        "ReferenceGrant",
    ))
}

/// Istio's and Linkerd's security and policy kinds this source watches: (kind, API
/// resource). The version is the one each project stores and serves today.
pub fn policy_kinds() -> Vec<(Kind, ApiResource)> {
    let gvk = |g: &str, v: &str, k: &str| ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, k));
    let (istio, networking, linkerd) = (
        mesh_api::istio::SECURITY_GROUP,
        mesh_api::istio::NETWORKING_GROUP,
        mesh_api::linkerd::POLICY_GROUP,
    );
    vec![
        (
            Kind::PeerAuthentication,
            gvk(istio, "v1", "PeerAuthentication"),
        ),
        (
            Kind::IstioAuthorizationPolicy,
            gvk(istio, "v1", "AuthorizationPolicy"),
        ),
        (
            Kind::RequestAuthentication,
            gvk(istio, "v1", "RequestAuthentication"),
        ),
        (
            Kind::EnvoyFilter,
            gvk(networking, "v1alpha3", "EnvoyFilter"),
        ),
        (Kind::Server, gvk(linkerd, "v1beta3", "Server")),
        (
            Kind::LinkerdAuthorizationPolicy,
            gvk(linkerd, "v1alpha1", "AuthorizationPolicy"),
        ),
        (
            Kind::MeshTlsAuthentication,
            gvk(linkerd, "v1alpha1", "MeshTLSAuthentication"),
        ),
        (
            Kind::NetworkAuthentication,
            gvk(linkerd, "v1alpha1", "NetworkAuthentication"),
        ),
        (
            Kind::HttpLocalRateLimitPolicy,
            gvk(linkerd, "v1alpha1", "HTTPLocalRateLimitPolicy"),
        ),
        // Linkerd's own HTTPRoute (routes on a Server), beside the Gateway API's.
        (Kind::HttpRoute, gvk(linkerd, "v1beta3", "HTTPRoute")),
        // Istio's traffic kinds, at the versions every Istio release since 1.5 serves.
        (
            Kind::VirtualService,
            gvk(networking, "v1beta1", "VirtualService"),
        ),
        (
            Kind::DestinationRule,
            gvk(networking, "v1beta1", "DestinationRule"),
        ),
        (
            Kind::Telemetry,
            gvk(
                mesh_api::istio_networking::TELEMETRY_GROUP,
                "v1alpha1",
                "Telemetry",
            ),
        ),
    ]
}

/// The kinds this source watches; `run` counts them on `synced` as each is first listed.
pub const KINDS: usize = 22;

/// Watches every kind the index needs until the process ends, counting on `synced` the
/// kinds listed so far. Watch errors are retried with backoff by kube-runtime. Objects
/// refused get a Warning Event from `reporter` (e.g. `mesh-controller`); readers that
/// only follow the cluster (viz) pass `None` and record nothing.
pub async fn run(
    client: Client,
    index: Arc<Index>,
    synced: tokio::sync::watch::Sender<usize>,
    reporter: Option<&str>,
) {
    let synced = &synced;
    let recorder = reporter.map(|controller| {
        let reporter = Reporter {
            controller: controller.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Recorder::new(client.clone(), reporter)
    });
    let recorder = recorder.as_ref();
    let (sp, ts) = (service_profiles(), traffic_splits());
    let (hr, gr, rg) = (http_routes(), grpc_routes(), reference_grants());
    tokio::join!(
        follow(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            &index,
            recorder,
            synced,
            |n| convert::namespace(n).map(Object::Namespace).map_err(joined)
        ),
        follow(
            Api::<Service>::all(client.clone()),
            Kind::Service,
            &index,
            recorder,
            synced,
            |s| convert::service(s).map(Object::Service).map_err(joined)
        ),
        follow(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            &index,
            recorder,
            synced,
            |p| convert::pod(p).map(Object::Pod).map_err(joined)
        ),
        follow(
            Api::<EndpointSlice>::all(client.clone()),
            Kind::EndpointSlice,
            &index,
            recorder,
            synced,
            |s| convert::endpoint_slice(s)
                .map(Object::EndpointSlice)
                .map_err(joined)
        ),
        follow_with(
            Api::<DynamicObject>::all_with(client.clone(), &sp),
            Kind::ServiceProfile,
            &index,
            recorder,
            synced,
            |o| spec(o).map(Object::ServiceProfile),
            sp.clone()
        ),
        follow_with(
            Api::<DynamicObject>::all_with(client.clone(), &ts),
            Kind::TrafficSplit,
            &index,
            recorder,
            synced,
            |o| spec(o).map(Object::TrafficSplit),
            ts.clone()
        ),
        follow_with(
            Api::<DynamicObject>::all_with(client.clone(), &hr),
            Kind::HttpRoute,
            &index,
            recorder,
            synced,
            |o| route(o, RouteSpec::Http),
            hr.clone()
        ),
        follow_with(
            Api::<DynamicObject>::all_with(client.clone(), &gr),
            Kind::GrpcRoute,
            &index,
            recorder,
            synced,
            |o| route(o, RouteSpec::Grpc),
            gr.clone()
        ),
        follow_with(
            Api::<DynamicObject>::all_with(client.clone(), &rg),
            Kind::ReferenceGrant,
            &index,
            recorder,
            synced,
            |o| spec(o).map(Object::ReferenceGrant),
            rg.clone()
        ),
        futures_util::future::join_all(policy_kinds().into_iter().map(|(kind, ar)| {
            follow_with(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                kind,
                &index,
                recorder,
                synced,
                policy_translator(kind),
                ar,
            )
        })),
    );
}

/// How one of the policy kinds is read.
fn policy_translator(kind: Kind) -> fn(&DynamicObject) -> Result<Object, String> {
    use crate::index::SecuritySpec as S;
    use crate::index::TrafficSpec;
    fn created(o: &DynamicObject) -> Option<String> {
        o.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
    }
    match kind {
        Kind::PeerAuthentication => |o| Ok(Object::Security(S::Peer(spec(o)?), created(o))),
        Kind::IstioAuthorizationPolicy => {
            |o| Ok(Object::Security(S::Authorization(spec(o)?), created(o)))
        }
        Kind::RequestAuthentication => |o| {
            Ok(Object::Security(
                S::RequestAuthentication(spec(o)?),
                created(o),
            ))
        },
        Kind::EnvoyFilter => |o| Ok(Object::Security(S::EnvoyFilter(spec(o)?), created(o))),
        Kind::Server => |o| Ok(Object::Security(S::Server(spec(o)?), created(o))),
        Kind::LinkerdAuthorizationPolicy => |o| {
            Ok(Object::Security(
                S::LinkerdAuthorization(spec(o)?),
                created(o),
            ))
        },
        Kind::MeshTlsAuthentication => |o| Ok(Object::Security(S::MeshTls(spec(o)?), created(o))),
        Kind::NetworkAuthentication => |o| Ok(Object::Security(S::Network(spec(o)?), created(o))),
        Kind::HttpLocalRateLimitPolicy => {
            |o| Ok(Object::Security(S::LinkerdRateLimit(spec(o)?), created(o)))
        }
        Kind::VirtualService => |o| {
            Ok(Object::Traffic(
                TrafficSpec::VirtualService(Box::new(spec(o)?)),
                created(o),
            ))
        },
        Kind::DestinationRule => |o| {
            Ok(Object::Traffic(
                TrafficSpec::DestinationRule(Box::new(spec(o)?)),
                created(o),
            ))
        },
        Kind::Telemetry => |o| {
            Ok(Object::Traffic(
                TrafficSpec::Telemetry(Box::new(spec(o)?)),
                created(o),
            ))
        },
        _ => |o| route(o, RouteSpec::Http),
    }
}

fn joined(errors: Vec<mesh_api::FieldError>) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A custom resource's spec, with the failing field's path in the error.
fn spec<T: DeserializeOwned>(o: &DynamicObject) -> Result<T, String> {
    let Some(spec) = o.data.get("spec").cloned() else {
        return Err("spec: missing".into());
    };
    serde_path_to_error::deserialize(spec).map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
}

/// A Gateway API route, with its age (precedence goes to the oldest).
fn route<T: DeserializeOwned>(
    o: &DynamicObject,
    kind: fn(T) -> RouteSpec,
) -> Result<Object, String> {
    let created = o
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string());
    let client =
        crate::annotations::parse(o.metadata.annotations.as_ref(), false).map_err(joined)?;
    Ok(Object::Route(GatewayRoute {
        spec: kind(spec(o)?),
        created,
        client,
        generation: o.metadata.generation,
    }))
}

fn object_ref<K: Resource>(kind: Kind, o: &K) -> ObjectRef {
    let namespace = if kind == Kind::Namespace {
        String::new()
    } else {
        o.namespace().unwrap_or_default()
    };
    ObjectRef {
        kind,
        namespace,
        name: o.name_any(),
    }
}

async fn follow<K>(
    api: Api<K>,
    kind: Kind,
    index: &Index,
    recorder: Option<&Recorder>,
    synced: &tokio::sync::watch::Sender<usize>,
    translate: fn(&K) -> Result<Object, String>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone,
{
    follow_with(
        api,
        kind,
        index,
        recorder,
        synced,
        translate,
        K::DynamicType::default(),
    )
    .await
}

/// Applies one kind's watch events to the index.
async fn follow_with<K>(
    api: Api<K>,
    kind: Kind,
    index: &Index,
    recorder: Option<&Recorder>,
    synced: &tokio::sync::watch::Sender<usize>,
    translate: fn(&K) -> Result<Object, String>,
    dt: K::DynamicType,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Clone,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // What the index holds of this kind, and what the current (re)list has shown.
    let mut known: HashSet<ObjectRef> = HashSet::new();
    let mut listing: Option<HashSet<ObjectRef>> = None;
    let mut listed_once = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(o)) => {
                let at = object_ref(kind, &o);
                apply(index, recorder, &at, &o, translate, &dt).await;
                known.insert(at.clone());
                listing.get_or_insert_with(HashSet::new).insert(at);
            }
            Ok(watcher::Event::InitDone) => {
                if !listed_once {
                    listed_once = true;
                    synced.send_modify(|n| *n += 1);
                }
                if let Some(listed) = listing.take() {
                    for gone in known.difference(&listed) {
                        index.delete(gone);
                    }
                    known = listed;
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                let at = object_ref(kind, &o);
                apply(index, recorder, &at, &o, translate, &dt).await;
                known.insert(at);
            }
            Ok(watcher::Event::Delete(o)) => {
                let at = object_ref(kind, &o);
                index.delete(&at);
                known.remove(&at);
            }
            Err(error) => {
                // The Gateway API's, Istio's and Linkerd's CRDs are optional: a cluster
                // without them has none of their objects, which must not keep the
                // controller from serving.
                let absent = matches!(
                    &error,
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
                );
                let optional = !matches!(
                    kind,
                    Kind::Namespace
                        | Kind::Service
                        | Kind::Pod
                        | Kind::EndpointSlice
                        | Kind::ServiceProfile
                        | Kind::TrafficSplit
                );
                if absent && optional && !listed_once {
                    listed_once = true;
                    synced.send_modify(|n| *n += 1);
                    tracing::warn!(
                        ?kind,
                        "the cluster has no CRD for this kind: none are followed until it \
                         is installed (`mesh install --crds`)"
                    );
                }
                tracing::warn!(?kind, %error, "watch failed; retrying");
            }
        }
    }
}

async fn apply<K>(
    index: &Index,
    recorder: Option<&Recorder>,
    at: &ObjectRef,
    o: &K,
    translate: fn(&K) -> Result<Object, String>,
    dt: &K::DynamicType,
) where
    K: Resource,
{
    let result = translate(o).and_then(|object| {
        index.apply(at, object).map_err(|r| match r {
            // Applied, but for the annotations named.
            Rejected::Partly(_) => format!("{r}"),
            Rejected::Invalid(_) => {
                format!("{r}; refused, the last good version (if any) stays in force")
            }
        })
    });
    let Err(reason) = result else { return };
    tracing::error!("{at}: {reason}");
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "Invalid".into(),
        note: Some(reason.chars().take(1000).collect()),
        action: "Validate".into(),
        secondary: None,
    };
    let Some(recorder) = recorder else { return };
    if let Err(error) = recorder.publish(&event, &o.object_ref(dt)).await {
        tracing::warn!(%error, "cannot record an Event for {at}");
    }
}
