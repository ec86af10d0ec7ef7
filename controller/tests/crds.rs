//! The CRDs committed under `charts/mesh/crds/` are the ones the types generate. After
//! changing the types, regenerate them with `MESH_UPDATE_CRDS=1 cargo test -p
//! mesh-controller --test crds`.

use std::path::PathBuf;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh/crds")
}

/// The Gateway API's CRDs: a template installs them only where the cluster has none.
fn gateway_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh/gateway-api")
}

#[test]
fn committed_crds_match_the_types() {
    let update = std::env::var_os("MESH_UPDATE_CRDS").is_some();
    let ours = mesh_controller::crd::all()
        .into_iter()
        .map(|(f, c)| (crds_dir(), f, c));
    let gateway = mesh_controller::crd::gateway_api()
        .into_iter()
        .map(|(f, c)| (gateway_dir(), f, c));
    let policy_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/mesh/policy-crds");
    let policy: Vec<_> = mesh_controller::crd::policy()
        .into_iter()
        .map(|(f, c)| (policy_dir.clone(), f, c))
        .collect();
    let ours = ours.map(|(d, f, c)| (d, f.to_string(), c));
    let gateway = gateway.map(|(d, f, c)| (d, f.to_string(), c));
    for (dir, file, crd) in ours.chain(gateway).chain(policy) {
        let want = mesh_controller::crd::render(&crd).expect("render");
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(&path, &want).expect("write");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is out of date: run MESH_UPDATE_CRDS=1 cargo test -p mesh-controller --test crds",
            path.display()
        );
    }
}

#[test]
fn the_crds_are_structural_and_serve_every_smi_version() {
    let all = mesh_controller::crd::all();
    let split = &all[1].1;
    let versions: Vec<_> = split
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(
        versions,
        [
            ("v1alpha1", true, true),
            ("v1alpha2", true, false),
            ("v1alpha3", true, false),
            ("v1alpha4", true, false)
        ]
    );
    for (_, crd) in all.iter().chain(&mesh_controller::crd::gateway_api()) {
        let text = serde_json::to_string(crd).expect("json");
        // Structural schemas: no references, no unresolved recursion.
        assert!(!text.contains("$ref"), "{text}");
        assert!(
            !text.contains("\"definitions\"") && !text.contains("\"$defs\""),
            "{text}"
        );
    }
}

#[test]
fn the_examples_parse_as_the_crd_types() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples");
    let text =
        std::fs::read_to_string(format!("{examples}/serviceprofile-webapp.yaml")).expect("example");
    let sp: mesh_controller::crd::ServiceProfile =
        mesh_api::yaml::from_str(&text).expect("ServiceProfile");
    assert_eq!(sp.spec.spec.routes.len(), 2);
    let text =
        std::fs::read_to_string(format!("{examples}/trafficsplit-web-svc.yaml")).expect("example");
    let ts: mesh_controller::crd::TrafficSplit =
        mesh_api::yaml::from_str(&text).expect("TrafficSplit");
    assert_eq!(ts.spec.spec.backends.len(), 2);
}
