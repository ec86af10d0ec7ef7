//! `mesh check [--pre]`: checks against the cluster of the current kubeconfig, each
//! printed `√` or `×` with a hint; `mesh check --dir FOLDER` checks a folder of YAML
//! as the controller's folder source reads it (refused objects, route conditions). Before install: the API, the Kubernetes version, the
//! rights install needs, and no mesh there yet. After: the CRDs, the control plane's
//! Deployments, the webhook and its CA bundle, the trust anchors and the issuer.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed or not.
    pub ok: bool,
    /// What to do about a failure.
    pub hint: Option<String>,
}

fn pass(name: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        hint: None,
    }
}

fn fail(name: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        hint: Some(hint.into()),
    }
}

/// Runs the checks with `client`: pre-install ones with `pre`, else post-install ones.
pub async fn run(client: kube::Client, pre: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let version = match client.apiserver_version().await {
        Ok(v) => v,
        Err(e) => {
            out.push(fail(
                "can reach the Kubernetes API",
                format!("{e}: set KUBECONFIG or the current context to your cluster"),
            ));
            return out;
        }
    };
    out.push(pass(format!(
        "can reach the Kubernetes API ({})",
        version.git_version
    )));
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(0);
    if version.major == "1" && minor >= 29 {
        out.push(pass("Kubernetes is 1.29 or newer (native sidecars)"));
    } else {
        out.push(fail(
            "Kubernetes is 1.29 or newer (native sidecars)",
            format!(
                "this cluster runs {}.{}: inject with `mesh inject --manual --classic-sidecar`",
                version.major, version.minor
            ),
        ));
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mesh_ns = namespaces.get_opt("mesh").await;
    if pre {
        for (group, resource) in [
            ("", "namespaces"),
            ("apiextensions.k8s.io", "customresourcedefinitions"),
            ("rbac.authorization.k8s.io", "clusterroles"),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
            ),
        ] {
            out.push(can_create(&client, group, resource).await);
        }
        out.push(match mesh_ns {
            Ok(None) => pass("the mesh namespace does not exist yet"),
            Ok(Some(_)) => fail(
                "the mesh namespace does not exist yet",
                "the mesh is installed already: run `mesh check` (without --pre)",
            ),
            Err(e) => fail("the mesh namespace does not exist yet", e.to_string()),
        });
        return out;
    }
    out.push(match mesh_ns {
        Ok(Some(_)) => pass("the mesh namespace exists"),
        Ok(None) => fail(
            "the mesh namespace exists",
            "run `mesh install | kubectl apply -f -`",
        ),
        Err(e) => fail("the mesh namespace exists", e.to_string()),
    });
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "serviceprofiles.linkerd.io",
        "trafficsplits.split.smi-spec.io",
    ] {
        let title = format!("CRD {name} is installed");
        out.push(match crds.get_opt(name).await {
            Ok(Some(_)) => pass(title),
            Ok(None) => fail(title, "run `mesh install --crds | kubectl apply -f -`"),
            Err(e) => fail(title, e.to_string()),
        });
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "mesh");
    for name in ["mesh-identity", "mesh-controller"] {
        let title = format!("{name} is running");
        out.push(match deployments.get_opt(name).await {
            Ok(Some(d)) => {
                let ready = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
                if ready > 0 {
                    pass(format!("{title} ({ready} available)"))
                } else {
                    fail(
                        title,
                        format!("no replica is available: kubectl -n mesh describe deploy {name}"),
                    )
                }
            }
            Ok(None) => fail(title, "run `mesh install | kubectl apply -f -`"),
            Err(e) => fail(title, e.to_string()),
        });
    }
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let title = "the proxy injector webhook is registered with a CA bundle";
    out.push(match webhooks.get_opt("mesh-proxy-injector").await {
        Ok(Some(w)) => {
            let has_ca = w.webhooks.unwrap_or_default().iter().any(|h| {
                h.client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            });
            if has_ca {
                pass(title)
            } else {
                fail(
                    title,
                    "the webhook has no caBundle: re-apply `mesh install`",
                )
            }
        }
        Ok(None) => fail(title, "run `mesh install | kubectl apply -f -`"),
        Err(e) => fail(title, e.to_string()),
    });
    out.extend(cluster_routes(&client).await);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "mesh");
    let secrets: Api<Secret> = Api::namespaced(client, "mesh");
    let anchors = configmaps
        .get_opt("mesh-identity-trust-anchors")
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data?.get("ca-bundle.crt").cloned());
    let issuer = secrets
        .get_opt("mesh-identity-issuer")
        .await
        .ok()
        .flatten()
        .and_then(|s| {
            let d = s.data?;
            Some((d.get("tls.crt")?.0.clone(), d.get("tls.key")?.0.clone()))
        });
    let title = "the issuer is valid and signed by the trust anchors";
    out.push(match (anchors, issuer) {
        (Some(a), Some((crt, key))) => {
            let key = String::from_utf8_lossy(&key).into_owned();
            match mesh_identity::ca::Issuer::from_pem(a.as_bytes(), &crt, &key) {
                Ok(i) => {
                    let left = i
                        .not_after()
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    if left.as_secs() < 30 * 86_400 {
                        fail(title, format!("the issuer expires in {} days: rotate it (docs/identity.md)", left.as_secs() / 86_400))
                    } else {
                        pass(format!("{title} (expires in {} days)", left.as_secs() / 86_400))
                    }
                }
                Err(e) => fail(title, e.to_string()),
            }
        }
        _ => fail(title, "the mesh-identity-trust-anchors ConfigMap or mesh-identity-issuer Secret is missing: re-apply `mesh install`"),
    });
    out
}

/// The Gateway API's route CRDs are installed, and each route attached to a Service
/// is accepted with its references resolved, as the controller wrote into its status.
async fn cluster_routes(client: &kube::Client) -> Vec<Check> {
    use kube::api::{DynamicObject, ListParams};
    use mesh_api::gateway::{CONTROLLER_NAME, RouteStatus};
    let mut out = Vec::new();
    for (resource, plural) in [
        (mesh_controller::kubernetes::http_routes(), "httproutes"),
        (mesh_controller::kubernetes::grpc_routes(), "grpcroutes"),
    ] {
        let title = format!("CRD {plural}.gateway.networking.k8s.io is installed");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let routes = match api.list(&ListParams::default()).await {
            Ok(list) => {
                out.push(pass(title));
                list.items
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                out.push(fail(
                    title,
                    "run `mesh install --crds | kubectl apply -f -` (or install the Gateway API's standard channel)",
                ));
                continue;
            }
            Err(e) => {
                out.push(fail(title, e.to_string()));
                continue;
            }
        };
        for route in routes {
            let ns = route.metadata.namespace.clone().unwrap_or_default();
            let name = route.metadata.name.clone().unwrap_or_default();
            let on_service = route.data["spec"]["parentRefs"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["kind"] == "Service"));
            if !on_service {
                continue;
            }
            let status: RouteStatus = route
                .data
                .get("status")
                .cloned()
                .and_then(|s| serde_json::from_value(s).ok())
                .unwrap_or_default();
            let ours: Vec<_> = status
                .parents
                .iter()
                .filter(|p| p.controller_name == CONTROLLER_NAME)
                .collect();
            let kind = &resource.kind;
            if ours.is_empty() {
                out.push(fail(
                    format!("{kind} {ns}/{name} has the mesh's status"),
                    "mesh-controller has not written it: is it running? (`kubectl -n mesh logs deploy/mesh-controller`)",
                ));
            }
            for parent in ours {
                let svc = format!(
                    "{}/{}",
                    parent.parent_ref.namespace.as_deref().unwrap_or(&ns),
                    parent.parent_ref.name
                );
                let problems: Vec<String> = parent
                    .conditions
                    .iter()
                    .filter(|c| c.status != "True")
                    .map(|c| format!("{} is {} ({}): {}", c.kind, c.status, c.reason, c.message))
                    .collect();
                out.push(route_check(kind, &ns, &name, &svc, &problems));
            }
        }
    }
    out
}

/// The check of one route on one parent Service (`ns/name`): passed when nothing is
/// wrong.
fn route_check(kind: &str, ns: &str, name: &str, svc: &str, problems: &[String]) -> Check {
    let title =
        format!("{kind} {ns}/{name} on Service {svc} is accepted and its references resolve");
    if problems.is_empty() {
        pass(title)
    } else {
        fail(title, problems.join("; "))
    }
}

/// One check per Gateway API route in `index` and Service it attaches to: accepted,
/// and every reference resolved (what the controller writes into the route's status).
pub fn routes(index: &mesh_controller::Index) -> Vec<Check> {
    let mut out = Vec::new();
    for at in index.routes(None) {
        for ((ns, svc), report) in index.route_reports(&at, None) {
            let svc = format!("{ns}/{svc}");
            out.push(route_check(
                report.kind,
                &at.namespace,
                &at.name,
                &svc,
                &report.problems(),
            ));
        }
    }
    out
}

/// `mesh check --dir FOLDER`: the folder as the controller reads it: every object it
/// refuses (naming the file and field) and every route's conditions.
pub fn folder(dir: &std::path::Path) -> Vec<Check> {
    use mesh_controller::dir::{Folder, Scope};
    let index = mesh_controller::Index::default();
    let mut folder = Folder::new(dir.to_path_buf());
    let scan = match folder.scan(&Scope::All) {
        Ok(scan) => scan,
        Err(e) => return vec![fail(format!("can read {}", dir.display()), e.to_string())],
    };
    let errors = folder.apply(&index, scan);
    let mut out = vec![if errors.is_empty() {
        pass(format!("every object in {} is accepted", dir.display()))
    } else {
        fail(
            format!("every object in {} is accepted", dir.display()),
            format!("{} refused", errors.len()),
        )
    }];
    for e in errors {
        out.push(fail(
            format!("{} document {}{} is refused", e.file, e.document, e.object),
            e.reason,
        ));
    }
    out.extend(routes(&index));
    out
}

async fn can_create(client: &kube::Client, group: &str, resource: &str) -> Check {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                verb: Some("create".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let title = format!("can create {resource}");
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match api.create(&PostParams::default(), &review).await {
        Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => pass(title),
        Ok(_) => fail(title, "installing needs cluster-admin rights"),
        Err(e) => fail(title, e.to_string()),
    }
}

/// Prints the checks; returns whether all passed.
pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        match &c.hint {
            None => println!("√ {}", c.name),
            Some(h) => println!("× {}\n    hint: {h}", c.name),
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        println!("\nStatus check results are √");
    } else {
        println!("\nStatus check results are × ({failed} failed)");
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    #[test]
    fn a_folder_is_checked_as_the_controller_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("shop.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: shop}\n\
             spec: {ports: [{port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: good, namespace: shop}\n\
             spec: {parentRefs: [{group: '', kind: Service, name: books}], rules: [{backendRefs: [{name: books, port: 80}]}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: dangling, namespace: shop}\n\
             spec: {parentRefs: [{group: '', kind: Service, name: books}, {group: '', kind: Service, name: gone}], rules: [{backendRefs: [{name: books-v9, port: 80}]}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: bad, namespace: shop}\n\
             spec: {rules: [{matches: [{path: {type: RegularExpression, value: '('}}]}]}\n",
        )
        .expect("write");
        let checks = folder(dir.path());
        let failed: Vec<_> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.hint.clone().unwrap_or_default()))
            .collect();
        let passed: Vec<_> = checks
            .iter()
            .filter(|c| c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            passed,
            ["HTTPRoute shop/good on Service shop/books is accepted and its references resolve"]
        );
        assert_eq!(failed.len(), 4, "{failed:#?}");
        assert!(
            failed[1]
                .contains("(HTTPRoute shop/bad) is refused: spec.rules[0].matches[0].path.value"),
            "{failed:#?}"
        );
        assert!(failed[2].contains("dangling on Service shop/books") && failed[2].contains("ResolvedRefs is False (BackendNotFound): spec.rules[0].backendRefs[0]: no Service shop/books-v9"), "{failed:#?}");
        assert!(
            failed[3].contains("on Service shop/gone")
                && failed[3].contains("Accepted is False (NoMatchingParent)"),
            "{failed:#?}"
        );
    }

    #[test]
    fn istios_virtual_services_are_checked_with_their_subsets_and_rivals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples/istio");
        std::fs::copy(
            format!("{examples}/routing.yaml"),
            dir.path().join("routing.yaml"),
        )
        .expect("copy");
        let services: String = ["reviews", "helloworld", "web-app"]
            .iter()
            .map(|n| {
                format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: default}}\n\
                     spec: {{selector: {{app: {n}}}, ports: [{{port: 9080}}]}}\n---\n"
                )
            })
            .collect();
        std::fs::write(dir.path().join("services.yaml"), services).expect("write");
        let checks = folder(dir.path());
        let find = |name: &str| {
            checks
                .iter()
                .find(|c| {
                    c.name
                        .starts_with(&format!("VirtualService default/{name} "))
                })
                .unwrap_or_else(|| panic!("no check of {name}: {checks:#?}"))
        };
        assert!(
            checks[0].ok,
            "every example object is accepted: {checks:#?}"
        );
        assert!(find("reviews").ok, "{checks:#?}");
        assert!(find("web-vs").ok, "{checks:#?}");
        let rival = find("reviews-content");
        assert!(
            !rival.ok
                && rival
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.contains("Superseded") && h.contains("default/reviews")),
            "{rival:#?}"
        );
        let hello = find("helloworld");
        assert!(
            !hello.ok
                && hello
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.contains("defines subset \"v2\"")),
            "{hello:#?}"
        );
    }

    fn version(minor: &str) -> (&'static str, Value) {
        (
            "/version",
            json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"), "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
        )
    }

    async fn checks(objects: Vec<(&'static str, Value)>, allowed: bool, pre: bool) -> Vec<Check> {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        tokio::spawn(crate::fake_api::serve(handle, objects, allowed));
        run(client, pre).await
    }

    fn names(checks: &[Check], ok: bool) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.ok == ok)
            .map(|c| c.name.clone())
            .collect()
    }

    #[tokio::test]
    async fn pre_install_on_a_fresh_cluster_passes_and_old_ones_are_told() {
        let c = checks(vec![version("31")], true, true).await;
        assert!(c.iter().all(|c| c.ok), "{c:#?}");
        assert_eq!(c.len(), 7);
        let c = checks(vec![version("27")], false, true).await;
        let failed = names(&c, false);
        assert!(failed.iter().any(|n| n.contains("1.29")), "{failed:?}");
        assert!(
            failed
                .iter()
                .any(|n| n.contains("can create customresourcedefinitions"))
        );
        assert!(c.iter().any(|c| {
            c.hint
                .as_deref()
                .is_some_and(|h| h.contains("--classic-sidecar"))
        }));
    }

    #[tokio::test]
    async fn post_install_finds_what_is_missing_or_broken() {
        let ca = mesh_identity::ca::generate(
            std::time::Duration::from_secs(86_400 * 400),
            std::time::Duration::from_secs(86_400 * 365),
        )
        .expect("ca");
        let b64 = |s: &str| {
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec())).expect("b64")
        };
        let meta = |name: &str| json!({"name": name, "namespace": "mesh"});
        let deployment = |name: &str, available: i32| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name),
                   "spec": {"selector": {}, "template": {}}, "status": {"availableReplicas": available}})
        };
        let healthy = vec![
            version("31"),
            (
                "/api/v1/namespaces/mesh",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}}),
            ),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/serviceprofiles.linkerd.io",
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "serviceprofiles.linkerd.io"}, "spec": {"group": "linkerd.io", "names": {"kind": "ServiceProfile", "plural": "serviceprofiles"}, "scope": "Namespaced", "versions": []}}),
            ),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trafficsplits.split.smi-spec.io",
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "trafficsplits.split.smi-spec.io"}, "spec": {"group": "split.smi-spec.io", "names": {"kind": "TrafficSplit", "plural": "trafficsplits"}, "scope": "Namespaced", "versions": []}}),
            ),
            (
                "/apis/apps/v1/namespaces/mesh/deployments/mesh-identity",
                deployment("mesh-identity", 1),
            ),
            (
                "/apis/apps/v1/namespaces/mesh/deployments/mesh-controller",
                deployment("mesh-controller", 2),
            ),
            (
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-proxy-injector",
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "mesh-proxy-injector"}, "webhooks": [{"name": "inject.mesh.io", "clientConfig": {"caBundle": b64("CA")}, "admissionReviewVersions": ["v1"], "sideEffects": "None"}]}),
            ),
            (
                "/api/v1/namespaces/mesh/configmaps/mesh-identity-trust-anchors",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("mesh-identity-trust-anchors"), "data": {"ca-bundle.crt": ca.trust_anchor_pem}}),
            ),
            (
                "/api/v1/namespaces/mesh/secrets/mesh-identity-issuer",
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("mesh-identity-issuer"), "data": {"tls.crt": b64(&ca.issuer_cert_pem), "tls.key": b64(&ca.issuer_key_pem)}}),
            ),
        ];
        let list = |items: Value| json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
        let route = |accepted: &str| {
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "canary", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "books"}]},
            "status": {"parents": [{"parentRef": {"group": "", "kind": "Service", "name": "books"},
                "controllerName": "mesh.io/mesh-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "ResolvedRefs", "status": accepted, "reason": "BackendNotFound", "message": "no Service shop/books-v9", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}})
        };
        let mut healthy = healthy;
        healthy.push((
            "/apis/gateway.networking.k8s.io/v1/httproutes",
            list(json!([route("True")])),
        ));
        healthy.push((
            "/apis/gateway.networking.k8s.io/v1/grpcroutes",
            list(json!([])),
        ));
        let c = checks(healthy.clone(), true, false).await;
        assert!(c.iter().all(|c| c.ok), "{c:#?}");
        assert!(
            names(&c, true).contains(&"HTTPRoute shop/canary on Service shop/books is accepted and its references resolve".to_string()),
            "{c:#?}"
        );

        // The controller has no available replica, and the webhook and CRDs are gone.
        let broken: Vec<_> = healthy
            .into_iter()
            .filter(|(p, _)| {
                !p.contains("mutatingwebhook")
                    && !p.contains("trafficsplits")
                    && !p.contains("grpcroutes")
            })
            .map(|(p, v)| {
                if p.ends_with("/httproutes") {
                    (p, list(json!([route("False")])))
                } else if p.ends_with("mesh-controller") {
                    (p, deployment("mesh-controller", 0))
                } else {
                    (p, v)
                }
            })
            .collect();
        let c = checks(broken, true, false).await;
        let failed = names(&c, false);
        assert_eq!(
            failed,
            [
                "CRD trafficsplits.split.smi-spec.io is installed",
                "mesh-controller is running",
                "the proxy injector webhook is registered with a CA bundle",
                "HTTPRoute shop/canary on Service shop/books is accepted and its references resolve",
                "CRD grpcroutes.gateway.networking.k8s.io is installed",
            ],
            "{c:#?}"
        );
        assert!(c.iter().filter(|c| !c.ok).all(|c| c.hint.is_some()));
    }

    #[tokio::test]
    async fn an_unreachable_api_is_one_clear_failure() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        let c = run(kube::Client::new(service, "default"), true).await;
        assert_eq!(c.len(), 1);
        assert!(
            !c[0].ok
                && c[0]
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.contains("KUBECONFIG"))
        );
    }
}
