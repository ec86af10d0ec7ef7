//! Injection: what `mesh inject` writes and what the proxy-injector webhook patches in,
//! from one piece of code. Works on YAML values so that everything else in an object —
//! fields this code does not know included — passes through unchanged.

use mesh_api::yaml::{Mapping, Value};

/// The annotation that asks for injection (`enabled` / `disabled`).
pub const INJECT: &str = "mesh.io/inject";
/// Linkerd's name for it, honoured as an alias.
pub const LINKERD_INJECT: &str = "linkerd.io/inject";
/// Set on pods the sidecar was written into; its value is the proxy version.
pub const PROXY_VERSION: &str = "mesh.io/proxy-version";
/// Per-workload overrides live under this prefix.
pub const CONFIG_PREFIX: &str = "config.mesh.io/";
/// The init container that programs iptables.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "mesh-identity-token";
/// Where the token is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";

/// How the sidecar is written.
#[derive(Clone, Debug)]
pub struct Config {
    /// The proxy image (without tag).
    pub image: String,
    /// The proxy version (the image tag).
    pub version: String,
    /// The mesh's namespace (where identity and destination run).
    pub mesh_namespace: String,
    /// The UID the proxy runs as (its traffic is not redirected).
    pub proxy_uid: u32,
    /// The trust anchors (PEM), written into the sidecar's environment. Without them
    /// the sidecar reads the `mesh-identity-trust-anchors` ConfigMap of its own
    /// namespace.
    pub trust_anchors_pem: Option<String>,
    /// Defaults for what `config.mesh.io/*` annotations override.
    pub defaults: ProxyDefaults,
}

/// The sidecar's defaults: log level and resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyDefaults {
    /// The proxy's log filter.
    pub log_level: String,
    /// CPU request.
    pub cpu_request: String,
    /// CPU limit, if any.
    pub cpu_limit: Option<String>,
    /// Memory request.
    pub memory_request: String,
    /// Memory limit.
    pub memory_limit: String,
    /// Where spans go (`host:port`), when the install gives a collector.
    pub trace_collector: Option<String>,
    /// How: `otlp` or `zipkin`.
    pub trace_protocol: String,
    /// The share of new traces recorded, 0 to 1.
    pub trace_sampling: String,
    /// The Zipkin collector Istio's `Telemetry` `zipkin` provider names.
    pub zipkin_collector: String,
}

/// Istio's own default for its `zipkin` tracing provider.
pub const ISTIO_ZIPKIN: &str = "zipkin.istio-system.svc.cluster.local:9411";

impl Default for ProxyDefaults {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            cpu_request: "100m".into(),
            cpu_limit: None,
            memory_request: "20Mi".into(),
            memory_limit: "250Mi".into(),
            trace_collector: None,
            trace_protocol: "otlp".into(),
            trace_sampling: "0.01".into(),
            zipkin_collector: ISTIO_ZIPKIN.into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image: "ghcr.io/mesh/proxy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            mesh_namespace: "mesh".into(),
            proxy_uid: 2102,
            trust_anchors_pem: None,
            defaults: ProxyDefaults::default(),
        }
    }
}

/// How to inject.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Set `mesh.io/inject: enabled` and let the webhook do the rest at admission.
    Annotate,
    /// Write the whole sidecar: the proxy as a native sidecar (an init container with
    /// `restartPolicy: Always`), or, with `classic`, among the containers.
    Manual {
        /// Put the proxy among the containers (clusters older than 1.29).
        classic: bool,
    },
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was written in (or the annotation set) now.
    Injected,
    /// A namespace was annotated.
    Annotated,
    /// It already had it: unchanged.
    AlreadyInjected,
    /// Not a kind that runs pods: passed through unchanged.
    Skipped,
    /// Uninjected.
    Uninjected,
}

/// Why an object cannot be meshed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The pod uses the node's network.
    #[error("it uses hostNetwork: the proxy would capture the node's traffic")]
    HostNetwork,
    /// The object is malformed where injection needs it.
    #[error("{0}")]
    Malformed(String),
    /// An override is invalid.
    #[error("annotation {name}: {reason}")]
    BadOverride {
        /// The annotation.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

fn key(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn get_map<'a>(m: &'a Mapping, k: &str) -> Option<&'a Mapping> {
    m.get(k).and_then(Value::as_object)
}

/// The mapping at `k`, created (empty) if missing.
fn map_mut<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Mapping, InjectError> {
    let v = m.entry(k).or_insert_with(|| Value::Object(Mapping::new()));
    if v.is_null() {
        *v = Value::Object(Mapping::new());
    }
    v.as_object_mut()
        .ok_or_else(|| InjectError::Malformed(format!("{k} is not a mapping")))
}

fn seq_mut<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Vec<Value>, InjectError> {
    let v = m.entry(k).or_insert_with(|| Value::Array(Vec::new()));
    if v.is_null() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut()
        .ok_or_else(|| InjectError::Malformed(format!("{k} is not a list")))
}

/// The pod template (metadata, spec) of an object of `kind`, if that kind runs pods.
fn pod_template<'a>(kind: &str, obj: &'a mut Mapping) -> Option<&'a mut Mapping> {
    match kind {
        "Pod" => Some(obj),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => obj
            .get_mut("spec")?
            .as_object_mut()?
            .get_mut("template")?
            .as_object_mut(),
        "CronJob" => obj
            .get_mut("spec")?
            .as_object_mut()?
            .get_mut("jobTemplate")?
            .as_object_mut()?
            .get_mut("spec")?
            .as_object_mut()?
            .get_mut("template")?
            .as_object_mut(),
        _ => None,
    }
}

/// The inject annotation's value in `annotations` (`mesh.io/inject`, else Linkerd's).
pub fn inject_annotation(annotations: Option<&Mapping>) -> Option<&str> {
    let a = annotations?;
    a.get(INJECT)
        .or_else(|| a.get(LINKERD_INJECT))
        .and_then(Value::as_str)
}

/// The object's kind and name, for messages: `deployment "web"`.
pub fn describe(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{} \"{name}\"", kind.to_lowercase())
}

fn kind_of(obj: &Value) -> String {
    obj.get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Injects one object (not a List) in place.
pub fn inject(obj: &mut Value, mode: Mode, config: &Config) -> Result<Outcome, InjectError> {
    let kind = kind_of(obj);
    let Some(map) = obj.as_object_mut() else {
        return Ok(Outcome::Skipped);
    };
    if kind == "Namespace" {
        let annotations = map_mut(map_mut(map, "metadata")?, "annotations")?;
        if inject_annotation(Some(annotations)) == Some("enabled") {
            return Ok(Outcome::AlreadyInjected);
        }
        annotations.insert(INJECT.to_owned(), key("enabled"));
        return Ok(Outcome::Annotated);
    }
    let Some(template) = pod_template(&kind, map) else {
        return Ok(Outcome::Skipped);
    };
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError::Malformed("the pod template has no spec".into()))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    match mode {
        Mode::Annotate => {
            let annotations = map_mut(map_mut(template, "metadata")?, "annotations")?;
            if inject_annotation(Some(annotations)) == Some("enabled")
                || annotations.contains_key(PROXY_VERSION)
            {
                return Ok(Outcome::AlreadyInjected);
            }
            annotations.insert(INJECT.to_owned(), key("enabled"));
            Ok(Outcome::Injected)
        }
        Mode::Manual { classic } => inject_pod(template, config, classic),
    }
}

/// Writes the sidecar into a pod (or pod template): `metadata` and `spec`.
pub fn inject_pod(
    pod: &mut Mapping,
    config: &Config,
    classic: bool,
) -> Result<Outcome, InjectError> {
    let annotations = get_map(pod, "metadata")
        .and_then(|m| get_map(m, "annotations"))
        .cloned()
        .unwrap_or_default();
    if annotations.contains_key(PROXY_VERSION) || has_proxy(pod) {
        return Ok(Outcome::AlreadyInjected);
    }
    let o = Overrides::from(&annotations)?;
    let workload = workload_of(pod);
    let spec = map_mut(pod, "spec")?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(InjectError::HostNetwork);
    }
    let init = init_container(config, &o)?;
    let proxy = proxy_container(config, &o, !classic, workload.as_deref())?;
    {
        let inits = seq_mut(spec, "initContainers")?;
        inits.insert(0, init);
        if !classic {
            inits.insert(1, proxy.clone());
        }
    }
    if classic {
        seq_mut(spec, "containers")?.insert(0, proxy);
    }
    seq_mut(spec, "volumes")?.push(token_volume()?);
    map_mut(map_mut(pod, "metadata")?, "annotations")?
        .insert(PROXY_VERSION.to_owned(), key(&config.version));
    Ok(Outcome::Injected)
}

fn has_proxy(pod: &Mapping) -> bool {
    let Some(spec) = get_map(pod, "spec") else {
        return false;
    };
    ["containers", "initContainers"].iter().any(|list| {
        spec.get(*list).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("name").and_then(Value::as_str) == Some(crate::convert::PROXY_CONTAINER)
            })
        })
    })
}

/// Removes what [`inject`] added, giving back the original object.
pub fn uninject(obj: &mut Value) -> Result<Outcome, InjectError> {
    let kind = kind_of(obj);
    let Some(map) = obj.as_object_mut() else {
        return Ok(Outcome::Skipped);
    };
    if kind == "Namespace" {
        let removed = remove_annotation(map, INJECT);
        return Ok(if removed {
            Outcome::Uninjected
        } else {
            Outcome::Skipped
        });
    }
    let Some(template) = pod_template(&kind, map) else {
        return Ok(Outcome::Skipped);
    };
    // A manually injected pod carries the proxy version; its own inject annotation (if
    // it had one) was there before and stays. Otherwise the annotation is what inject
    // added.
    let manual = remove_annotation(template, PROXY_VERSION);
    let mut changed = manual;
    if !manual {
        changed |= remove_annotation(template, INJECT);
    }
    if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) {
        for (list, names) in [
            (
                "initContainers",
                &[INIT_CONTAINER, crate::convert::PROXY_CONTAINER][..],
            ),
            ("containers", &[crate::convert::PROXY_CONTAINER][..]),
            ("volumes", &[TOKEN_VOLUME][..]),
        ] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|c| {
                    !names.contains(&c.get("name").and_then(Value::as_str).unwrap_or(""))
                });
                changed |= items.len() != before;
                if items.is_empty() && before > 0 {
                    spec.remove(list);
                }
            }
        }
    }
    Ok(if changed {
        Outcome::Uninjected
    } else {
        Outcome::Skipped
    })
}

/// Removes an annotation, and the annotations (and metadata) map if that empties it.
fn remove_annotation(obj: &mut Mapping, name: &str) -> bool {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) else {
        return false;
    };
    let removed = annotations.remove(name).is_some();
    if removed && annotations.is_empty() {
        meta.remove("annotations");
        if meta.is_empty() {
            obj.remove("metadata");
        }
    }
    removed
}

/// `config.mesh.io/*` overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Inbound ports not redirected to the proxy.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports not redirected to the proxy.
    pub skip_outbound_ports: Vec<u16>,
    /// Proxy CPU request, limit; memory request, limit.
    pub cpu_request: Option<String>,
    /// CPU limit.
    pub cpu_limit: Option<String>,
    /// Memory request.
    pub memory_request: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
    /// The proxy's log level.
    pub log_level: Option<String>,
    /// The proxy's access log format (`text` or `json`), when it keeps one.
    pub access_log: Option<String>,
    /// Where the proxy exports spans; `Some("")`: nowhere, whatever the install says.
    pub trace_collector: Option<String>,
    /// How (`otlp` or `zipkin`).
    pub trace_protocol: Option<String>,
    /// The share of new traces recorded.
    pub trace_sampling: Option<String>,
}

impl Overrides {
    /// Reads the overrides from annotations; an invalid one is an error naming it.
    pub fn from(annotations: &Mapping) -> Result<Self, InjectError> {
        let mut o = Self::default();
        for (k, v) in annotations {
            let Some(v) = v.as_str() else {
                continue;
            };
            let Some(name) = k.strip_prefix(CONFIG_PREFIX) else {
                continue;
            };
            let bad = |reason: &str| InjectError::BadOverride {
                name: k.to_owned(),
                reason: reason.to_owned(),
            };
            let ports = |v: &str| -> Result<Vec<u16>, InjectError> {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<u16>()
                            .map_err(|_| bad("expected comma-separated ports"))
                    })
                    .collect()
            };
            let quantity = |v: &str| -> Result<Option<String>, InjectError> {
                if valid_quantity(v) {
                    Ok(Some(v.to_owned()))
                } else {
                    Err(bad("expected a quantity such as 100m or 64Mi"))
                }
            };
            match name {
                "skip-inbound-ports" => o.skip_inbound_ports = ports(v)?,
                "skip-outbound-ports" => o.skip_outbound_ports = ports(v)?,
                "proxy-cpu-request" => o.cpu_request = quantity(v)?,
                "proxy-cpu-limit" => o.cpu_limit = quantity(v)?,
                "proxy-memory-request" => o.memory_request = quantity(v)?,
                "proxy-memory-limit" => o.memory_limit = quantity(v)?,
                "access-log" => o.access_log = Some(access_log(v).map_err(|e| bad(&e))?),
                "trace-collector" => {
                    o.trace_collector = Some(trace_collector(v).map_err(|e| bad(&e))?);
                }
                "trace-protocol" => {
                    o.trace_protocol = Some(trace_protocol(v).map_err(|e| bad(&e))?)
                }
                "trace-sampling" => {
                    o.trace_sampling = Some(trace_sampling(v).map_err(|e| bad(&e))?)
                }
                "proxy-log-level" => {
                    if !valid_log_level(v) {
                        return Err(bad("expected a log filter such as info or debug"));
                    }
                    o.log_level = Some(v.to_owned());
                }
                // Policy, not the sidecar's settings: the controller serves it to the
                // proxy (InboundPolicy); checked here so that a typo fails the inject.
                "inbound-tls" if matches!(v, "strict" | "permissive") => {}
                "inbound-tls" => return Err(bad("expected strict or permissive")),
                "inbound-strict-ports" | "inbound-permissive-ports" => {
                    ports(v)?;
                }
                _ => return Err(bad("unknown override")),
            }
        }
        if o.access_log.is_none()
            && let Some(v) = annotations.get(LINKERD_ACCESS_LOG).and_then(Value::as_str)
        {
            o.access_log = Some(access_log(v).map_err(|reason| InjectError::BadOverride {
                name: LINKERD_ACCESS_LOG.to_owned(),
                reason,
            })?);
        }
        // Linkerd's collector annotation: its collectors speak OTLP.
        if o.trace_collector.is_none()
            && let Some(v) = annotations
                .get(LINKERD_TRACE_COLLECTOR)
                .and_then(Value::as_str)
        {
            o.trace_collector =
                Some(
                    trace_collector(v).map_err(|reason| InjectError::BadOverride {
                        name: LINKERD_TRACE_COLLECTOR.to_owned(),
                        reason,
                    })?,
                );
        }
        Ok(o)
    }
}

/// Linkerd's annotation for where the proxy sends spans.
pub const LINKERD_TRACE_COLLECTOR: &str = "config.linkerd.io/trace-collector";

/// A trace collector annotation's value: `host:port` (or an `http://` URL), or
/// `disabled` for none.
pub fn trace_collector(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v == "disabled" || v == "none" {
        return Ok(String::new());
    }
    let rest = v.strip_prefix("http://").unwrap_or(v);
    let authority = rest.split('/').next().unwrap_or_default();
    let ok = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
    }) && rest
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'{' | b'}' | b','));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?}: expected host:port or http://host:port/path (or disabled)"
        ))
    }
}

/// A trace protocol annotation's value.
pub fn trace_protocol(v: &str) -> Result<String, String> {
    match v.trim() {
        "otlp" | "opentelemetry" => Ok("otlp".into()),
        "zipkin" => Ok("zipkin".into()),
        other => Err(format!("{other:?}: expected otlp or zipkin")),
    }
}

/// A sampling share: a number from 0 to 1.
pub fn trace_sampling(v: &str) -> Result<String, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s.to_string()),
        _ => Err(format!("{v:?}: expected a number from 0 to 1")),
    }
}

/// Linkerd's annotation for the proxy's access log (`apache` or `json`).
pub const LINKERD_ACCESS_LOG: &str = "config.linkerd.io/access-log";

/// An access-log annotation's value as the proxy takes it.
fn access_log(v: &str) -> Result<String, String> {
    match v {
        "text" | "apache" => Ok("text".into()),
        "json" => Ok("json".into()),
        other => Err(format!("{other:?}: expected text (apache) or json")),
    }
}

fn yaml(text: &str) -> Result<Value, InjectError> {
    mesh_api::yaml::from_str(text)
        .map_err(|e| InjectError::Malformed(format!("the sidecar does not render: {e}")))
}

/// A log filter: tracing's syntax, nothing that could break out of a YAML value.
fn valid_log_level(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | ',' | ':' | '.' | '-'))
}

/// A resource quantity such as `100m`, `1.5`, `64Mi`.
fn valid_quantity(v: &str) -> bool {
    v.chars().next().is_some_and(|c| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

impl ProxyDefaults {
    /// Checks the defaults (they come from flags or chart values).
    pub fn validate(&self) -> Result<(), String> {
        if !valid_log_level(&self.log_level) {
            return Err(format!("invalid proxy log level {:?}", self.log_level));
        }
        if let Some(c) = &self.trace_collector {
            trace_collector(c).map_err(|e| format!("invalid trace collector {e}"))?;
        }
        trace_collector(&self.zipkin_collector)
            .map_err(|e| format!("invalid Zipkin collector {e}"))?;
        trace_protocol(&self.trace_protocol).map_err(|e| format!("invalid trace protocol {e}"))?;
        trace_sampling(&self.trace_sampling).map_err(|e| format!("invalid trace sampling {e}"))?;
        for q in [&self.cpu_request, &self.memory_request, &self.memory_limit]
            .into_iter()
            .chain(self.cpu_limit.as_ref())
        {
            if !valid_quantity(q) {
                return Err(format!("invalid proxy resource quantity {q:?}"));
            }
        }
        Ok(())
    }
}

fn image(config: &Config) -> String {
    format!("{}:{}", config.image, config.version)
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn init_container(config: &Config, o: &Overrides) -> Result<Value, InjectError> {
    // The admin port is never redirected (kubelet probes reach the proxy directly), nor
    // the tap port (viz reaches it directly, over mTLS).
    let mut skip_in = vec![4190, 4191];
    skip_in.extend(&o.skip_inbound_ports);
    let mut v = yaml(&format!(
        r#"
name: {INIT_CONTAINER}
image: {image}
args: [init, --proxy-uid, "{uid}", --skip-inbound-ports, "{skip_in}"]
resources: {{requests: {{cpu: 10m, memory: 10Mi}}, limits: {{memory: 50Mi}}}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities: {{add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
  readOnlyRootFilesystem: true
  runAsNonRoot: false
  runAsUser: 0
"#,
        image = image(config),
        uid = config.proxy_uid,
        skip_in = join(&skip_in),
    ))?;
    if !o.skip_outbound_ports.is_empty()
        && let Some(args) = v.get_mut("args").and_then(Value::as_array_mut)
    {
        args.push(key("--skip-outbound-ports"));
        args.push(key(&join(&o.skip_outbound_ports)));
    }
    Ok(v)
}

/// The workload a pod belongs to, as viz names it: its controller (a Deployment's, for
/// a ReplicaSet's pod), else its `app.kubernetes.io/name` or `app` label.
fn workload_of(pod: &Mapping) -> Option<String> {
    let meta = get_map(pod, "metadata")?;
    let label = |k: &str| {
        get_map(meta, "labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let owner = meta
        .get("ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|r| {
            let name = r.get("name").and_then(Value::as_str)?;
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
            Some(match (kind, label("pod-template-hash")) {
                ("ReplicaSet", Some(hash)) => name
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(name)
                    .to_owned(),
                _ => name.to_owned(),
            })
        });
    owner
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| label("app"))
        .filter(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
}

fn proxy_container(
    config: &Config,
    o: &Overrides,
    native: bool,
    workload: Option<&str>,
) -> Result<Value, InjectError> {
    let ns = &config.mesh_namespace;
    let mut v = yaml(&format!(
        r#"
name: {name}
image: {image}
ports:
- {{name: mesh-proxy, containerPort: 4143}}
- {{name: mesh-admin, containerPort: 4191}}
- {{name: mesh-tap, containerPort: 4190}}
env:
- name: _pod_ns
  valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
- name: _pod_sa
  valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}
- {{name: MESH_PROXY_INBOUND_ADDR, value: "0.0.0.0:4143"}}
- {{name: MESH_PROXY_OUTBOUND_ADDR, value: "127.0.0.1:4140"}}
- {{name: MESH_PROXY_ADMIN_ADDR, value: "0.0.0.0:4191"}}
- {{name: MESH_PROXY_TAP_ADDR, value: "0.0.0.0:4190"}}
- {{name: MESH_PROXY_TAP_CLIENTS, value: "mesh-viz.{ns}.serviceaccount.identity.mesh.cluster.local"}}
- {{name: MESH_PROXY_NAMESPACE, value: $(_pod_ns)}}
- name: MESH_PROXY_POD_NAME
  valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
- {{name: MESH_PROXY_DESTINATION_ADDR, value: "mesh-destination.{ns}.svc.cluster.local:8086"}}
- {{name: MESH_PROXY_IDENTITY_ADDR, value: "mesh-identity.{ns}.svc.cluster.local:8080"}}
- {{name: MESH_PROXY_IDENTITY_NAME, value: "$(_pod_sa).$(_pod_ns).serviceaccount.identity.mesh.cluster.local"}}
- {{name: MESH_PROXY_IDENTITY_SVC_NAME, value: "mesh-identity.{ns}.serviceaccount.identity.mesh.cluster.local"}}
- name: MESH_PROXY_TRUST_ANCHORS
  valueFrom: {{configMapKeyRef: {{name: mesh-identity-trust-anchors, key: ca-bundle.crt}}}}
- {{name: MESH_PROXY_TOKEN_PATH, value: "{TOKEN_DIR}/mesh-identity-token"}}
- {{name: MESH_PROXY_LOG, value: "{log}"}}
readinessProbe: {{httpGet: {{path: /ready, port: 4191}}, initialDelaySeconds: 2, periodSeconds: 5}}
livenessProbe: {{httpGet: {{path: /live, port: 4191}}, initialDelaySeconds: 10, periodSeconds: 10}}
resources:
  requests: {{cpu: "{cpu_req}", memory: "{mem_req}"}}
  limits: {{memory: "{mem_lim}"}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities: {{drop: [ALL]}}
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: {uid}
volumeMounts:
- {{name: {TOKEN_VOLUME}, mountPath: {TOKEN_DIR}, readOnly: true}}
"#,
        name = crate::convert::PROXY_CONTAINER,
        image = image(config),
        log = o.log_level.as_deref().unwrap_or(&config.defaults.log_level),
        cpu_req = o
            .cpu_request
            .as_deref()
            .unwrap_or(&config.defaults.cpu_request),
        mem_req = o
            .memory_request
            .as_deref()
            .unwrap_or(&config.defaults.memory_request),
        mem_lim = o
            .memory_limit
            .as_deref()
            .unwrap_or(&config.defaults.memory_limit),
        uid = config.proxy_uid,
    ))?;
    if let Some(cpu) = o.cpu_limit.as_ref().or(config.defaults.cpu_limit.as_ref())
        && let Some(limits) = v
            .get_mut("resources")
            .and_then(|r| r.get_mut("limits"))
            .and_then(Value::as_object_mut)
    {
        limits.insert("cpu".to_owned(), key(cpu));
    }
    if let Some(format) = &o.access_log
        && let Some(env) = v.get_mut("env").and_then(Value::as_array_mut)
    {
        env.push(yaml(&format!(
            "{{name: MESH_PROXY_ACCESS_LOG, value: {format}}}"
        ))?);
    }
    let collector = o
        .trace_collector
        .as_ref()
        .or(config.defaults.trace_collector.as_ref())
        .filter(|c| !c.is_empty());
    if let Some(collector) = collector
        && let Some(env) = v.get_mut("env").and_then(Value::as_array_mut)
    {
        let protocol = o
            .trace_protocol
            .as_deref()
            .unwrap_or(&config.defaults.trace_protocol);
        let sampling = o
            .trace_sampling
            .as_deref()
            .unwrap_or(&config.defaults.trace_sampling);
        // Spans are reported under the workload's name, as viz shows it.
        let service = workload.map(|w| format!("{w}.$(_pod_ns)"));
        for (name, value) in [
            ("MESH_PROXY_TRACE_COLLECTOR", collector.as_str()),
            ("MESH_PROXY_TRACE_PROTOCOL", protocol),
            ("MESH_PROXY_TRACE_SAMPLING", sampling),
        ]
        .into_iter()
        .chain(
            service
                .as_deref()
                .map(|s| ("MESH_PROXY_TRACE_SERVICE_NAME", s)),
        ) {
            let mut e = Mapping::new();
            e.insert("name".to_owned(), key(name));
            e.insert("value".to_owned(), key(value));
            env.push(Value::Object(e));
        }
    }
    if let Some(pem) = &config.trust_anchors_pem
        && let Some(env) = v.get_mut("env").and_then(Value::as_array_mut)
        && let Some(entry) = env
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("MESH_PROXY_TRUST_ANCHORS"))
    {
        let mut literal = Mapping::new();
        literal.insert("name".to_owned(), key("MESH_PROXY_TRUST_ANCHORS"));
        literal.insert("value".to_owned(), key(pem));
        *entry = Value::Object(literal);
    }
    if native && let Some(m) = v.as_object_mut() {
        // A native sidecar: started before the app, stopped after it, and not counted
        // for Job completion. The startup probe holds the app back until the proxy is
        // ready (it has its certificate).
        m.insert("restartPolicy".to_owned(), key("Always"));
        m.insert(
            "startupProbe".to_owned(),
            yaml("{httpGet: {path: /ready, port: 4191}, periodSeconds: 1, failureThreshold: 120}")?,
        );
    }
    Ok(v)
}

fn token_volume() -> Result<Value, InjectError> {
    yaml(&format!(
        r#"
name: {TOKEN_VOLUME}
projected:
  sources:
  - serviceAccountToken: {{path: mesh-identity-token, audience: identity.mesh.io, expirationSeconds: 86400}}
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &str) -> Mapping {
        let v: Value = mesh_api::yaml::from_str(&format!(
            "metadata: {{annotations: {annotations}}}\nspec: {{containers: [{{name: app, image: x}}]}}\n"
        ))
        .expect("yaml");
        v.as_object().cloned().expect("mapping")
    }

    fn proxy(pod: &Mapping) -> &Value {
        pod["spec"]["initContainers"]
            .as_array()
            .and_then(|s| s.iter().find(|c| c["name"] == "mesh-proxy"))
            .expect("proxy")
    }

    #[test]
    fn uninject_after_manual_inject_keeps_an_inject_annotation_that_was_there() {
        let text = "kind: Deployment\nmetadata: {name: w}\nspec:\n  template:\n    metadata:\n      annotations: {mesh.io/inject: enabled}\n    spec: {containers: [{name: a, image: x}]}\n";
        let original: Value = mesh_api::yaml::from_str(text).expect("yaml");
        let mut v = original.clone();
        let config = Config::default();
        assert_eq!(
            inject(&mut v, Mode::Manual { classic: false }, &config),
            Ok(Outcome::Injected)
        );
        assert_eq!(uninject(&mut v), Ok(Outcome::Uninjected));
        assert_eq!(v, original);
        // After the annotation mode, uninject takes the annotation away.
        let mut v: Value =
            mesh_api::yaml::from_str(&text.replace("{mesh.io/inject: enabled}", "{a: b}"))
                .expect("yaml");
        assert_eq!(
            inject(&mut v, Mode::Annotate, &config),
            Ok(Outcome::Injected)
        );
        assert_eq!(uninject(&mut v), Ok(Outcome::Uninjected));
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"]
                .as_object()
                .map(Mapping::len),
            Some(1)
        );
    }

    #[test]
    fn defaults_apply_and_annotations_override_them() {
        let config = Config {
            defaults: ProxyDefaults {
                log_level: "warn".into(),
                cpu_limit: Some("2".into()),
                memory_limit: "100Mi".into(),
                ..ProxyDefaults::default()
            },
            trust_anchors_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            ..Config::default()
        };
        let mut p = pod("{}");
        inject_pod(&mut p, &config, false).expect("inject");
        let c = proxy(&p);
        assert_eq!(c["resources"]["limits"]["memory"], "100Mi");
        assert_eq!(c["resources"]["limits"]["cpu"], "2");
        let env = |c: &Value, name: &str| {
            c["env"]
                .as_array()
                .and_then(|e| e.iter().find(|v| v["name"] == name))
                .cloned()
                .expect("env")
        };
        assert_eq!(env(c, "MESH_PROXY_LOG")["value"], "warn");
        assert_eq!(
            env(c, "MESH_PROXY_TRUST_ANCHORS")["value"],
            "-----BEGIN CERTIFICATE-----\n"
        );
        let mut p =
            pod("{config.mesh.io/proxy-log-level: debug, config.mesh.io/proxy-memory-limit: 64Mi}");
        inject_pod(&mut p, &config, false).expect("inject");
        let c = proxy(&p);
        assert_eq!(env(c, "MESH_PROXY_LOG")["value"], "debug");
        assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
    }
}
