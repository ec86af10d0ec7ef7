//! The Kubernetes source, with kube's own client over a mocked API server (tower-test):
//! the initial lists, watch events, a watch restart that forces a relist, and an
//! invalid ServiceProfile refused with a Warning Event while the last good one stays.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use mesh_controller::Index;
use mesh_controller::index::Resolution;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// What the fake API server answers: a list per path (the last one repeats), and a
/// queue of watch responses per path (each a JSON-lines body); a watch with nothing
/// queued is held open.
#[derive(Default)]
struct Script {
    lists: HashMap<&'static str, VecDeque<Vec<Value>>>,
    watches: HashMap<&'static str, VecDeque<Vec<Value>>>,
}

const NAMESPACES: &str = "/api/v1/namespaces";
const SERVICES: &str = "/api/v1/services";
const PODS: &str = "/api/v1/pods";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PROFILES: &str = "/apis/linkerd.io/v1alpha2/serviceprofiles";
const SPLITS: &str = "/apis/split.smi-spec.io/v1alpha2/trafficsplits";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const ISTIO_AUTHZ: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const SERVERS: &str = "/apis/policy.linkerd.io/v1beta3/servers";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1beta1/virtualservices";
const DESTINATION_RULES: &str = "/apis/networking.istio.io/v1beta1/destinationrules";

/// A VirtualService for `reviews` in demo: jason to subset v2, everyone else to v1,
/// with the request timeout given.
fn virtual_service(timeout: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "demo", "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"hosts": ["reviews"], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"timeout": timeout, "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}})
}

fn server(access: &str) -> Value {
    json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
        "metadata": {"name": "web-http", "namespace": "demo", "resourceVersion": "5", "uid": "s1",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080, "accessPolicy": access}})
}

fn list(items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}))
        .expect("json")
}

const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/db-route";

/// Serves requests from `script`; Event POSTs are reported on `events`, route status
/// patches on `patches`.
async fn serve(
    mut handle: Handle,
    mut script: Script,
    events: mpsc::UnboundedSender<Value>,
    patches: mpsc::UnboundedSender<Value>,
) {
    let mut held = Vec::new();
    while let Some((req, respond)) = handle.next_request().await {
        let path = req.uri().path().to_string();
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        if path == ROUTE || path == format!("{ROUTE}/status") {
            let patch = req.method() == http::Method::PATCH;
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .expect("body")
                .to_bytes();
            if patch {
                let _ = patches.send(serde_json::from_slice(&body).expect("patch json"));
            }
            // Another controller's entry is there already.
            let mut object = route("/q/.*");
            object["status"] = json!({"parents": [{"parentRef": {"name": "gw"},
                "controllerName": "example.com/gateway", "conditions": []}]});
            respond.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&object).expect("json")))
                    .expect("rsp"),
            );
            continue;
        }
        if req.method() == http::Method::POST && path.contains("/events") {
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .expect("body")
                .to_bytes();
            let event: Value = serde_json::from_slice(&body).expect("event json");
            let _ = events.send(event.clone());
            respond.send_response(
                Response::builder()
                    .status(StatusCode::CREATED)
                    .body(Body::from(body.to_vec()))
                    .expect("rsp"),
            );
            continue;
        }
        // GRPCRoutes are not served: the cluster has no CRD for them (404).
        let key = [
            NAMESPACES,
            SERVICES,
            PODS,
            SLICES,
            PROFILES,
            SPLITS,
            HTTP_ROUTES,
            ISTIO_AUTHZ,
            SERVERS,
            VIRTUAL_SERVICES,
            DESTINATION_RULES,
        ]
        .into_iter()
        .find(|k| *k == path);
        let Some(key) = key else {
            // As an API server answers for a kind it does not serve.
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "the server could not find the requested resource",
                "reason": "NotFound", "details": {}, "code": 404});
            respond.send_response(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(serde_json::to_vec(&status).expect("json")))
                    .expect("rsp"),
            );
            continue;
        };
        if watch {
            match script.watches.get_mut(key).and_then(VecDeque::pop_front) {
                Some(events) => {
                    let lines: Vec<u8> = events
                        .iter()
                        .flat_map(|e| {
                            [serde_json::to_vec(e).expect("json"), b"\n".to_vec()].concat()
                        })
                        .collect();
                    respond
                        .send_response(Response::builder().body(Body::from(lines)).expect("rsp"));
                }
                // Nothing more to say: keep the watch open.
                None => held.push(respond),
            }
        } else {
            let lists = script.lists.entry(key).or_default();
            let items = if lists.len() > 1 {
                lists.pop_front().unwrap_or_default()
            } else {
                lists.front().cloned().unwrap_or_default()
            };
            respond.send_response(
                Response::builder()
                    .body(Body::from(list(&items)))
                    .expect("rsp"),
            );
        }
    }
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": "2"},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "x"}, {"name": "mesh-proxy", "image": "p"}]},
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn profile(path_regex: &str) -> Value {
    json!({"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
        "metadata": {"name": "web.demo.svc.cluster.local", "namespace": "demo", "resourceVersion": "3", "uid": "p1"},
        "spec": {"routes": [{"name": "api", "condition": {"method": "GET", "pathRegex": path_regex}, "timeout": "2s"}]}})
}

fn route(path: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "db-route", "namespace": "demo", "resourceVersion": "4", "uid": "r1",
            "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 2},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "db"}],
            "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": path}}],
                "backendRefs": [{"name": "db", "port": 5432}]}]}})
}

fn endpoints(index: &Index) -> Vec<String> {
    match index.resolve("web.demo.svc.cluster.local:80", "demo", None) {
        Resolution::Service { endpoints, .. } => {
            endpoints.keys().map(ToString::to_string).collect()
        }
        Resolution::Pod { .. } | Resolution::Unknown => vec!["unknown".into()],
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lists_watches_restarts_and_refusals() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut script = Script::default();
    script.lists.insert(
        NAMESPACES,
        [vec![json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "annotations": {"linkerd.io/inject": "enabled"}}})]]
        .into(),
    );
    script.lists.insert(SERVICES, [vec![json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})]].into());
    // Pods: listed, then a watch adds b and deletes a, then the watch expires (410) and
    // the relist shows only c.
    script.lists.insert(
        PODS,
        [
            vec![pod("web-a", "127.0.1.1")],
            vec![pod("web-c", "127.0.1.3")],
        ]
        .into(),
    );
    script.watches.insert(PODS, [
        vec![json!({"type": "ADDED", "object": pod("web-b", "127.0.1.2")}), json!({"type": "DELETED", "object": pod("web-a", "127.0.1.1")})],
        vec![json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}})],
    ].into());
    // Profiles: a good one listed, then an edit with a regex that does not compile.
    script
        .lists
        .insert(PROFILES, [vec![profile("/api/.*")]].into());
    script.watches.insert(
        PROFILES,
        [vec![
            json!({"type": "MODIFIED", "object": profile("/api/(")}),
        ]]
        .into(),
    );
    script.lists.insert(SPLITS, [vec![]].into());
    // An HTTPRoute listed, then an edit that does not compile.
    script
        .lists
        .insert(HTTP_ROUTES, [vec![route("/q/.*")]].into());
    script.watches.insert(
        HTTP_ROUTES,
        [vec![json!({"type": "MODIFIED", "object": route("/q/(")})]].into(),
    );
    // Istio's and Linkerd's kinds: a DENY listed; a Server listed, then an edit with an
    // access policy Linkerd does not define. (The other policy kinds' CRDs are absent.)
    script.lists.insert(ISTIO_AUTHZ, [vec![json!({"apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy", "metadata": {"name": "no-admin", "namespace": "demo", "resourceVersion": "6"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}})]].into());
    script
        .lists
        .insert(SERVERS, [vec![server("all-authenticated")]].into());
    script.watches.insert(
        SERVERS,
        [vec![
            json!({"type": "MODIFIED", "object": server("everyone")}),
        ]]
        .into(),
    );
    // Istio's traffic kinds: a VirtualService and DestinationRule listed, then an edit
    // of the VirtualService with a timeout Istio would refuse.
    script.lists.get_mut(SERVICES).expect("services")[0].push(
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "demo"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]}}),
    );
    script
        .lists
        .insert(VIRTUAL_SERVICES, [vec![virtual_service("3s")]].into());
    script.watches.insert(
        VIRTUAL_SERVICES,
        [vec![
            json!({"type": "MODIFIED", "object": virtual_service("soon")}),
        ]]
        .into(),
    );
    script.lists.insert(DESTINATION_RULES, [vec![json!({"apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "demo", "resourceVersion": "8"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}]}})]].into());
    // A selector-less service whose endpoints only an EndpointSlice gives.
    script.lists.get_mut(SERVICES).expect("services")[0]
        .push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "demo"}, "spec": {"ports": [{"port": 5432}]}}));
    script.lists.insert(SLICES, [vec![json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4", "ports": [{"port": 15432}], "endpoints": [{"addresses": ["127.0.1.9"]}]})]].into());

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (patches_tx, mut patches) = mpsc::unbounded_channel();
    tokio::spawn(serve(handle, script, events_tx, patches_tx));
    let index = Arc::new(Index::for_cluster());
    let (synced, mut listed) = tokio::sync::watch::channel(0);
    tokio::spawn(mesh_controller::kubernetes::run(
        client.clone(),
        index.clone(),
        synced,
        Some("mesh-controller"),
    ));
    tokio::spawn(mesh_controller::status::run(index.clone(), Some(client)));
    // Every kind is listed once (the sync the controller waits for before serving).
    tokio::time::timeout(
        Duration::from_secs(10),
        listed.wait_for(|n| *n == mesh_controller::kubernetes::KINDS),
    )
    .await
    .expect("all kinds listed")
    .expect("synced");

    // The relist after the expired watch leaves exactly pod c.
    eventually("pods c only, after the relist", || {
        endpoints(&index) == ["127.0.1.3:8080"]
    })
    .await;
    let Resolution::Service { endpoints: eps, .. } =
        index.resolve("10.96.0.20:80", "default", None)
    else {
        panic!("cluster IP")
    };
    let identity = eps.values().next().and_then(|e| e.identity.clone());
    assert_eq!(
        identity.as_deref(),
        Some("web.demo.serviceaccount.identity.mesh.cluster.local")
    );

    eventually("the slice's endpoint", || {
        matches!(index.resolve("db.demo:5432", "x", None), Resolution::Service { endpoints, .. }
            if endpoints.keys().map(ToString::to_string).collect::<Vec<_>>() == ["127.0.1.9:15432"])
    })
    .await;

    // The bad edits are refused with Warning Events; the good versions stay.
    let mut notes = HashMap::new();
    for _ in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("an Event; so far {notes:?}"))
            .expect("event");
        assert_eq!(event["type"], "Warning");
        let name = event["regarding"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        notes.insert(name, event["note"].as_str().unwrap_or_default().to_string());
    }
    let note = &notes["web.demo.svc.cluster.local"];
    assert!(
        note.contains("spec.routes[0].condition.pathRegex"),
        "{note}"
    );
    let note = &notes["reviews"];
    assert!(note.contains("spec.http[1].timeout"), "{note}");
    let reviews = index.outbound_policy("reviews.demo.svc.cluster.local:9080", "demo", None);
    assert_eq!(reviews.sources[0].kind, "VirtualService");
    let subset = |r: &mesh_api::policy::HttpRoute| match r.backends[0]
        .backend
        .as_ref()
        .and_then(|b| b.kind.as_ref())
    {
        Some(mesh_api::policy::backend::Kind::Subset(s)) => s.labels["version"].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(subset(&reviews.routes[0]), "v2");
    assert_eq!(subset(&reviews.routes[1]), "v1");
    assert_eq!(
        reviews.routes[1].timeouts.as_ref().map(|t| t.request_ms),
        Some(3000),
        "the last good VirtualService"
    );
    let note = &notes["web-http"];
    assert!(note.contains("spec.accessPolicy"), "{note}");
    let inbound = index.inbound_policy("web-c", "demo", 8080, None);
    let kinds: Vec<&str> = inbound.sources.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["Server", "AuthorizationPolicy"], "{inbound:?}");
    assert_eq!(
        inbound.default_policy(),
        mesh_api::policy::DefaultPolicy::AllAuthenticated,
        "the last good Server"
    );
    assert_eq!(
        inbound.authorizations[0].action(),
        mesh_api::policy::AuthorizationAction::Deny
    );
    let note = &notes["db-route"];
    assert!(
        note.contains("spec.rules[0].matches[0].path.value"),
        "{note}"
    );
    let db = index.outbound_policy("db.demo.svc.cluster.local:5432", "demo", None);
    assert_eq!(db.sources[0].kind, "HTTPRoute");
    assert!(
        matches!(
            db.routes[0].matches[0].path.as_ref().and_then(|p| p.kind.as_ref()),
            Some(mesh_api::policy::path_match::Kind::Regex(re)) if re == "/q/.*"
        ),
        "{db:?}"
    );
    let p = index.outbound_policy("web.demo.svc.cluster.local:80", "demo", None);
    assert_eq!(p.routes.len(), 1);
    assert_eq!(
        p.routes[0].timeouts.as_ref().map(|t| t.request_ms),
        Some(2000)
    );

    // The route's status, through the status subresource: the mesh's entry for its
    // parent Service beside the other controller's.
    let patch = tokio::time::timeout(Duration::from_secs(10), patches.recv())
        .await
        .expect("a status patch")
        .expect("patch");
    let parents = patch["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(parents.len(), 2, "{patch}");
    assert_eq!(parents[0]["controllerName"], "example.com/gateway");
    assert_eq!(parents[1]["controllerName"], "mesh.io/mesh-controller");
    assert_eq!(parents[1]["parentRef"]["name"], "db");
    let conditions = parents[1]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(of("Accepted")["status"], "True", "{patch}");
    assert_eq!(of("ResolvedRefs")["status"], "True", "{patch}");
    assert_eq!(of("Accepted")["observedGeneration"], 2);
    // Conditional on the version read.
    assert_eq!(patch["metadata"]["resourceVersion"], "4", "{patch}");
}
