//! `mesh inject` / `mesh uninject` on the shared examples and a corpus of every kind:
//! snapshots of the output, idempotence, a lossless round trip, valid Kubernetes
//! objects, and refusals that write nothing to stdout.
//!
//! `MESH_UPDATE_SNAPSHOTS=1 cargo test -p mesh --test inject` rewrites the snapshots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/inject")
        .join(name)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/examples")
}

fn mesh(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.args(args).arg("--proxy-version").arg("test");
    if args.contains(&"--manual") {
        cmd.arg("--trust-anchors").arg(corpus("anchors.pem"));
    }
    run(cmd, stdin)
}

fn uninject(text: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.args(["uninject", "-"]);
    run(cmd, Some(text))
}

/// Runs `cmd` with `stdin` (if any) as its standard input; its output.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mesh");
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docs(text: &str) -> Vec<mesh_api::yaml::Value> {
    mesh_api::yaml::documents(text)
        .map(|d| d.expect("yaml"))
        .map(|mut v| {
            yaml11_modes(&mut v);
            v
        })
        .collect()
}

/// Reads `defaultMode: 0644` as kubectl (YAML 1.1) does: octal, 420.
fn yaml11_modes(v: &mut mesh_api::yaml::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v.as_str() {
                    Some(t) if k == "defaultMode" && t.starts_with('0') => {
                        *v = mesh_api::yaml::Value::Number(
                            u32::from_str_radix(t, 8).expect("octal").into(),
                        );
                    }
                    _ => yaml11_modes(v),
                }
            }
        }
        serde_json::Value::Array(s) => s.iter_mut().for_each(yaml11_modes),
        _ => {}
    }
}

/// Compares `text` with the snapshot `name`, or writes it with MESH_UPDATE_SNAPSHOTS=1.
fn snapshot(name: &str, text: &str) {
    let path = corpus("snapshots").join(name);
    if std::env::var_os("MESH_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run with MESH_UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(
        text, want,
        "snapshot {name} differs (MESH_UPDATE_SNAPSHOTS=1 rewrites it)"
    );
}

#[test]
fn every_kind_injects_as_the_snapshots_say() {
    let kinds = corpus("kinds.yaml");
    let kinds = kinds.to_str().expect("path");
    for (name, args) in [
        ("kinds.annotate.yaml", vec!["inject", kinds]),
        ("kinds.manual.yaml", vec!["inject", "--manual", kinds]),
        (
            "kinds.classic.yaml",
            vec!["inject", "--manual", "--classic-sidecar", kinds],
        ),
    ] {
        let out = mesh(&args, None);
        let text = ok(&out);
        // YAML 1.1 octal, as kubectl reads it, survives as the number it means.
        assert!(text.contains("defaultMode: 420"), "{name}: {text}");
        snapshot(name, &text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in [
            "deployment \"web\" injected",
            "cronjob \"report\" injected",
            "pod \"debug\" injected",
            "namespace \"shop\" annotated",
            "service \"web\" skipped",
            "configmap \"settings\" skipped",
        ] {
            assert!(
                stderr.contains(line),
                "{name}: {line} missing from:\n{stderr}"
            );
        }
    }
}

#[test]
fn the_shared_examples_inject_and_round_trip() {
    let dir = examples();
    let dir = dir.to_str().expect("path");
    let annotated = ok(&mesh(&["inject", dir], None));
    snapshot("examples.annotate.yaml", &annotated);
    let manual = ok(&mesh(&["inject", "--manual", dir], None));
    snapshot("examples.manual.yaml", &manual);
    // The examples' own kinds (ServiceProfile, TrafficSplit) pass through as they are.
    assert!(manual.contains("kind: ServiceProfile") && manual.contains("kind: TrafficSplit"));
}

#[test]
fn injecting_twice_equals_injecting_once_and_uninject_restores() {
    let mut original = String::new();
    for f in ["kinds.yaml", "list.yaml"] {
        original.push_str(&std::fs::read_to_string(corpus(f)).expect("read"));
        original.push_str("\n---\n");
    }
    for args in [
        &["inject", "-"][..],
        &["inject", "--manual", "-"],
        &["inject", "--manual", "--classic-sidecar", "-"],
    ] {
        let once = ok(&mesh(args, Some(&original)));
        let twice = mesh(args, Some(&once));
        assert_eq!(ok(&twice), once, "{args:?} is not idempotent");
        assert!(String::from_utf8_lossy(&twice.stderr).contains("already injected"));
        let back = ok(&uninject(&once));
        assert_eq!(
            docs(&back),
            docs(&original),
            "{args:?}: uninject did not restore"
        );
    }
}

#[test]
fn injected_workloads_are_valid_kubernetes_objects() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::Pod;
    let text = ok(&mesh(
        &[
            "inject",
            "--manual",
            corpus("kinds.yaml").to_str().expect("p"),
        ],
        None,
    ));
    let mut native = 0;
    for doc in docs(&text) {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        let json = serde_json::to_value(&doc).expect("json");
        let spec = match kind.as_str() {
            "Deployment" => {
                serde_json::from_value::<Deployment>(json)
                    .expect("deployment")
                    .spec
                    .template
                    .spec
            }
            "StatefulSet" => {
                serde_json::from_value::<StatefulSet>(json)
                    .expect("sts")
                    .spec
                    .template
                    .spec
            }
            "DaemonSet" => {
                serde_json::from_value::<DaemonSet>(json)
                    .expect("ds")
                    .spec
                    .template
                    .spec
            }
            "ReplicaSet" => serde_json::from_value::<ReplicaSet>(json)
                .expect("rs")
                .spec
                .template
                .and_then(|t| t.spec),
            "Job" => serde_json::from_value::<Job>(json)
                .expect("job")
                .spec
                .and_then(|s| s.template.spec),
            "CronJob" => serde_json::from_value::<CronJob>(json)
                .expect("cronjob")
                .spec
                .job_template
                .spec
                .and_then(|j| j.template.spec),
            "Pod" => serde_json::from_value::<Pod>(json).expect("pod").spec,
            _ => continue,
        };
        let spec = spec.expect("pod spec");
        let inits = spec.init_containers.expect("init containers");
        assert_eq!(inits[0].name, "mesh-init", "{kind}: iptables first");
        let proxy = inits
            .iter()
            .find(|c| c.name == "mesh-proxy")
            .expect("native sidecar");
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "{kind}");
        assert!(proxy.readiness_probe.is_some() && proxy.liveness_probe.is_some());
        assert_eq!(
            proxy.security_context.as_ref().and_then(|s| s.run_as_user),
            Some(2102)
        );
        native += 1;
    }
    assert_eq!(native, 7, "every pod-running kind");
}

#[test]
fn what_cannot_be_meshed_writes_nothing() {
    let out = mesh(
        &["inject", corpus("hostnetwork.yaml").to_str().expect("p")],
        None,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "half a change on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemonset \"node-exporter\"") && err.contains("hostNetwork"),
        "{err}"
    );

    let out = mesh(
        &["inject", corpus("invalid.yaml").to_str().expect("p")],
        None,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid.yaml: document 2") && err.contains("line"),
        "{err}"
    );

    let out = mesh(
        &[
            "inject",
            "--manual",
            corpus("bad-override.yaml").to_str().expect("p"),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.mesh.io/skip-inbound-ports"), "{err}");

    // Manual injection needs the mesh's trust anchors for the sidecar.
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "inject",
            "--manual",
            corpus("kinds.yaml").to_str().expect("p"),
        ])
        .output()
        .expect("run mesh");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-anchors"));

    let out = mesh(&["inject", "/no/such/file.yaml"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.yaml"));
}
