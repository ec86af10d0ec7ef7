//! `mesh install` and `charts/mesh`: every manifest parses as the Kubernetes type it
//! claims (k8s-openapi) and validates against Kubernetes' schemas (kubernetes-validate,
//! offline); the chart renders and lints with Helm's own engine (helm-python-sdk) and
//! produces the same kinds and names as `mesh install`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mesh_api::yaml::Value;

/// `mesh ARGS` with no cluster configured (no KUBECONFIG, no ~/.kube/config, not in a
/// pod).
fn mesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent/home")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run mesh")
}

/// `mesh ARGS` with `KUBECONFIG=kubeconfig`.
fn mesh_with(args: &[&str], kubeconfig: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", "/nonexistent/home")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run mesh")
}

fn docs(text: &str) -> Vec<Value> {
    mesh_api::yaml::documents(text)
        .map(|d| d.expect("yaml"))
        .collect()
}

/// Parses a manifest as the k8s-openapi type its kind names.
fn typed(doc: &Value) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let kind = doc["kind"].as_str().expect("kind").to_owned();
    let json = serde_json::to_value(doc).expect("json");
    let ok = match kind.as_str() {
        "CustomResourceDefinition" => {
            serde_json::from_value::<CustomResourceDefinition>(json).map(drop)
        }
        "Namespace" => serde_json::from_value::<Namespace>(json).map(drop),
        "ServiceAccount" => serde_json::from_value::<ServiceAccount>(json).map(drop),
        "Secret" => serde_json::from_value::<Secret>(json).map(drop),
        "ConfigMap" => serde_json::from_value::<ConfigMap>(json).map(drop),
        "ClusterRole" => serde_json::from_value::<ClusterRole>(json).map(drop),
        "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(json).map(drop),
        "Deployment" => serde_json::from_value::<Deployment>(json).map(drop),
        "Service" => serde_json::from_value::<Service>(json).map(drop),
        "MutatingWebhookConfiguration" => {
            serde_json::from_value::<MutatingWebhookConfiguration>(json).map(drop)
        }
        other => panic!("unexpected kind {other}"),
    };
    ok.unwrap_or_else(|e| panic!("{kind}: {e}"));
}

fn identities(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    docs.iter()
        .map(|d| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                s(&d["kind"]),
                s(&d["metadata"]["name"]),
                s(&d["metadata"]["namespace"]),
            )
        })
        .collect()
}

/// Validates a manifest file against Kubernetes' schemas, offline.
fn validate(path: &Path) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict"])
        .arg(path)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}:\n{text}", path.display());
    assert!(!text.contains("ERROR"), "{text}");
}

/// The documents of `text`, each parsed as the Kubernetes type it claims and all of
/// them validated against Kubernetes' schemas (written to `dir/name` for the tool).
fn checked(dir: &Path, name: &str, text: &str) -> Vec<Value> {
    let parsed = docs(text);
    for d in &parsed {
        typed(d);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    validate(&path);
    parsed
}

/// A CA made by `mesh identity ca` in `dir/ca`; its folder.
fn new_ca(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    let out = mesh(&["identity", "ca", "--out", ca.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ca
}

/// Renders and lints `chart` with Helm's engine and `values` (release `mesh` in
/// namespace `mesh`): its CRDs, then its templates.
fn render_chart(chart: &Path, values: &serde_json::Value) -> String {
    let script = r#"
import json, sys
import helm_python as helm
chart, values = sys.argv[1], json.loads(sys.argv[2])
lint = helm.lint(chart, values, namespace="mesh", strict=True)
if lint["errors"] or any(m["severity"] >= 2 for m in lint["messages"]):
    sys.exit(f"helm lint: {lint}")
c = helm.Chart.load(chart)
out = [crd["data"] for crd in c.crds]
out += [text for name, text in sorted(c.render(values, name="mesh", namespace="mesh").items())
        if name.endswith(".yaml") and text.strip()]
print("\n---\n".join(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(chart)
        .arg(values.to_string())
        .output()
        .expect("python3 with helm-python-sdk (pip install helm-python-sdk)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chart values for `charts/mesh` with the CA in `ca`.
fn mesh_values(ca: &Path) -> serde_json::Value {
    let read = |f: &str| std::fs::read_to_string(ca.join(f)).expect("CA file");
    serde_json::json!({
        "namespace": {"create": true},
        "identity": {
            "trustAnchorsPEM": read("ca.crt"),
            "issuer": {"crtPEM": read("tls.crt"), "keyPEM": read("tls.key")},
        },
    })
}

#[test]
fn install_and_the_chart_make_the_same_valid_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = mesh(&["install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let installed = checked(dir.path(), "install.yaml", &text);

    // The chart, with a CA made by `mesh identity ca`.
    let ca = new_ca(dir.path());
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh");
    let rendered_text = render_chart(&chart, &mesh_values(&ca));
    let rendered = checked(dir.path(), "chart.yaml", &rendered_text);
    assert_eq!(
        identities(&installed),
        identities(&rendered),
        "mesh install and the chart differ"
    );
}

#[test]
fn crds_only_and_given_issuers() {
    let out = mesh(&["install", "--crds"]);
    assert!(out.status.success());
    let crds = docs(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        crds.len(),
        18,
        "the mesh's two, the Gateway API's three, Istio's and Linkerd's thirteen"
    );
    assert!(crds.iter().all(|d| d["kind"] == "CustomResourceDefinition"));
    let names: Vec<_> = crds
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert!(
        names.contains(&"httproutes.gateway.networking.k8s.io"),
        "{names:?}"
    );
    // Where the cluster has the Gateway API's CRDs already, they are left out: when
    // asked, and when the cluster has ones that are not the mesh's.
    let out = mesh(&["install", "--crds", "--skip-gateway-api-crds"]);
    assert!(out.status.success());
    let crds = docs(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(crds.len(), 15);
    let out = mesh(&[
        "install",
        "--crds",
        "--skip-gateway-api-crds",
        "--skip-policy-crds",
    ]);
    assert!(out.status.success());
    assert_eq!(docs(&String::from_utf8_lossy(&out.stdout)).len(), 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let crd = |labels: &str| {
        format!(
            r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{{"name":"httproutes.gateway.networking.k8s.io"{labels}}},"spec":{{"group":"gateway.networking.k8s.io","names":{{"kind":"HTTPRoute","plural":"httproutes"}},"scope":"Namespaced","versions":[]}}}}"#
        )
    };
    let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/httproutes.gateway.networking.k8s.io";
    for (labels, want) in [("", 15), (r#","labels":{"mesh.io/crd":"gateway-api"}"#, 18)] {
        let kubeconfig = fake_api(dir.path(), vec![(path.to_string(), crd(labels))], None);
        let out = mesh_with(&["install", "--crds"], &kubeconfig);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let crds = docs(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            crds.len(),
            want,
            "labels {labels}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Linkerd's own Server CRD is left alone; the mesh's is rendered again.
    let server =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servers.policy.linkerd.io";
    let linkerds = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"servers.policy.linkerd.io"},"spec":{"group":"policy.linkerd.io","names":{"kind":"Server","plural":"servers"},"scope":"Namespaced","versions":[]}}"#;
    let kubeconfig = fake_api(
        dir.path(),
        vec![(server.to_string(), linkerds.to_string())],
        None,
    );
    let out = mesh_with(&["install", "--crds"], &kubeconfig);
    let crds = docs(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(crds.len(), 17, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !crds
            .iter()
            .any(|d| d["metadata"]["name"] == "servers.policy.linkerd.io")
    );

    // A given issuer is used as given (and checked first).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let file = |f: &str| ca.join(f).to_str().expect("p").to_owned();
    let args = |key: &str| {
        vec![
            "install".to_owned(),
            "--identity-trust-anchors-file".into(),
            file("ca.crt"),
            "--identity-issuer-certificate-file".into(),
            file("tls.crt"),
            "--identity-issuer-key-file".into(),
            file(key),
        ]
    };
    let args_key = args("tls.key");
    let out = mesh(&args_key.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let anchors = std::fs::read_to_string(ca.join("ca.crt")).expect("anchors");
    let cm = docs(&text)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("trust anchors ConfigMap");
    assert_eq!(
        cm["data"]["ca-bundle.crt"].as_str().map(str::trim),
        Some(anchors.trim())
    );
    // The anchor's key is not the issuer's: refused before anything is printed.
    let args_key = args("ca.key");
    let out = mesh(&args_key.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fake Kubernetes API over HTTP on loopback: GETs of `objects`' paths answer their
/// JSON, anything else 404 (or `fail` for every path); plus a kubeconfig naming it.
fn fake_api(dir: &Path, objects: Vec<(String, String)>, fail: Option<u16>) -> std::path::PathBuf {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let path = path.split('?').next().unwrap_or("/").to_owned();
            let (code, body) = match (fail, objects.iter().find(|(p, _)| *p == path)) {
                (Some(code), _) => (code, format!(r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","code":{code},"message":"broken"}}"#)),
                (None, Some((_, body))) => (200, body.clone()),
                (None, None) => (404, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_owned()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let kubeconfig = dir.join(format!("kubeconfig-{}", addr.port()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\n\
             current-context: c\n"
        ),
    )
    .expect("kubeconfig");
    kubeconfig
}

fn b64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .expect("b64")
        .as_str()
        .expect("string")
        .to_owned()
}

#[test]
fn install_keeps_the_ca_of_the_mesh_already_in_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path());
    let read = |f: &str| std::fs::read(ca.join(f)).expect("CA file");
    let issuer = format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"mesh-identity-issuer","namespace":"mesh"}},"data":{{"ca.crt":"{}","tls.crt":"{}","tls.key":"{}"}}}}"#,
        b64(&read("ca.crt")),
        b64(&read("tls.crt")),
        b64(&read("tls.key"))
    );
    let kubeconfig = fake_api(
        dir.path(),
        vec![(
            "/api/v1/namespaces/mesh/secrets/mesh-identity-issuer".into(),
            issuer,
        )],
        None,
    );
    let out = mesh_with(&["install"], &kubeconfig);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("keeping the trust anchors and issuer"),
        "{stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let secret = docs(&text)
        .into_iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "mesh-identity-issuer")
        .expect("issuer Secret");
    for (key, file) in [
        ("ca.crt", "ca.crt"),
        ("tls.crt", "tls.crt"),
        ("tls.key", "tls.key"),
    ] {
        assert_eq!(
            secret["data"][key].as_str(),
            Some(b64(&read(file)).as_str()),
            "{key}"
        );
    }

    // A cluster that cannot say: refused rather than a new CA over a running mesh…
    let broken = fake_api(dir.path(), Vec::new(), Some(500));
    let out = mesh_with(&["install"], &broken);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ignore-cluster"), "{stderr}");
    // …unless asked.
    let out = mesh_with(&["install", "--ignore-cluster"], &broken);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("generated a new trust anchor"));

    // A kubeconfig that is there but unusable (no such file, a missing current
    // context) is a mistake to report, not a new cluster.
    let no_context = dir.path().join("no-context");
    std::fs::write(
        &no_context,
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\ncurrent-context: gone\n",
    )
    .expect("write");
    for kubeconfig in [no_context.as_path(), Path::new("/nonexistent/kubeconfig")] {
        let out = mesh_with(&["install"], kubeconfig);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {stderr}",
            kubeconfig.display()
        );
        assert!(out.stdout.is_empty());
        assert!(stderr.contains("cannot load the kubeconfig"), "{stderr}");
    }
}

#[test]
fn the_viz_chart_renders_lints_and_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh-viz");
    for (values, dashboard) in [
        (serde_json::json!({}), false),
        (
            serde_json::json!({"grafanaDashboard": {"enabled": true}}),
            true,
        ),
    ] {
        let text = render_chart(&chart, &values);
        let rendered = checked(dir.path(), "viz.yaml", &text);
        let find = |kind: &str, name: &str| {
            rendered
                .iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .cloned()
        };
        // What `mesh viz --kube` reaches: Service mesh-viz, port 8084, in `mesh`.
        let svc = find("Service", "mesh-viz").expect("Service mesh-viz");
        assert_eq!(svc["metadata"]["namespace"], "mesh");
        assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(8084));
        assert_eq!(svc["spec"]["ports"][1]["port"].as_u64(), Some(4317), "OTLP");
        let deploy = find("Deployment", "mesh-viz").expect("Deployment");
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "ghcr.io/mesh/viz:0.1.0");
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("value"))
            })
            .collect();
        for (name, value) in [
            ("MESH_VIZ_SOURCE", "kubernetes"),
            ("MESH_VIZ_SCRAPE_INTERVAL", "2s"),
            ("MESH_VIZ_RETENTION", "10m"),
            ("MESH_VIZ_PROXY_ADMIN_PORT", "4191"),
            ("MESH_VIZ_LOG", "info"),
            ("MESH_VIZ_OTLP_ADDR", "0.0.0.0:4317"),
        ] {
            assert!(
                env.contains(&(name.into(), value.into())),
                "{name}: {env:?}"
            );
        }
        // It may read what the destination service reads, and nothing else.
        let rules = |doc: &Value| {
            let mut r: Vec<String> = doc["rules"]
                .as_array()
                .expect("rules")
                .iter()
                .filter(|r| {
                    r["verbs"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v == "watch"))
                })
                .map(|r| mesh_api::yaml::to_string(r).expect("yaml"))
                .collect();
            r.sort();
            r
        };
        let viz_role = find("ClusterRole", "mesh-viz").expect("ClusterRole");
        for rule in viz_role["rules"].as_array().expect("rules") {
            assert_eq!(
                rule["verbs"],
                mesh_api::yaml::from_str::<Value>("[get, list, watch]").expect("yaml"),
                "read-only"
            );
        }
        let out = mesh(&["install"]);
        let controller_role = docs(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "mesh-controller")
            .expect("controller role");
        assert_eq!(rules(&viz_role), rules(&controller_role));
        let cm = find("ConfigMap", "mesh-viz-grafana-dashboard");
        assert_eq!(cm.is_some(), dashboard);
        if let Some(cm) = cm {
            let json = cm["data"]["mesh.json"].as_str().expect("dashboard");
            let parsed: serde_json::Value = serde_json::from_str(json).expect("dashboard JSON");
            assert!(parsed["panels"].is_array());
        }
    }
    // `mesh viz install` renders the very same objects (namespace mesh, the defaults).
    let out = mesh(&["viz", "install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = checked(
        dir.path(),
        "viz-install.yaml",
        &String::from_utf8_lossy(&out.stdout),
    );
    let chart_docs = checked(
        dir.path(),
        "viz-chart.yaml",
        &render_chart(&chart, &serde_json::json!({})),
    );
    assert_eq!(
        ours, chart_docs,
        "mesh viz install and charts/mesh-viz differ"
    );
    // With the mesh's trust anchors, viz gets an identity to tap proxies over mTLS.
    let ca = new_ca(dir.path());
    let anchors = std::fs::read_to_string(ca.join("ca.crt")).expect("anchors");
    let text = render_chart(
        &chart,
        &serde_json::json!({"identity": {"trustAnchorsPEM": anchors}}),
    );
    let rendered = checked(dir.path(), "viz-identity.yaml", &text);
    let out = mesh(&[
        "viz",
        "install",
        "--identity-trust-anchors-file",
        ca.join("ca.crt").to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = checked(
        dir.path(),
        "viz-install-identity.yaml",
        &String::from_utf8_lossy(&out.stdout),
    );
    assert_eq!(
        ours, rendered,
        "with trust anchors, mesh viz install and the chart differ"
    );
    let deploy = rendered
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().expect("env");
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(
        value("MESH_VIZ_IDENTITY_NAME").as_deref(),
        Some("mesh-viz.mesh.serviceaccount.identity.mesh.cluster.local")
    );
    assert_eq!(
        value("MESH_VIZ_TRUST_ANCHORS").as_deref(),
        Some(anchors.as_str())
    );
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "identity.mesh.io"
    );
}
