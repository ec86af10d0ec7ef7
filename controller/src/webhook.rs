//! The proxy-injector: a mutating admission webhook (HTTPS) that answers Kubernetes'
//! `AdmissionReview` v1 for pods with a JSONPatch adding the sidecar, using the same
//! injection code as `mesh inject`. It never refuses a pod: anything it cannot or should
//! not mesh is admitted unchanged, with a warning when that is a surprise.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::Index;
use crate::inject::{self, Config, Outcome};

/// The largest AdmissionReview read (Kubernetes objects are at most ~1.5 MiB).
const MAX_REVIEW: usize = 3 << 20;

/// How long a client may take for each of the TLS handshake, a request's headers and
/// its body: the API server sends a review at once, a dribbling client is cut off.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection is served before it is closed gracefully (the request in
/// flight finishes; the API server reconnects for the next): an idle or dribbling
/// HTTP/2 client cannot hold a connection for ever.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// Namespaces never injected, whatever they say: the mesh's own and the system's.
pub fn excluded(namespace: &str, mesh_namespace: &str) -> bool {
    namespace == mesh_namespace || namespace == "kube-system" || namespace == "kube-public"
}

/// What the webhook needs: the index (for namespaces' annotations) and how to inject.
#[derive(Clone)]
pub struct Webhook {
    /// Namespaces and their inject annotations.
    pub index: Arc<Index>,
    /// How the sidecar is written.
    pub config: Config,
    /// Put the proxy among the containers (clusters older than 1.29).
    pub classic: bool,
    /// The API server, for a namespace the index has not seen yet (created in the same
    /// apply as its pods).
    pub client: Option<kube::Client>,
}

impl Webhook {
    /// Answers one AdmissionReview (a JSON body): the response review, or an error for
    /// a malformed one.
    pub async fn review(&self, body: &[u8]) -> Result<Value, String> {
        let review: Value =
            serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
        let request = review
            .get("request")
            .ok_or("malformed AdmissionReview: no request")?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .ok_or("malformed AdmissionReview: request.uid missing")?;
        let (patch, warning) = self.decide(request).await;
        let mut response = json!({"uid": uid, "allowed": true});
        if let Some(patch) = patch {
            let bytes = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
            response["patchType"] = json!("JSONPatch");
            response["patch"] =
                serde_json::to_value(k8s_openapi::ByteString(bytes)).map_err(|e| e.to_string())?;
        }
        if let Some(w) = warning {
            response["warnings"] = json!([w]);
        }
        Ok(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }))
    }

    /// The patch for a request, if the pod is to be meshed, and a warning if it asked
    /// to be and cannot.
    async fn decide(&self, request: &Value) -> (Option<Value>, Option<String>) {
        if request.pointer("/kind/kind").and_then(Value::as_str) != Some("Pod") {
            return (None, None);
        }
        let Some(pod) = request.get("object") else {
            return (None, None);
        };
        let namespace = request
            .get("namespace")
            .and_then(Value::as_str)
            .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
            .unwrap_or("default");
        if excluded(namespace, &self.config.mesh_namespace) {
            return (None, None);
        }
        let annotations: Option<mesh_api::yaml::Mapping> = pod
            .pointer("/metadata/annotations")
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(|v| v.as_object().cloned());
        let wanted = match inject::inject_annotation(annotations.as_ref()) {
            Some("enabled") => true,
            Some(_) => false,
            None => self.namespace_injects(namespace).await,
        };
        if !wanted {
            return (None, None);
        }
        let Ok(serde_json::Value::Object(mut yaml)) = serde_json::to_value(pod) else {
            return (
                None,
                Some("mesh: the pod could not be read; not injected".into()),
            );
        };
        // Istio's Telemetry turns the access log and tracing on where the pod's own
        // annotations say nothing: as the annotations that would.
        let said = |names: [&str; 2]| {
            annotations
                .as_ref()
                .is_some_and(|a| names.iter().any(|n| a.contains_key(*n)))
        };
        let labels: std::collections::BTreeMap<String, String> = pod
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let mut from_telemetry: Vec<(&str, String)> = Vec::new();
        let mut warning = None;
        if !said(["config.mesh.io/access-log", inject::LINKERD_ACCESS_LOG])
            && self.index.telemetry_access_log(namespace, &labels) == Some(true)
        {
            from_telemetry.push(("access-log", "text".into()));
        }
        if !said([
            "config.mesh.io/trace-collector",
            inject::LINKERD_TRACE_COLLECTOR,
        ]) && let Some(t) = self.index.telemetry_tracing(namespace, &labels)
        {
            let defaults = &self.config.defaults;
            let zipkin = t.provider.as_deref().is_some_and(|p| p.contains("zipkin"));
            if t.disabled {
                from_telemetry.push(("trace-collector", "disabled".into()));
            } else if zipkin {
                from_telemetry.push(("trace-collector", defaults.zipkin_collector.clone()));
                from_telemetry.push(("trace-protocol", "zipkin".into()));
            } else if let Some(c) = &defaults.trace_collector {
                from_telemetry.push(("trace-collector", c.clone()));
                from_telemetry.push(("trace-protocol", defaults.trace_protocol.clone()));
            } else {
                warning = Some(format!(
                    "mesh: a Telemetry selects tracing provider {:?}, but the mesh was installed without a trace collector (proxy.tracing.collector): no spans are exported",
                    t.provider.as_deref().unwrap_or_default()
                ));
            }
            if let Some(s) = t.sampling.filter(|_| !t.disabled) {
                from_telemetry.push(("trace-sampling", s.to_string()));
            }
        }
        if !from_telemetry.is_empty()
            && let Some(meta) = yaml
                .entry("metadata")
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
            && let Some(a) = meta
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
        {
            for (name, value) in from_telemetry {
                a.insert(
                    format!("{}{name}", inject::CONFIG_PREFIX),
                    serde_json::Value::from(value),
                );
            }
        }
        match inject::inject_pod(&mut yaml, &self.config, self.classic) {
            Ok(Outcome::Injected) => {}
            Ok(_) => return (None, None),
            Err(e) => return (None, Some(format!("mesh: not injected: {e}"))),
        }
        let Ok(after) = serde_json::to_value(&yaml) else {
            return (None, None);
        };
        // `add` replaces a member that exists, so each changed part is one operation.
        let mut ops = Vec::new();
        for path in [
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/containers",
            "/spec/volumes",
        ] {
            let new = after.pointer(path);
            if new.is_some() && new != pod.pointer(path) {
                if path == "/metadata/annotations" && pod.get("metadata").is_none() {
                    ops.push(json!({"op": "add", "path": "/metadata", "value": {}}));
                }
                ops.push(json!({"op": "add", "path": path, "value": new}));
            }
        }
        (Some(Value::Array(ops)), warning)
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("config", &self.config)
            .field("classic", &self.classic)
            .field("client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Whether `namespace` asks for injection: from the index, else (a namespace created
    /// moments ago) from the API server.
    async fn namespace_injects(&self, namespace: &str) -> bool {
        if let Some(inject) = self.index.namespace_inject(namespace) {
            return inject.unwrap_or(false);
        }
        let Some(client) = &self.client else {
            return false;
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        match api.get_opt(namespace).await {
            Ok(Some(ns)) => {
                crate::convert::inject(ns.metadata.annotations.as_ref()).unwrap_or(false)
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, namespace, "cannot read the namespace; not injecting");
                false
            }
        }
    }
}

fn reply(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}

async fn handle(
    webhook: Arc<Webhook>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/inject" {
        return reply(
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"POST an AdmissionReview to /inject\n"),
            "text/plain",
        );
    }
    let read = Limited::new(req.into_body(), MAX_REVIEW).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                Bytes::from(format!(
                    "the review's body did not arrive within {}s\n",
                    READ_TIMEOUT.as_secs()
                )),
                "text/plain",
            );
        }
        Ok(Err(e)) => {
            return reply(
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("cannot read the review: {e}\n")),
                "text/plain",
            );
        }
    };
    match webhook.review(&body).await {
        Ok(v) => reply(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            "application/json",
        ),
        Err(e) => {
            tracing::info!(error = %e, "refused an AdmissionReview");
            reply(
                StatusCode::BAD_REQUEST,
                Bytes::from(format!("{e}\n")),
                "text/plain",
            )
        }
    }
}

/// Serves the webhook over TLS on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, webhook: Webhook) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let webhook = Arc::new(webhook);
    loop {
        let Ok((tcp, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (acceptor, webhook) = (acceptor.clone(), webhook.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => {
                    tracing::debug!(%client, "webhook TLS handshake failed");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(handle(webhook, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(32);
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                    conn.as_mut().graceful_shutdown();
                    // A request still dribbling is not waited for past its own timeout.
                    let _ = tokio::time::timeout(READ_TIMEOUT, conn).await;
                }
            }
        });
    }
}

/// TLS settings from a PEM certificate chain and key (the webhook's Secret).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("webhook certificate: {e}"))?;
    if certs.is_empty() {
        return Err("webhook certificate: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("webhook key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("webhook certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
