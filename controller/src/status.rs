//! Route conditions, followed: every Gateway API route's `Accepted` and `ResolvedRefs`
//! per parent Service, recomputed when what they read changes (the route, its
//! Services, its backends, the routes beside it) and handed on — to the log
//! everywhere, and in a cluster to the route's status (written through the status
//! subresource, keeping other controllers' entries).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use mesh_api::gateway::{
    CONTROLLER_NAME, ParentRef, RouteParentStatus, RouteStatus, StatusCondition,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::gateway::{ParentReports, Report};
use crate::index::{Index, Kind, ObjectRef, Wakes, Watch};

/// A route's reports, per parent Service (namespace, name), after a change; empty
/// when the route is gone.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The route.
    pub route: ObjectRef,
    /// Its conditions per parent.
    pub reports: ParentReports,
}

/// How many woken routes are recomputed before the follower yields.
const BATCH: usize = 256;

/// Follows every route's conditions in `index`, sending each change (and each route's
/// first reports) on `tx`, until `tx` closes. A change wakes only the routes whose
/// conditions it may change.
pub async fn follow(index: Arc<Index>, tx: mpsc::Sender<Change>) {
    let wakes = Wakes::new();
    let mut list = index.watch();
    let mut followed: HashMap<u64, (ObjectRef, Watch, ParentReports)> = HashMap::new();
    let mut tags: HashMap<ObjectRef, u64> = HashMap::new();
    let mut next = 0u64;
    let mut relist = true;
    loop {
        if relist {
            let now: BTreeSet<ObjectRef> = index.routes(Some(&mut list)).into_iter().collect();
            let gone: Vec<ObjectRef> = tags.keys().filter(|r| !now.contains(*r)).cloned().collect();
            for route in gone {
                if let Some(tag) = tags.remove(&route) {
                    followed.remove(&tag);
                }
                if tx
                    .send(Change {
                        route,
                        reports: vec![],
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            for route in now {
                if tags.contains_key(&route) {
                    continue;
                }
                next += 1;
                let mut watch = index.watch_in(&wakes, next);
                let reports = index.route_reports(&route, Some(&mut watch));
                tags.insert(route.clone(), next);
                followed.insert(next, (route.clone(), watch, reports.clone()));
                if tx.send(Change { route, reports }).await.is_err() {
                    return;
                }
            }
        }
        for tag in wakes.take(BATCH) {
            let Some((route, watch, last)) = followed.get_mut(&tag) else {
                continue;
            };
            let reports = index.route_reports(route, Some(watch));
            if reports != *last {
                *last = reports.clone();
                let change = Change {
                    route: route.clone(),
                    reports,
                };
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            () = list.changed() => relist = true,
            () = wakes.woken() => relist = false,
            () = tx.closed() => return,
        }
    }
}

/// Logs a change: a warning for each condition that does not hold.
pub fn log(change: &Change) {
    for ((ns, svc), report) in &change.reports {
        let bad = report.problems();
        if bad.is_empty() {
            tracing::info!(route = %change.route, service = %format!("{ns}/{svc}"), "route accepted, references resolved");
        } else {
            tracing::warn!(route = %change.route, service = %format!("{ns}/{svc}"), "{}", bad.join("; "));
        }
    }
}

/// The API of a route kind.
fn api(client: &Client, route: &ObjectRef) -> Option<Api<DynamicObject>> {
    let resource = resource(route.kind)?;
    Some(Api::namespaced_with(
        client.clone(),
        &route.namespace,
        &resource,
    ))
}

/// The route's status with the mesh's entries replaced by `reports`, one per Service
/// parent in `parents` (the spec's, echoed as written; other controllers' entries
/// kept); a condition that did not change keeps its transition time. No reports: the
/// mesh's entries go.
pub fn merged(
    current: &RouteStatus,
    reports: &[((String, String), Report)],
    parents: &[ParentRef],
    route_ns: &str,
    now: &str,
) -> RouteStatus {
    let mut out: Vec<RouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent in parents.iter().filter(|p| p.is_service()) {
        let ns = parent.namespace.as_deref().unwrap_or(route_ns);
        let Some((_, report)) = reports
            .iter()
            .find(|((rns, svc), _)| rns == ns && *svc == parent.name)
        else {
            continue;
        };
        let previous = current
            .parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == *parent);
        let conditions = report
            .conditions
            .iter()
            .map(|c| {
                let status = if c.status { "True" } else { "False" };
                let since = previous
                    .and_then(|p| p.conditions.iter().find(|o| o.kind == c.kind))
                    .filter(|o| o.status == status)
                    .map_or_else(|| now.to_string(), |o| o.last_transition_time.clone());
                StatusCondition {
                    kind: c.kind.into(),
                    status: status.into(),
                    reason: c.reason.into(),
                    message: c.message.clone(),
                    last_transition_time: since,
                    observed_generation: report.generation,
                }
            })
            .collect();
        out.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }
    RouteStatus { parents: out }
}

/// Writes a change into the route's status: a merge patch of `status.parents`,
/// conditional on the version read (another controller writing meanwhile makes it
/// read and merge again).
pub async fn write(client: &Client, change: &Change) -> Result<(), kube::Error> {
    let Some(api) = api(client, &change.route) else {
        return Ok(());
    };
    let mut tries = 0;
    loop {
        let Some(object) = api.get_opt(&change.route.name).await? else {
            return Ok(());
        };
        let current: RouteStatus = object
            .data
            .get("status")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let parents: Vec<ParentRef> = object.data["spec"]["parentRefs"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| serde_json::from_value(p.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = merged(
            &current,
            &change.reports,
            &parents,
            &change.route.namespace,
            &now,
        );
        if status == current {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "status": status,
        });
        match api
            .patch_status(
                &change.route.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 409 && tries < 3 => tries += 1,
            other => return other.map(|_| ()),
        }
    }
}

/// Follows route conditions into the log and, with `client`, into each route's status.
pub async fn run(index: Arc<Index>, client: Option<Client>) {
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(follow(index, tx));
    while let Some(change) = rx.recv().await {
        log(&change);
        if let Some(client) = &client
            && let Err(error) = write(client, &change).await
        {
            tracing::warn!(route = %change.route, %error, "cannot write the route's status");
        }
    }
}

/// The API resource of a route kind.
fn resource(kind: Kind) -> Option<ApiResource> {
    match kind {
        Kind::HttpRoute => Some(crate::kubernetes::http_routes()),
        Kind::GrpcRoute => Some(crate::kubernetes::grpc_routes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{GatewayRoute, RouteSpec};
    use crate::index::{Object, ServiceInfo, ServicePort, TargetPort};

    fn service(index: &Index, name: &str) {
        let at = ObjectRef {
            kind: Kind::Service,
            namespace: "shop".into(),
            name: name.into(),
        };
        let svc = ServiceInfo {
            ports: vec![ServicePort {
                port: 80,
                name: None,
                target: TargetPort::Number(8080),
            }],
            ..Default::default()
        };
        index.apply(&at, Object::Service(svc)).expect("service");
    }

    fn route_ref() -> ObjectRef {
        ObjectRef {
            kind: Kind::HttpRoute,
            namespace: "shop".into(),
            name: "canary".into(),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Change>) -> Change {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a change in time")
            .expect("a change")
    }

    #[tokio::test]
    async fn conditions_follow_what_they_read() {
        let index = Arc::new(Index::default());
        service(&index, "books");
        let spec = mesh_api::yaml::from_str(
            "parentRefs: [{group: '', kind: Service, name: books}]\n\
             rules: [{backendRefs: [{name: books-v2, port: 80}]}]",
        )
        .expect("spec");
        let route = GatewayRoute {
            spec: RouteSpec::Http(spec),
            created: None,
            client: Default::default(),
            generation: Some(1),
        };
        // Routes added after the follower starts are followed too.
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(follow(index.clone(), tx));
        tokio::task::yield_now().await;
        index
            .apply(&route_ref(), Object::Route(route))
            .expect("route");
        let first = next(&mut rx).await;
        assert_eq!(first.route, route_ref());
        let resolved = &first.reports[0].1.conditions[1];
        assert_eq!((resolved.kind, resolved.status), ("ResolvedRefs", false));

        // Another Service wakes nothing; the backend appearing resolves it.
        let woken = index.wakes();
        service(&index, "unrelated");
        assert_eq!(
            index.wakes(),
            woken,
            "an unrelated Service woke a route follower"
        );
        service(&index, "books-v2");
        let second = next(&mut rx).await;
        assert!(
            second.reports[0].1.conditions.iter().all(|c| c.status),
            "{second:?}"
        );

        // Gone: an empty change.
        index.delete(&route_ref());
        let gone = next(&mut rx).await;
        assert_eq!((gone.route, gone.reports.len()), (route_ref(), 0));
    }

    #[test]
    fn statuses_keep_other_controllers_and_unchanged_transition_times() {
        let other = RouteParentStatus {
            parent_ref: ParentRef {
                name: "gw".into(),
                ..Default::default()
            },
            controller_name: "example.com/gateway".into(),
            conditions: vec![],
        };
        let report = |ok: bool, generation| Report {
            kind: "HTTPRoute",
            namespace: "shop".into(),
            name: "canary".into(),
            conditions: vec![crate::gateway::Condition {
                kind: "Accepted",
                status: ok,
                reason: if ok { "Accepted" } else { "NoMatchingParent" },
                message: "m".into(),
            }],
            generation: Some(generation),
        };
        let spec = vec![
            other.parent_ref.clone(),
            ParentRef {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "books".into(),
                port: Some(80),
                ..Default::default()
            },
        ];
        let parent = ("shop".to_string(), "books".to_string());
        let first = merged(
            &RouteStatus {
                parents: vec![other.clone()],
            },
            &[(parent.clone(), report(true, 3))],
            &spec,
            "shop",
            "T1",
        );
        assert_eq!(first.parents.len(), 2);
        assert_eq!(first.parents[0], other);
        let ours = &first.parents[1];
        assert_eq!(ours.controller_name, CONTROLLER_NAME);
        assert_eq!(
            ours.parent_ref, spec[1],
            "the spec's parentRef, port and all"
        );
        assert_eq!(ours.conditions[0].last_transition_time, "T1");
        assert_eq!(ours.conditions[0].observed_generation, Some(3));
        // Unchanged: the time stays; changed: it moves.
        let again = merged(
            &first,
            &[(parent.clone(), report(true, 3))],
            &spec,
            "shop",
            "T2",
        );
        assert_eq!(again, first);
        let flipped = merged(&first, &[(parent, report(false, 4))], &spec, "shop", "T3");
        assert_eq!(flipped.parents.len(), 2);
        assert_eq!(flipped.parents[1].conditions[0].status, "False");
        assert_eq!(flipped.parents[1].conditions[0].last_transition_time, "T3");
        // No reports (the route left its Services): the mesh's entry goes.
        let gone = merged(&flipped, &[], &spec, "shop", "T4");
        assert_eq!(gone.parents, [other]);
    }
}
