//! The proxy-injector webhook over real HTTPS with real AdmissionReview JSON: pods in an
//! enabled namespace get the sidecar as a JSONPatch; a pod's `disabled` wins; the
//! system's and the mesh's namespaces and hostNetwork pods are left alone; a malformed
//! review is a 400 (and, with failurePolicy Ignore, admits the pod).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_controller::Index;
use mesh_controller::index::{Kind, NamespaceInfo, Object, ObjectRef, TrafficSpec};
use serde_json::{Value, json};

struct Server {
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    index: Arc<Index>,
}

async fn start() -> Server {
    start_with(mesh_controller::inject::Config::default()).await
}

async fn start_with(config: mesh_controller::inject::Config) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["mesh-proxy-injector.mesh.svc".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let tls =
        mesh_controller::webhook::tls_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("tls");
    let index = Arc::new(Index::for_cluster());
    for (name, inject) in [
        ("shop", Some(true)),
        ("plain", None),
        ("kube-system", Some(true)),
        ("mesh", Some(true)),
    ] {
        let at = ObjectRef {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.into(),
        };
        index
            .apply(
                &at,
                Object::Namespace(NamespaceInfo {
                    inject,
                    ..Default::default()
                }),
            )
            .expect("namespace");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let webhook = mesh_controller::webhook::Webhook {
        index: index.clone(),
        config,
        classic: false,
        client: Some(api_server()),
    };
    tokio::spawn(mesh_controller::webhook::serve(listener, tls, webhook));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    Server { addr, roots, index }
}

/// A fake API server that knows one namespace the index has not seen yet, `fresh`,
/// annotated for injection.
fn api_server() -> kube::Client {
    use http::{Request, Response};
    use kube::client::Body;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (status, body) = if req.uri().path() == "/api/v1/namespaces/fresh" {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": "fresh", "annotations": {"mesh.io/inject": "enabled"}}}),
                )
            } else {
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                )
            };
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response"),
            );
        }
    });
    kube::Client::new(service, "default")
}

/// POSTs `body` to /inject over HTTPS, verifying the server's certificate.
async fn post(server: &Server, body: Vec<u8>) -> (u16, Vec<u8>) {
    let tls = tls(server).await;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("http");
    tokio::spawn(conn);
    let req = http::Request::post("/inject")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let rsp = tx.send_request(req).await.expect("response");
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body)
}

fn review(namespace: &str, annotations: Value, host_network: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "web-7d9f8c6b5-", "namespace": namespace, "labels": {"app": "web"}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": "web",
                    "hostNetwork": host_network,
                    "containers": [{"name": "web", "image": "ghcr.io/example/web:1"}]
                }
            }
        }
    }))
    .expect("json")
}

/// The response, and the decoded patch if any.
async fn admit(server: &Server, body: Vec<u8>) -> (Value, Option<Value>) {
    let (status, body) = post(server, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let rsp: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(rsp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(rsp["kind"], "AdmissionReview");
    assert_eq!(
        rsp["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(rsp["response"]["allowed"], true, "never blocks a pod");
    let patch = rsp["response"]["patch"].as_str().map(|b64| {
        let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).expect("base64");
        serde_json::from_slice(&bytes.0).expect("patch json")
    });
    (rsp, patch)
}

#[tokio::test]
async fn namespaces_and_pods_decide_and_the_patch_adds_the_sidecar() {
    let server = start().await;

    // Enabled namespace: the sidecar, as a JSONPatch.
    let (rsp, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(rsp["response"]["patchType"], "JSONPatch");
    let patch = patch.expect("a patch");
    let ops = patch.as_array().expect("ops");
    let init = ops
        .iter()
        .find(|o| o["path"] == "/spec/initContainers")
        .expect("init containers op");
    assert_eq!(init["op"], "add");
    let names: Vec<&str> = init["value"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["mesh-init", "mesh-proxy"]);
    assert_eq!(
        init["value"][1]["restartPolicy"], "Always",
        "a native sidecar"
    );
    assert!(ops.iter().any(|o| o["path"] == "/spec/volumes"));
    let annotations = ops
        .iter()
        .find(|o| o["path"] == "/metadata/annotations")
        .expect("annotations op");
    assert!(annotations["value"]["mesh.io/proxy-version"].is_string());
    // Applied the way the API server applies it, the patch gives a valid Pod.
    let review_json: Value =
        serde_json::from_slice(&review("shop", json!({}), false)).expect("json");
    let mut pod = review_json["request"]["object"].clone();
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("a JSON Patch");
    json_patch::patch(&mut pod, &ops).expect("the patch applies");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).expect("a Pod");
    let spec = pod.spec.expect("spec");
    let inits = spec.init_containers.expect("init containers");
    assert_eq!(inits.len(), 2);
    assert!(
        inits[1].startup_probe.is_some(),
        "the app waits for the proxy"
    );
    assert_eq!(spec.containers.len(), 1, "the app's containers untouched");
    assert_eq!(
        spec.volumes.expect("volumes")[0].name,
        "mesh-identity-token"
    );

    // The pod's own `disabled` wins over its namespace.
    let (_, patch) = admit(
        &server,
        review("shop", json!({"mesh.io/inject": "disabled"}), false),
    )
    .await;
    assert!(patch.is_none());
    // A pod's own `enabled` (Linkerd's name) in a namespace that says nothing.
    let (_, patch) = admit(
        &server,
        review("plain", json!({"linkerd.io/inject": "enabled"}), false),
    )
    .await;
    assert!(patch.is_some());
    // A namespace created in the same apply as its pods, not in the index yet: asked
    // of the API server.
    let (_, patch) = admit(&server, review("fresh", json!({}), false)).await;
    assert!(patch.is_some(), "a new annotated namespace was missed");
    let (_, patch) = admit(&server, review("unknown", json!({}), false)).await;
    assert!(patch.is_none());
    // Nothing said anywhere: left alone.
    let (_, patch) = admit(&server, review("plain", json!({}), false)).await;
    assert!(patch.is_none());
    // Never the system's or the mesh's own namespace.
    for ns in ["kube-system", "mesh"] {
        let (_, patch) = admit(&server, review(ns, json!({}), false)).await;
        assert!(patch.is_none(), "{ns} was injected");
    }
    // hostNetwork: admitted unchanged, with a warning that says why.
    let (rsp, patch) = admit(&server, review("shop", json!({}), true)).await;
    assert!(patch.is_none());
    let warning = rsp["response"]["warnings"][0].as_str().expect("warning");
    assert!(warning.contains("hostNetwork"), "{warning}");
    // config.mesh.io overrides reach the sidecar; a bad one is a warning, not a refusal.
    let (_, patch) = admit(
        &server,
        review(
            "shop",
            json!({"config.mesh.io/proxy-log-level": "debug"}),
            false,
        ),
    )
    .await;
    assert!(
        patch
            .expect("patch")
            .to_string()
            .contains(r#""value":"debug""#)
    );
    let (rsp, patch) = admit(
        &server,
        review(
            "shop",
            json!({"config.mesh.io/skip-inbound-ports": "x"}),
            false,
        ),
    )
    .await;
    assert!(patch.is_none());
    assert!(
        rsp["response"]["warnings"][0]
            .as_str()
            .expect("warning")
            .contains("skip-inbound-ports")
    );
}

/// The sidecar's `MESH_PROXY_ACCESS_LOG`, if the patch sets it.
fn access_log(patch: &Value) -> Option<String> {
    sidecar_env(patch, "MESH_PROXY_ACCESS_LOG")
}

/// The sidecar's environment variable `name`, if the patch sets it.
fn sidecar_env(patch: &Value, name: &str) -> Option<String> {
    let ops = patch.as_array()?;
    let init = ops.iter().find(|o| o["path"] == "/spec/initContainers")?;
    init["value"]
        .as_array()?
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// The sidecar's tracing: collector, protocol, sampling.
fn tracing(patch: &Value) -> (Option<String>, Option<String>, Option<String>) {
    (
        sidecar_env(patch, "MESH_PROXY_TRACE_COLLECTOR"),
        sidecar_env(patch, "MESH_PROXY_TRACE_PROTOCOL"),
        sidecar_env(patch, "MESH_PROXY_TRACE_SAMPLING"),
    )
}

fn apply_telemetry(server: &Server, ns: &str, name: &str, spec: Value) {
    let spec: mesh_api::istio_networking::TelemetrySpec =
        serde_json::from_value(spec).expect("telemetry");
    server
        .index
        .apply(
            &ObjectRef {
                kind: Kind::Telemetry,
                namespace: ns.into(),
                name: name.into(),
            },
            Object::Traffic(TrafficSpec::Telemetry(Box::new(spec)), None),
        )
        .expect("applied");
}

/// The tracing a pod with `annotations` in `shop` gets.
async fn traced(
    server: &Server,
    annotations: Value,
) -> (Option<String>, Option<String>, Option<String>) {
    let (_, patch) = admit(server, review("shop", annotations, false)).await;
    tracing(&patch.expect("patch"))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test]
async fn the_install_annotations_and_telemetry_decide_tracing() {
    // An install without a collector: no tracing, unless a pod names one.
    let server = start().await;
    assert_eq!(traced(&server, json!({})).await, (None, None, None));
    assert_eq!(traced(&server, json!({"config.mesh.io/trace-collector": "jaeger.tracing:4317", "config.mesh.io/trace-sampling": "0.5"})).await, (some("jaeger.tracing:4317"), some("otlp"), some("0.5")));
    // Linkerd's annotation.
    assert_eq!(
        traced(
            &server,
            json!({"config.linkerd.io/trace-collector": "collector.linkerd-jaeger:55678"})
        )
        .await
        .0,
        some("collector.linkerd-jaeger:55678")
    );
    // A Telemetry naming an OTLP provider, with no collector installed: a warning.
    apply_telemetry(
        &server,
        "shop",
        "otel",
        json!({"tracing": [{"providers": [{"name": "otel"}]}]}),
    );
    let (rsp, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(tracing(&patch.expect("patch")).0, None);
    assert!(
        rsp["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("trace collector")),
        "{rsp}"
    );
    // Bad values are refused, naming the annotation.
    for (k, v) in [
        ("config.mesh.io/trace-collector", "no port"),
        ("config.mesh.io/trace-collector", "x:99999"),
        ("config.mesh.io/trace-protocol", "jaeger"),
        ("config.mesh.io/trace-sampling", "2"),
    ] {
        let (rsp, patch) = admit(&server, review("shop", json!({ k: v }), false)).await;
        assert!(patch.is_none(), "{k}: {v}");
        assert!(
            rsp["response"]["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains(k)),
            "{rsp}"
        );
    }

    // An install with mesh-viz's collector: every pod traces at its rate.
    let config = mesh_controller::inject::Config {
        defaults: mesh_controller::inject::ProxyDefaults {
            trace_collector: some("mesh-viz.mesh.svc.cluster.local:4317"),
            trace_sampling: "0.1".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = start_with(config).await;
    // Spans under the workload's name (the review's pod has label app: web).
    let (_, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(
        sidecar_env(&patch.expect("patch"), "MESH_PROXY_TRACE_SERVICE_NAME").as_deref(),
        Some("web.$(_pod_ns)")
    );
    assert_eq!(
        traced(&server, json!({})).await,
        (
            some("mesh-viz.mesh.svc.cluster.local:4317"),
            some("otlp"),
            some("0.1")
        )
    );
    // The examples' mesh-default selects zipkin: Zipkin to Istio's collector.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/examples/istio/telemetry.yaml"
    ))
    .expect("example");
    let doc: Value = mesh_api::yaml::from_str(&example).expect("yaml");
    apply_telemetry(&server, "istio-system", "mesh-default", doc["spec"].clone());
    assert_eq!(
        traced(&server, json!({})).await,
        (
            some("zipkin.istio-system.svc.cluster.local:9411"),
            some("zipkin"),
            some("0.1")
        )
    );
    // A namespace's Telemetry wins over the mesh's: its sampling; then one selecting
    // the pod that turns span reporting off.
    apply_telemetry(
        &server,
        "shop",
        "sampled",
        json!({"tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 25.0}]}),
    );
    assert_eq!(
        traced(&server, json!({})).await,
        (
            some("mesh-viz.mesh.svc.cluster.local:4317"),
            some("otlp"),
            some("0.25")
        )
    );
    apply_telemetry(
        &server,
        "shop",
        "web-quiet",
        json!({"selector": {"matchLabels": {"app": "web"}}, "tracing": [{"disableSpanReporting": true}]}),
    );
    assert_eq!(traced(&server, json!({})).await, (None, None, None));
    // The pod's own annotation wins over every Telemetry.
    assert_eq!(traced(&server, json!({"config.mesh.io/trace-collector": "zipkin.tracing:9411", "config.mesh.io/trace-protocol": "zipkin"})).await, (some("zipkin.tracing:9411"), some("zipkin"), some("0.1")));
}

#[tokio::test]
async fn telemetry_and_annotations_turn_the_access_log_on() {
    let server = start().await;
    let (_, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(access_log(&patch.expect("patch")), None, "off by default");
    // The examples' mesh-default (istio-system, no selector): the whole mesh.
    let telemetry = |ns: &str, name: &str, spec: Value| {
        let spec: mesh_api::istio_networking::TelemetrySpec =
            serde_json::from_value(spec).expect("telemetry");
        server
            .index
            .apply(
                &ObjectRef {
                    kind: Kind::Telemetry,
                    namespace: ns.into(),
                    name: name.into(),
                },
                Object::Traffic(TrafficSpec::Telemetry(Box::new(spec)), None),
            )
            .expect("applied");
    };
    telemetry(
        "istio-system",
        "mesh-default",
        json!({"accessLogging": [{"providers": [{"name": "envoy"}]}]}),
    );
    let (_, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(access_log(&patch.expect("patch")).as_deref(), Some("text"));
    // A pod's own annotation wins (Linkerd's, json).
    let (_, patch) = admit(
        &server,
        review(
            "shop",
            json!({"config.linkerd.io/access-log": "json"}),
            false,
        ),
    )
    .await;
    assert_eq!(access_log(&patch.expect("patch")).as_deref(), Some("json"));
    // A namespace's Telemetry that disables it wins over the mesh's; one selecting
    // the pod wins over both.
    telemetry(
        "shop",
        "quiet",
        json!({"accessLogging": [{"providers": [{"name": "envoy"}], "disabled": true}]}),
    );
    let (_, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(access_log(&patch.expect("patch")), None);
    telemetry(
        "shop",
        "web-logs",
        json!({"selector": {"matchLabels": {"app": "web"}}, "accessLogging": [{"providers": [{"name": "envoy"}]}]}),
    );
    let (_, patch) = admit(&server, review("shop", json!({}), false)).await;
    assert_eq!(access_log(&patch.expect("patch")).as_deref(), Some("text"));
    // A bad annotation is a warning, not a refusal.
    let (rsp, patch) = admit(
        &server,
        review("shop", json!({"config.mesh.io/access-log": "xml"}), false),
    )
    .await;
    assert!(patch.is_none());
    assert!(
        rsp["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("access-log")),
        "{rsp}"
    );
}

#[tokio::test]
async fn malformed_reviews_are_400() {
    let server = start().await;
    for body in [&b"{"[..], b"{}", br#"{"request": {}}"#, b"\xff\xfe"] {
        let (status, text) = post(&server, body.to_vec()).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
        assert!(String::from_utf8_lossy(&text).contains("AdmissionReview"));
    }
}

/// A TLS connection to the webhook, for writing raw HTTP.
async fn tls(server: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(server.roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name =
        rustls::pki_types::ServerName::try_from("mesh-proxy-injector.mesh.svc").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// Clients that dribble their headers, or never send the body they announced, are cut
/// off: they cannot hold the webhook's connections.
#[tokio::test]
async fn dribbling_clients_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start().await;
    // Headers, one byte a second, never finished.
    let dribble = {
        let mut io = tls(&server).await;
        tokio::spawn(async move {
            for b in b"POST /inject HTTP/1.1\r\nhost: x\r\nx-slow: "
                .iter()
                .cycle()
            {
                if io.write_all(&[*b]).await.is_err() || io.flush().await.is_err() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            false
        })
    };
    // A body announced and never sent.
    let mut stalled = tls(&server).await;
    stalled
        .write_all(b"POST /inject HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stalled.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the stalled body was never answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let cut = tokio::time::timeout(std::time::Duration::from_secs(30), dribble)
        .await
        .expect("the dribbling client was cut off")
        .expect("join");
    assert!(cut);
    // The webhook still serves.
    let (status, _) = post(&server, review("shop", json!({}), false)).await;
    assert_eq!(status, 200);
}
