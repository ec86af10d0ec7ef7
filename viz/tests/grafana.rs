//! The Grafana dashboard in charts/ is valid JSON and queries only metrics mesh-viz
//! serves.

#[test]
fn the_dashboard_queries_what_viz_serves() {
    let text = include_str!("../../charts/mesh-viz/dashboards/mesh.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let served = include_str!("../src/server.rs");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let metric: String = expr
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                served.contains(&format!("\"{metric}{{"))
                    || served.contains(&format!("{metric}{{{{")),
                "{metric} (panel {}) is not served by mesh-viz",
                panel["title"]
            );
        }
    }
}
