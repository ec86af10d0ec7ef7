//! `mesh identity ca` writes a CA that mesh-identity loads, and never silently
//! replaces one.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
}

#[test]
fn writes_a_loadable_ca_and_refuses_to_overwrite_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("ca");
    let status = mesh()
        .args(["identity", "ca", "--out"])
        .arg(&out)
        .status()
        .expect("run mesh");
    assert!(status.success());
    let issuer = mesh_identity::ca::Issuer::load(&out, None).expect("mesh-identity loads it");
    let days = issuer
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .expect("future")
        .as_secs()
        / 86_400;
    assert!((364..=365).contains(&days), "{days}");
    let mode = std::fs::metadata(out.join("tls.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the issuer key is private");

    let before = std::fs::read(out.join("tls.key")).expect("key");
    let again = mesh()
        .args(["identity", "ca", "--out"])
        .arg(&out)
        .output()
        .expect("run mesh");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(out.join("tls.key")).expect("key"), before);

    // The next issuer, under the same anchor.
    let next = dir.path().join("next");
    let out2 = mesh()
        .args(["identity", "issuer", "--anchor"])
        .arg(&out)
        .arg("--out")
        .arg(&next)
        .output()
        .expect("run mesh");
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let next_issuer = mesh_identity::ca::Issuer::load(&next, None).expect("loads");
    assert_eq!(next_issuer.anchors(), issuer.anchors(), "same trust anchor");
    assert_ne!(
        next_issuer.certificate(),
        issuer.certificate(),
        "a new issuer"
    );

    let bad = mesh()
        .args([
            "identity",
            "ca",
            "--issuer-days",
            "20",
            "--anchor-days",
            "10",
            "--out",
        ])
        .arg(dir.path().join("x"))
        .output()
        .expect("run mesh");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot outlive"));
}

#[test]
fn an_unreachable_viz_is_a_clear_error() {
    let out = mesh()
        .args(["viz", "stat", "deploy", "--viz-addr", "127.0.0.1:1"])
        .output()
        .expect("run mesh");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach mesh-viz at 127.0.0.1:1"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
