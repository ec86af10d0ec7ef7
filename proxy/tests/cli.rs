//! The `mesh-proxy` binary's command line: help, bad values, and bind failures exit
//! with a clear message instead of a panic. (Building this test also builds the binary
//! that the end-to-end tests in `test/` start.)

use std::process::Command;

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.env_clear();
    cmd
}

#[test]
fn help_lists_flags_with_their_env_vars() {
    let out = proxy().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "MESH_PROXY_INBOUND_ADDR",
        "MESH_PROXY_OUTBOUND_ADDR",
        "MESH_PROXY_ADMIN_ADDR",
        "MESH_PROXY_LOG",
    ] {
        assert!(help.contains(var), "{var} missing from help:\n{help}");
    }
}

#[test]
fn bad_duration_is_a_usage_error() {
    let out = proxy()
        .env("MESH_PROXY_CONNECT_TIMEOUT", "soon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn taken_port_is_reported_by_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = proxy()
        .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_OUTBOUND_ADDR", addr.to_string())
        .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (outbound)")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn invalid_log_filter_is_reported() {
    let out = proxy()
        .env("MESH_PROXY_LOG", "info,[[[")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid MESH_PROXY_LOG"));
}
