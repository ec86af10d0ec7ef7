//! Local "pods" for end-to-end tests: the sample app on its own loopback address behind
//! its own proxy (admin on the pod's address, port 4191, as viz expects), and the Pod
//! YAML that tells the controller (and viz) about it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::identity::Identity;
use crate::proxy;

/// A fresh loopback address, unlikely to collide with another test process's.
pub fn pod_ip() -> IpAddr {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let block = (std::process::id() % 200) as u8 + 20;
    IpAddr::V4(Ipv4Addr::new(
        127,
        block,
        100 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// A local pod to start.
#[derive(Clone, Debug)]
pub struct PodSpec<'a> {
    /// Its address (see [`pod_ip`]).
    pub ip: IpAddr,
    /// Its service account (its identity with mTLS).
    pub service_account: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The identity service, for mTLS; `None` runs the proxy without.
    pub identity: Option<&'a Identity>,
    /// `permissive` or `strict`.
    pub mode: &'a str,
    /// Trust anchors other than the identity service's own.
    pub anchors: Option<&'a Path>,
    /// The destination service, for a pod that calls others (and asks for its own
    /// inbound policy, with `name`).
    pub destination: Option<SocketAddr>,
    /// The pod's name, for its inbound policy.
    pub name: Option<&'a str>,
    /// More `MESH_PROXY_*` settings for its proxy (names without the prefix).
    pub env: Vec<(&'a str, String)>,
}

impl<'a> PodSpec<'a> {
    /// A pod on `ip` running as `service_account` in `namespace`, permissive, no mTLS.
    pub fn new(ip: IpAddr, service_account: &'a str, namespace: &'a str) -> Self {
        Self {
            ip,
            service_account,
            namespace,
            identity: None,
            mode: "permissive",
            anchors: None,
            destination: None,
            name: None,
            env: Vec::new(),
        }
    }
}

/// A running pod; its processes die with it.
pub struct Pod {
    /// Its address: app on 8080, proxy inbound 4143, admin 4191.
    pub ip: IpAddr,
    /// Its proxy.
    pub proxy: proxy::Proxy,
    _app: tokio::process::Child,
}

impl Pod {
    /// Starts the sample app and the proxy and waits until both are ready.
    pub async fn start(spec: PodSpec<'_>) -> Self {
        let ip = spec.ip;
        let app = tokio::process::Command::new(crate::bin_path("mesh-sample-app"))
            .args(["--http", &SocketAddr::new(ip, 8080).to_string()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sample app");
        let proxy = start_proxy(&spec).await;
        crate::eventually("the app listening", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(SocketAddr::new(ip, 8080))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            ip,
            proxy,
            _app: app,
        }
    }

    /// Restarts the pod's proxy (same address, a new process).
    pub async fn restart_proxy(&mut self, spec: PodSpec<'_>) {
        self.proxy.kill().await;
        self.proxy = start_proxy(&spec).await;
    }
}

/// Starts a pod's proxy and waits until it is ready.
async fn start_proxy(spec: &PodSpec<'_>) -> proxy::Proxy {
    let ip = spec.ip;
    {
        let mut builder = proxy::new();
        if let Some(id) = spec.identity {
            builder = id.proxy(builder, spec.service_account, spec.namespace);
        }
        builder = builder
            .env("NAMESPACE", spec.namespace)
            .env("INBOUND_ADDR", SocketAddr::new(ip, 4143))
            .env("ADMIN_ADDR", SocketAddr::new(ip, 4191))
            .app(SocketAddr::new(ip, 8080))
            .env("INBOUND_TLS", spec.mode);
        if let Some(anchors) = spec.anchors {
            builder = builder.env("TRUST_ANCHORS", anchors.display());
        }
        if let Some(dst) = spec.destination {
            builder = builder.env("DESTINATION_ADDR", dst);
        }
        if let Some(name) = spec.name {
            builder = builder.env("POD_NAME", name);
        }
        for (name, value) in &spec.env {
            builder = builder.env(name, value);
        }
        let proxy = builder.run().await;
        proxy.wait_ready().await;
        proxy
    }
}

/// The YAML of a meshed Pod named `name` (label `app: APP`, so workload APP).
pub fn pod_yaml(
    name: &str,
    namespace: &str,
    app: &str,
    service_account: &str,
    ip: IpAddr,
) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}\n\
         spec: {{serviceAccountName: {service_account}, containers: [{{name: app, image: x}}]}}\n\
         status: {{podIP: \"{ip}\"}}\n"
    )
}

/// A meshed namespace and a Service `name` on port 80 to the pods labelled `app: NAME`.
pub fn service_yaml(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, annotations: {{mesh.io/inject: enabled}}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    )
}

/// Writes `yaml` as `name.yaml` in `dir` (see [`replace`]).
pub fn write(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    replace(&path, yaml);
    path
}

/// Replaces the file at `path` with `text` at once: written to a hidden file beside it
/// (which the controller's folder source skips), then renamed over it. An edit in
/// place (truncate, then write) can be read half-done by a watching controller, as
/// with any file-watching tool; mounted ConfigMaps change by rename too.
pub fn replace(path: &Path, text: &str) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename into place");
}
