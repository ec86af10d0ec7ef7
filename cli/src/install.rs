//! `mesh install`: everything a cluster needs, as YAML for `kubectl apply -f -` — the
//! CRDs, the `mesh` namespace, identity, the controller (destination service and
//! proxy-injector webhook), their Services, least-privilege RBAC, the webhook
//! configuration with its CA bundle, and the identity and webhook Secrets (generated
//! unless given). `charts/mesh` renders the same objects.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// The CRDs, generated from the resource types (see controller/tests/crds.rs).
pub const CRDS: [&str; 2] = [
    include_str!("../../charts/mesh/crds/serviceprofiles.linkerd.io.yaml"),
    include_str!("../../charts/mesh/crds/trafficsplits.split.smi-spec.io.yaml"),
];

/// The Gateway API's route CRDs (the versions the mesh serves), for clusters that have
/// none yet.
pub const GATEWAY_API_CRDS: [&str; 3] = [
    include_str!("../../charts/mesh/gateway-api/httproutes.gateway.networking.k8s.io.yaml"),
    include_str!("../../charts/mesh/gateway-api/grpcroutes.gateway.networking.k8s.io.yaml"),
    include_str!("../../charts/mesh/gateway-api/referencegrants.gateway.networking.k8s.io.yaml"),
];

/// What `mesh install` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only the CRDs.
    pub crds_only: bool,
    /// With the Gateway API's route CRDs (leave them out where the cluster has them).
    pub gateway_api_crds: bool,
    /// Istio's and Linkerd's policy CRDs to leave out (by name): the cluster has its
    /// own; `None`: all of them.
    pub skip_policy_crds: Option<std::collections::BTreeSet<String>>,
    /// The trust anchors (PEM); generated with the issuer when absent.
    pub trust_anchors: Option<PathBuf>,
    /// The issuer certificate (PEM).
    pub issuer_cert: Option<PathBuf>,
    /// The issuer key (PEM).
    pub issuer_key: Option<PathBuf>,
    /// The image registry prefix.
    pub registry: String,
    /// The image tag.
    pub version: String,
    /// Controller replicas.
    pub replicas: u32,
    /// The default inbound policy of pods and namespaces that set none
    /// (`all-unauthenticated`, …, `deny`, `audit`).
    pub default_inbound_policy: String,
    /// Where and how meshed proxies export spans.
    pub tracing: Tracing,
    /// What the mesh already in the cluster uses, kept when no files are given.
    pub installed: Option<Installed>,
}

/// The tracing every injected proxy gets (`--trace-*`; the chart's `proxy.tracing`).
#[derive(Debug, Clone)]
pub struct Tracing {
    /// The collector (`host:port`), if any.
    pub collector: Option<String>,
    /// `otlp` or `zipkin`.
    pub protocol: String,
    /// The share of new traces recorded.
    pub sampling: String,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            collector: None,
            protocol: "otlp".into(),
            sampling: "0.01".into(),
        }
    }
}

/// The trust anchors, issuer and webhook certificate of a mesh already installed: kept
/// by a new `mesh install`, since new ones would break the proxies already running.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The trust anchors (PEM): the ConfigMap's bundle, or the issuer Secret's `ca.crt`.
    pub anchors: String,
    /// The issuer certificate (PEM).
    pub issuer_cert: String,
    /// The issuer key (PEM).
    pub issuer_key: String,
    /// The webhook's CA bundle, certificate and key (PEM), when all three are there.
    pub webhook: Option<(String, String, String)>,
}

/// The cluster runs the mesh, but its identity does not check out: an error that a new
/// CA must not paper over (unlike an API that cannot be asked).
#[derive(Debug)]
pub struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the mesh installed in the cluster has an identity that does not check out: fix Secret mesh/mesh-identity-issuer, or pass the mesh's CA with the --identity-* files",
        )
    }
}

/// The certificates in a PEM bundle, one PEM block each, in order.
fn pem_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .map(str::trim)
        .filter(|b| b.ends_with(END))
        .map(str::to_owned)
        .collect()
}

/// `a`'s certificates, then those of `b` not already in `a`, as one bundle.
pub fn merge_bundles(a: &str, b: &str) -> String {
    let mut blocks = pem_blocks(a);
    for block in pem_blocks(b) {
        if !blocks.contains(&block) {
            blocks.push(block);
        }
    }
    blocks.join("\n") + "\n"
}

/// Whether every certificate of `installed` is in `given`.
pub fn bundle_includes(given: &str, installed: &str) -> bool {
    let given = pem_blocks(given);
    pem_blocks(installed).iter().all(|b| given.contains(b))
}

/// Reads what a mesh installed in the cluster uses: `None` if there is no issuer
/// Secret; an error if the API cannot say, or ([`Broken`]) what it holds does not
/// check out. The webhook certificate is best effort: unreadable, a new one is made.
/// Whether the cluster has the Gateway API's route CRDs from elsewhere (an ingress
/// controller's, the upstream release): `mesh install` then leaves them out rather
/// than replace them. The mesh's own (labelled) are updated as usual.
pub async fn foreign_gateway_api_crds(client: kube::Client) -> anyhow::Result<bool> {
    let names = [
        "httproutes.gateway.networking.k8s.io",
        "grpcroutes.gateway.networking.k8s.io",
        "referencegrants.gateway.networking.k8s.io",
    ];
    let foreign = foreign_crds(client, names, mesh_controller::crd::GATEWAY_API_LABEL).await?;
    Ok(!foreign.is_empty())
}

/// Which of the CRDs `names` the cluster has without the mesh's `label` (another
/// project's own).
async fn foreign_crds(
    client: kube::Client,
    names: impl IntoIterator<Item = impl AsRef<str>>,
    (key, value): (&str, &str),
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    let mut out = std::collections::BTreeSet::new();
    for name in names {
        let name = name.as_ref();
        let found = crds
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read CustomResourceDefinition {name}"))?;
        if found.is_some_and(|crd| {
            crd.metadata
                .labels
                .is_none_or(|l| l.get(key).map(String::as_str) != Some(value))
        }) {
            out.insert(name.to_string());
        }
    }
    Ok(out)
}

/// The Istio and Linkerd policy CRDs the cluster has that are not the mesh's (Istio's
/// or Linkerd's own): `mesh install` leaves those out.
pub async fn foreign_policy_crds(
    client: kube::Client,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let names = mesh_controller::crd::policy()
        .into_iter()
        .map(|(file, _)| file.trim_end_matches(".yaml").to_string());
    foreign_crds(client, names, mesh_controller::crd::POLICY_LABEL).await
}

/// The mesh already installed in the cluster, if any.
pub async fn installed(client: kube::Client) -> anyhow::Result<Option<Installed>> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::Api;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "mesh");
    let Some(issuer) = secrets
        .get_opt("mesh-identity-issuer")
        .await
        .context("cannot read Secret mesh/mesh-identity-issuer")?
    else {
        return Ok(None);
    };
    let data = |s: &Secret, key: &str| -> Option<String> {
        let bytes = s.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    };
    let issuer_field = |key: &str| {
        data(&issuer, key)
            .with_context(|| format!("Secret mesh/mesh-identity-issuer has no {key} (PEM)"))
            .context(Broken)
    };
    let (issuer_cert, issuer_key) = (issuer_field("tls.crt")?, issuer_field("tls.key")?);
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), "mesh")
        .get_opt("mesh-identity-trust-anchors")
        .await
        .context("cannot read ConfigMap mesh/mesh-identity-trust-anchors")?
        .and_then(|cm| cm.data?.get("ca-bundle.crt").cloned());
    // During an anchor rotation the two may differ: keep every anchor either holds.
    let anchors = match (bundle, data(&issuer, "ca.crt")) {
        (Some(b), Some(c)) => merge_bundles(&b, &c),
        (Some(b), None) => b,
        (None, _) => issuer_field("ca.crt")?,
    };
    mesh_identity::ca::Issuer::from_pem(anchors.as_bytes(), issuer_cert.as_bytes(), &issuer_key)
        .context("its issuer does not check out under its trust anchors")
        .context(Broken)?;

    let webhook_tls = match secrets.get_opt("mesh-proxy-injector-tls").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "warning: cannot read Secret mesh/mesh-proxy-injector-tls ({e}): the webhook certificate will be new"
            );
            None
        }
    };
    let ca_bundle = match Api::<MutatingWebhookConfiguration>::all(client)
        .get_opt("mesh-proxy-injector")
        .await
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("warning: cannot read MutatingWebhookConfiguration mesh-proxy-injector ({e}): the webhook certificate will be new");
            None
        }
    }
    .and_then(|w| {
        let bundle = w.webhooks?.first()?.client_config.ca_bundle.clone()?;
        String::from_utf8(bundle.0).ok()
    });
    let webhook = match (webhook_tls, ca_bundle) {
        (Some(tls), Some(ca)) => match (data(&tls, "tls.crt"), data(&tls, "tls.key")) {
            (Some(cert), Some(key)) => Some((ca, cert, key)),
            _ => None,
        },
        _ => None,
    };
    Ok(Some(Installed {
        anchors,
        issuer_cert,
        issuer_key,
        webhook,
    }))
}

/// Indents every line of `text` by `n` spaces (for block scalars).
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn b64(bytes: &[u8]) -> anyhow::Result<String> {
    Ok(
        serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A CA and a serving certificate for the webhook's Service.
fn webhook_tls() -> anyhow::Result<(String, String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mesh-proxy-injector-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.not_after =
        (std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)).into();
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![
        "mesh-proxy-injector.mesh.svc".to_owned(),
        "mesh-proxy-injector.mesh.svc.cluster.local".to_owned(),
    ])?;
    params.not_after =
        (std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// FNV-1a over `parts` (each followed by a 0 byte): a checksum that, unlike std's
/// hasher, stays the same across builds and Rust releases.
fn fnv1a<const N: usize>(parts: [&str; N]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The manifests, as one multi-document YAML text.
pub fn render(o: &Options) -> anyhow::Result<String> {
    let gateway = GATEWAY_API_CRDS.iter().filter(|_| o.gateway_api_crds);
    let mut docs: Vec<String> = CRDS
        .iter()
        .chain(gateway)
        .map(|c| c.trim_end().to_owned())
        .collect();
    if let Some(skip) = &o.skip_policy_crds {
        for (file, crd) in mesh_controller::crd::policy() {
            let name = file.trim_end_matches(".yaml");
            if !skip.contains(name) {
                docs.push(
                    mesh_controller::crd::render(&crd)
                        .with_context(|| format!("CRD {name}"))?
                        .trim_end()
                        .to_owned(),
                );
            }
        }
    }
    if o.crds_only {
        return Ok(docs.join("\n---\n") + "\n");
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let (anchors, issuer_cert, issuer_key) = match (&o.trust_anchors, &o.issuer_cert, &o.issuer_key)
    {
        (Some(a), Some(c), Some(k)) => {
            let (a, c, k) = (read(a)?, read(c)?, read(k)?);
            // Check them the way mesh-identity will, before anything is applied.
            mesh_identity::ca::Issuer::from_pem(a.as_bytes(), c.as_bytes(), &k)
                .context("the given issuer does not check out")?;
            (a, c, k)
        }
        (None, None, None) if o.installed.is_some() => {
            let i = o.installed.as_ref().expect("checked");
            (
                i.anchors.clone(),
                i.issuer_cert.clone(),
                i.issuer_key.clone(),
            )
        }
        (None, None, None) => {
            let g = mesh_identity::ca::generate(
                Duration::from_secs(10 * 365 * 86_400),
                Duration::from_secs(365 * 86_400),
            )?;
            eprintln!(
                "generated a new trust anchor and issuer (no mesh found in the cluster). To rotate the issuer later, keep your own CA: `mesh identity ca --out DIR`, then --identity-* files."
            );
            (g.trust_anchor_pem, g.issuer_cert_pem, g.issuer_key_pem)
        }
        _ => anyhow::bail!(
            "give all three of --identity-trust-anchors-file, --identity-issuer-certificate-file and --identity-issuer-key-file, or none"
        ),
    };
    let (webhook_ca, webhook_cert, webhook_key) =
        match o.installed.as_ref().and_then(|i| i.webhook.clone()) {
            Some(kept) => kept,
            None => webhook_tls()?,
        };
    let (reg, ver, replicas) = (&o.registry, &o.version, o.replicas);
    let default_policy = mesh_api::linkerd::DefaultPolicy::parse(&o.default_inbound_policy)
        .map(|_| o.default_inbound_policy.as_str())
        .map_err(|e| anyhow::anyhow!("--default-inbound-policy {e}"))?;
    let t = &o.tracing;
    let protocol = mesh_controller::inject::trace_protocol(&t.protocol)
        .map_err(|e| anyhow::anyhow!("--trace-protocol {e}"))?;
    let sampling = mesh_controller::inject::trace_sampling(&t.sampling)
        .map_err(|e| anyhow::anyhow!("--trace-sampling {e}"))?;
    let mut tracing_env = String::new();
    if let Some(c) = &t.collector {
        let c = mesh_controller::inject::trace_collector(c)
            .map_err(|e| anyhow::anyhow!("--trace-collector {e}"))?;
        tracing_env.push_str(&format!(
            "\n        - name: MESH_CONTROLLER_TRACE_COLLECTOR\n          value: \"{c}\""
        ));
    }
    tracing_env.push_str(&format!(
        "\n        - name: MESH_CONTROLLER_TRACE_PROTOCOL\n          value: {protocol}\n        - name: MESH_CONTROLLER_TRACE_SAMPLING\n          value: \"{sampling}\""
    ));
    // The controller reads its webhook certificate and the trust anchors at start: a
    // change to either rolls it.
    let checksum = format!("{:016x}", fnv1a([&webhook_cert, &anchors]));
    docs.push(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh\n  labels:\n    mesh.io/control-plane: \"true\"\n  annotations:\n    mesh.io/inject: disabled".into(),
    );
    for sa in ["mesh-identity", "mesh-controller"] {
        docs.push(format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: mesh"
        ));
    }
    docs.push(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mesh-identity-issuer\n  namespace: mesh\ntype: kubernetes.io/tls\ndata:\n  ca.crt: {}\n  tls.crt: {}\n  tls.key: {}",
        b64(anchors.as_bytes())?,
        b64(issuer_cert.as_bytes())?,
        b64(issuer_key.as_bytes())?
    ));
    docs.push(format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mesh-identity-trust-anchors\n  namespace: mesh\ndata:\n  ca-bundle.crt: |\n{}",
        indent(anchors.trim_end(), 4)
    ));
    docs.push(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mesh-proxy-injector-tls\n  namespace: mesh\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}",
        b64(webhook_cert.as_bytes())?,
        b64(webhook_key.as_bytes())?
    ));
    docs.push(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: mesh-identity\nrules:\n- apiGroups: [authentication.k8s.io]\n  resources: [tokenreviews]\n  verbs: [create]".into(),
    );
    docs.push(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: mesh-controller\nrules:\n- apiGroups: [\"\"]\n  resources: [namespaces, services, pods]\n  verbs: [get, list, watch]\n- apiGroups: [discovery.k8s.io]\n  resources: [endpointslices]\n  verbs: [get, list, watch]\n- apiGroups: [linkerd.io]\n  resources: [serviceprofiles]\n  verbs: [get, list, watch]\n- apiGroups: [split.smi-spec.io]\n  resources: [trafficsplits]\n  verbs: [get, list, watch]\n- apiGroups: [gateway.networking.k8s.io]\n  resources: [httproutes, grpcroutes, referencegrants]\n  verbs: [get, list, watch]\n- apiGroups: [gateway.networking.k8s.io]\n  resources: [httproutes/status, grpcroutes/status]\n  verbs: [get, patch, update]\n- apiGroups: [security.istio.io]\n  resources: [peerauthentications, authorizationpolicies, requestauthentications]\n  verbs: [get, list, watch]\n- apiGroups: [networking.istio.io]\n  resources: [envoyfilters, virtualservices, destinationrules]\n  verbs: [get, list, watch]\n- apiGroups: [telemetry.istio.io]\n  resources: [telemetries]\n  verbs: [get, list, watch]\n- apiGroups: [policy.linkerd.io]\n  resources: [servers, authorizationpolicies, meshtlsauthentications, networkauthentications, httplocalratelimitpolicies, httproutes]\n  verbs: [get, list, watch]\n- apiGroups: [\"\", events.k8s.io]\n  resources: [events]\n  verbs: [create, patch]".into(),
    );
    for name in ["mesh-identity", "mesh-controller"] {
        docs.push(format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\nsubjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: mesh"
        ));
    }
    let security = "securityContext:\n          allowPrivilegeEscalation: false\n          capabilities:\n            drop: [ALL]\n          readOnlyRootFilesystem: true\n          runAsNonRoot: true\n          runAsUser: 2103\n          seccompProfile:\n            type: RuntimeDefault";
    docs.push(format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: mesh-identity\n  namespace: mesh\n  labels:\n    app.kubernetes.io/name: mesh-identity\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mesh-identity\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: mesh-identity\n    spec:\n      serviceAccountName: mesh-identity\n      containers:\n      - name: identity\n        image: {reg}/identity:{ver}\n        env:\n        - name: MESH_IDENTITY_ISSUER_DIR\n          value: /var/run/mesh/issuer\n        - name: MESH_IDENTITY_TOKENS\n          value: kubernetes\n        - name: MESH_IDENTITY_NAMESPACE\n          value: mesh\n        ports:\n        - name: grpc\n          containerPort: 8080\n        - name: admin\n          containerPort: 9990\n        readinessProbe:\n          httpGet:\n            path: /ready\n            port: 9990\n        livenessProbe:\n          httpGet:\n            path: /live\n            port: 9990\n        resources:\n          requests:\n            cpu: 50m\n            memory: 20Mi\n          limits:\n            memory: 250Mi\n        {security}\n        volumeMounts:\n        - name: issuer\n          mountPath: /var/run/mesh/issuer\n          readOnly: true\n      volumes:\n      - name: issuer\n        secret:\n          secretName: mesh-identity-issuer"
    ));
    docs.push(format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: mesh-controller\n  namespace: mesh\n  labels:\n    app.kubernetes.io/name: mesh-controller\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mesh-controller\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: mesh-controller\n      annotations:\n        mesh.io/config-checksum: \"{checksum}\"\n    spec:\n      serviceAccountName: mesh-controller\n      containers:\n      - name: controller\n        image: {reg}/controller:{ver}\n        env:\n        - name: MESH_CONTROLLER_SOURCE\n          value: kubernetes\n        - name: MESH_CONTROLLER_WEBHOOK_CERT\n          value: /var/run/mesh/webhook/tls.crt\n        - name: MESH_CONTROLLER_WEBHOOK_KEY\n          value: /var/run/mesh/webhook/tls.key\n        - name: MESH_CONTROLLER_TRUST_ANCHORS\n          value: /var/run/mesh/trust/ca-bundle.crt\n        - name: MESH_CONTROLLER_PROXY_IMAGE\n          value: {reg}/proxy\n        - name: MESH_CONTROLLER_PROXY_VERSION\n          value: \"{ver}\"\n        - name: MESH_CONTROLLER_DEFAULT_INBOUND_POLICY\n          value: {default_policy}{tracing_env}\n        ports:\n        - name: grpc\n          containerPort: 8086\n        - name: webhook\n          containerPort: 8443\n        resources:\n          requests:\n            cpu: 100m\n            memory: 50Mi\n          limits:\n            memory: 500Mi\n        {security}\n        volumeMounts:\n        - name: webhook-tls\n          mountPath: /var/run/mesh/webhook\n          readOnly: true\n        - name: trust-anchors\n          mountPath: /var/run/mesh/trust\n          readOnly: true\n      volumes:\n      - name: webhook-tls\n        secret:\n          secretName: mesh-proxy-injector-tls\n      - name: trust-anchors\n        configMap:\n          name: mesh-identity-trust-anchors"
    ));
    for (name, app, port, target) in [
        ("mesh-identity", "mesh-identity", 8080, "grpc"),
        ("mesh-destination", "mesh-controller", 8086, "grpc"),
        ("mesh-proxy-injector", "mesh-controller", 443, "webhook"),
    ] {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: mesh\nspec:\n  selector:\n    app.kubernetes.io/name: {app}\n  ports:\n  - name: {target}\n    port: {port}\n    targetPort: {target}"
        ));
    }
    docs.push(format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: mesh-proxy-injector\nwebhooks:\n- name: inject.mesh.io\n  clientConfig:\n    service:\n      name: mesh-proxy-injector\n      namespace: mesh\n      path: /inject\n    caBundle: {}\n  rules:\n  - apiGroups: [\"\"]\n    apiVersions: [v1]\n    operations: [CREATE]\n    resources: [pods]\n    scope: Namespaced\n  namespaceSelector:\n    matchExpressions:\n    - key: kubernetes.io/metadata.name\n      operator: NotIn\n      values: [mesh, kube-system, kube-public]\n  failurePolicy: Ignore\n  sideEffects: None\n  admissionReviewVersions: [v1]\n  timeoutSeconds: 10",
        b64(webhook_ca.as_bytes())?
    ));
    Ok(docs.join("\n---\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::{serve, status};
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    const ISSUER: &str = "/api/v1/namespaces/mesh/secrets/mesh-identity-issuer";
    const ANCHORS: &str = "/api/v1/namespaces/mesh/configmaps/mesh-identity-trust-anchors";
    const WEBHOOK_TLS: &str = "/api/v1/namespaces/mesh/secrets/mesh-proxy-injector-tls";
    const WEBHOOK: &str =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-proxy-injector";

    fn b(s: &str) -> String {
        b64(s.as_bytes()).expect("b64")
    }

    type Cluster = (
        mesh_identity::ca::GeneratedCa,
        (String, String, String),
        Vec<(&'static str, Value)>,
    );

    /// The objects a `mesh install` leaves in a cluster, from a fresh CA.
    fn cluster() -> Cluster {
        mesh_api::start::crypto();
        let ca =
            mesh_identity::ca::generate(Duration::from_secs(86_400), Duration::from_secs(86_400))
                .expect("CA");
        let tls = webhook_tls().expect("webhook TLS");
        let objects = vec![
            (
                ISSUER,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "mesh-identity-issuer", "namespace": "mesh"},
                       "data": {"ca.crt": b(&ca.trust_anchor_pem), "tls.crt": b(&ca.issuer_cert_pem),
                                "tls.key": b(&ca.issuer_key_pem)}}),
            ),
            (
                ANCHORS,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "mesh-identity-trust-anchors", "namespace": "mesh"},
                       "data": {"ca-bundle.crt": ca.trust_anchor_pem}}),
            ),
            (
                WEBHOOK_TLS,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "mesh-proxy-injector-tls", "namespace": "mesh"},
                       "data": {"tls.crt": b(&tls.1), "tls.key": b(&tls.2)}}),
            ),
            (
                WEBHOOK,
                json!({"apiVersion": "admissionregistration.k8s.io/v1",
                       "kind": "MutatingWebhookConfiguration",
                       "metadata": {"name": "mesh-proxy-injector"},
                       "webhooks": [{"name": "inject.mesh.io", "clientConfig": {"caBundle": b(&tls.0)},
                                     "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
            ),
        ];
        (ca, tls, objects)
    }

    async fn lookup(objects: Vec<(&'static str, Value)>) -> anyhow::Result<Option<Installed>> {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(serve(handle, objects, true));
        installed(kube::Client::new(service, "default")).await
    }

    fn options(installed: Option<Installed>) -> Options {
        Options {
            crds_only: false,
            gateway_api_crds: true,
            skip_policy_crds: Some(Default::default()),
            trust_anchors: None,
            issuer_cert: None,
            issuer_key: None,
            registry: "r".into(),
            version: "v".into(),
            replicas: 1,
            default_inbound_policy: "all-unauthenticated".into(),
            tracing: Tracing::default(),
            installed,
        }
    }

    #[tokio::test]
    async fn an_installed_mesh_keeps_its_ca_and_webhook_certificate() {
        let (ca, tls, objects) = cluster();
        let found = lookup(objects).await.expect("lookup").expect("found");
        assert_eq!(found.anchors, ca.trust_anchor_pem);
        assert_eq!(found.issuer_cert, ca.issuer_cert_pem);
        assert_eq!(found.issuer_key, ca.issuer_key_pem);
        assert_eq!(found.webhook.as_ref(), Some(&tls));

        let text = render(&options(Some(found.clone()))).expect("render");
        for kept in [
            b(&ca.trust_anchor_pem),
            b(&ca.issuer_cert_pem),
            b(&ca.issuer_key_pem),
            b(&tls.0),
            b(&tls.1),
            b(&tls.2),
        ] {
            assert!(text.contains(&kept), "not kept: {kept}");
        }
        // Rendered again, the same: re-applying changes nothing, not even the
        // controller's checksum annotation.
        assert_eq!(render(&options(Some(found))).expect("render"), text);
    }

    #[test]
    fn tracing_flags_reach_the_controller_and_bad_ones_are_refused() {
        let text = render(&options(None)).expect("render");
        assert!(!text.contains("MESH_CONTROLLER_TRACE_COLLECTOR"));
        assert!(text.contains("MESH_CONTROLLER_TRACE_SAMPLING\n          value: \"0.01\""));
        let mut o = options(None);
        o.tracing = Tracing {
            collector: Some("mesh-viz.mesh.svc.cluster.local:4317".into()),
            protocol: "zipkin".into(),
            sampling: "0.5".into(),
        };
        let text = render(&o).expect("render");
        assert!(text.contains(
            "MESH_CONTROLLER_TRACE_COLLECTOR\n          value: \"mesh-viz.mesh.svc.cluster.local:4317\""
        ));
        assert!(text.contains("MESH_CONTROLLER_TRACE_PROTOCOL\n          value: zipkin"));
        for (field, bad) in [
            ("collector", "x"),
            ("protocol", "jaeger"),
            ("sampling", "7"),
        ] {
            let mut o = options(None);
            match field {
                "collector" => o.tracing.collector = Some(bad.into()),
                "protocol" => o.tracing.protocol = bad.into(),
                _ => o.tracing.sampling = bad.into(),
            }
            let err = render(&o).expect_err(bad);
            assert!(
                format!("{err:#}").contains(&format!("--trace-{field}")),
                "{err:#}"
            );
        }
    }

    #[tokio::test]
    async fn no_issuer_secret_is_no_mesh_and_a_bare_issuer_secret_is_kept() {
        assert!(lookup(Vec::new()).await.expect("lookup").is_none());
        // Without the webhook objects and the ConfigMap, the CA is still kept, its
        // anchors from the issuer Secret's ca.crt.
        let (ca, _, mut objects) = cluster();
        objects.retain(|(p, _)| *p == ISSUER);
        let found = lookup(objects).await.expect("lookup").expect("found");
        assert!(found.webhook.is_none());
        assert_eq!(found.anchors, ca.trust_anchor_pem);
    }

    #[tokio::test]
    async fn what_cannot_be_read_or_does_not_check_out_is_an_error() {
        let err = lookup(vec![(ISSUER, status(403, "Forbidden"))])
            .await
            .expect_err("forbidden");
        assert!(
            format!("{err:#}").contains("cannot read Secret mesh/mesh-identity-issuer"),
            "{err:#}"
        );
        // Anchors that did not sign the issuer: refused, not replaced.
        let (_, _, mut objects) = cluster();
        let (other, _, _) = cluster();
        objects[0].1["data"]["ca.crt"] = json!(b(&other.trust_anchor_pem));
        objects[1].1["data"]["ca-bundle.crt"] = json!(other.trust_anchor_pem);
        let err = lookup(objects).await.expect_err("foreign anchor");
        assert!(format!("{err:#}").contains("does not check out"), "{err:#}");
        assert!(
            err.downcast_ref::<Broken>().is_some(),
            "a found mesh is Broken"
        );
        // A Secret without its key.
        let (_, _, mut objects) = cluster();
        if let Some(data) = objects[0].1["data"].as_object_mut() {
            data.remove("tls.key");
        }
        let err = lookup(objects).await.expect_err("no key");
        assert!(format!("{err:#}").contains("has no tls.key"), "{err:#}");
        assert!(err.downcast_ref::<Broken>().is_some());
        // The API refusing is not Broken: it cannot say.
        let err = lookup(vec![(ISSUER, status(500, "InternalError"))])
            .await
            .expect_err("500");
        assert!(err.downcast_ref::<Broken>().is_none());
    }

    #[tokio::test]
    async fn during_an_anchor_rotation_every_anchor_is_kept() {
        // The ConfigMap still has only the old anchor; the issuer Secret's ca.crt the
        // new one, which signed the issuer.
        let (new, _, mut objects) = cluster();
        let (old, _, _) = cluster();
        objects[1].1["data"]["ca-bundle.crt"] = json!(old.trust_anchor_pem);
        let found = lookup(objects).await.expect("lookup").expect("found");
        assert!(bundle_includes(&found.anchors, &old.trust_anchor_pem));
        assert!(bundle_includes(&found.anchors, &new.trust_anchor_pem));
        assert_eq!(pem_blocks(&found.anchors).len(), 2);
        // Merging is idempotent.
        assert_eq!(
            merge_bundles(&found.anchors, &new.trust_anchor_pem),
            found.anchors
        );
        assert!(!bundle_includes(&new.trust_anchor_pem, &found.anchors));
    }
}
