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

/// What `mesh install` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only the CRDs.
    pub crds_only: bool,
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

/// The manifests, as one multi-document YAML text.
pub fn render(o: &Options) -> anyhow::Result<String> {
    let mut docs: Vec<String> = CRDS.iter().map(|c| c.trim_end().to_owned()).collect();
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
        (None, None, None) => {
            let g = mesh_identity::ca::generate(
                Duration::from_secs(10 * 365 * 86_400),
                Duration::from_secs(365 * 86_400),
            )?;
            eprintln!(
                "generated a new trust anchor and issuer. Apply this once: applied over a running mesh it replaces the trust anchors and breaks existing proxies. To re-apply or upgrade, keep a CA with `mesh identity ca --out DIR` and pass it with --identity-* files."
            );
            (g.trust_anchor_pem, g.issuer_cert_pem, g.issuer_key_pem)
        }
        _ => anyhow::bail!(
            "give all three of --identity-trust-anchors-file, --identity-issuer-certificate-file and --identity-issuer-key-file, or none"
        ),
    };
    let (webhook_ca, webhook_cert, webhook_key) = webhook_tls()?;
    let (reg, ver, replicas) = (&o.registry, &o.version, o.replicas);
    // The controller reads its webhook certificate and the trust anchors at start: a
    // change to either rolls it.
    let checksum = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&webhook_cert, &anchors).hash(&mut h);
        format!("{:016x}", h.finish())
    };
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
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: mesh-controller\nrules:\n- apiGroups: [\"\"]\n  resources: [namespaces, services, pods]\n  verbs: [get, list, watch]\n- apiGroups: [discovery.k8s.io]\n  resources: [endpointslices]\n  verbs: [get, list, watch]\n- apiGroups: [linkerd.io]\n  resources: [serviceprofiles]\n  verbs: [get, list, watch]\n- apiGroups: [split.smi-spec.io]\n  resources: [trafficsplits]\n  verbs: [get, list, watch]\n- apiGroups: [\"\", events.k8s.io]\n  resources: [events]\n  verbs: [create, patch]".into(),
    );
    for name in ["mesh-identity", "mesh-controller"] {
        docs.push(format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\nsubjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: mesh"
        ));
    }
    let security = "securityContext:\n          allowPrivilegeEscalation: false\n          capabilities:\n            drop: [ALL]\n          readOnlyRootFilesystem: true\n          runAsNonRoot: true\n          runAsUser: 2103";
    docs.push(format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: mesh-identity\n  namespace: mesh\n  labels:\n    app.kubernetes.io/name: mesh-identity\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mesh-identity\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: mesh-identity\n    spec:\n      serviceAccountName: mesh-identity\n      containers:\n      - name: identity\n        image: {reg}/identity:{ver}\n        env:\n        - name: MESH_IDENTITY_ISSUER_DIR\n          value: /var/run/mesh/issuer\n        - name: MESH_IDENTITY_TOKENS\n          value: kubernetes\n        - name: MESH_IDENTITY_NAMESPACE\n          value: mesh\n        ports:\n        - name: grpc\n          containerPort: 8080\n        - name: admin\n          containerPort: 9990\n        readinessProbe:\n          httpGet:\n            path: /ready\n            port: 9990\n        livenessProbe:\n          httpGet:\n            path: /live\n            port: 9990\n        resources:\n          requests:\n            cpu: 50m\n            memory: 20Mi\n          limits:\n            memory: 250Mi\n        {security}\n        volumeMounts:\n        - name: issuer\n          mountPath: /var/run/mesh/issuer\n          readOnly: true\n      volumes:\n      - name: issuer\n        secret:\n          secretName: mesh-identity-issuer"
    ));
    docs.push(format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: mesh-controller\n  namespace: mesh\n  labels:\n    app.kubernetes.io/name: mesh-controller\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: mesh-controller\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: mesh-controller\n      annotations:\n        mesh.io/config-checksum: \"{checksum}\"\n    spec:\n      serviceAccountName: mesh-controller\n      containers:\n      - name: controller\n        image: {reg}/controller:{ver}\n        env:\n        - name: MESH_CONTROLLER_SOURCE\n          value: kubernetes\n        - name: MESH_CONTROLLER_WEBHOOK_CERT\n          value: /var/run/mesh/webhook/tls.crt\n        - name: MESH_CONTROLLER_WEBHOOK_KEY\n          value: /var/run/mesh/webhook/tls.key\n        - name: MESH_CONTROLLER_TRUST_ANCHORS\n          value: /var/run/mesh/trust/ca-bundle.crt\n        - name: MESH_CONTROLLER_PROXY_IMAGE\n          value: {reg}/proxy\n        - name: MESH_CONTROLLER_PROXY_VERSION\n          value: \"{ver}\"\n        ports:\n        - name: grpc\n          containerPort: 8086\n        - name: webhook\n          containerPort: 8443\n        resources:\n          requests:\n            cpu: 100m\n            memory: 50Mi\n          limits:\n            memory: 500Mi\n        {security}\n        volumeMounts:\n        - name: webhook-tls\n          mountPath: /var/run/mesh/webhook\n          readOnly: true\n        - name: trust-anchors\n          mountPath: /var/run/mesh/trust\n          readOnly: true\n      volumes:\n      - name: webhook-tls\n        secret:\n          secretName: mesh-proxy-injector-tls\n      - name: trust-anchors\n        configMap:\n          name: mesh-identity-trust-anchors"
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
