//! Starts the real `mesh-viz` binary over a controller folder, and reads its API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Child;

/// A running mesh-viz; killed when dropped.
#[derive(Debug)]
pub struct Viz {
    /// The API and dashboard address.
    pub addr: SocketAddr,
    /// Where it receives spans (OTLP gRPC).
    pub otlp: SocketAddr,
    child: Child,
}

/// Starts `mesh-viz --source dir:DIR`, scraping every `interval` (e.g. `500ms`).
pub async fn start(dir: &Path, interval: &str) -> Viz {
    start_with(dir, interval, &[]).await
}

/// [`start`], with more `MESH_VIZ_*` settings (full names).
pub async fn start_with(dir: &Path, interval: &str, env: &[(&str, String)]) -> Viz {
    let mut cmd = crate::command("mesh-viz");
    cmd.env_clear()
        .env("MESH_VIZ_SOURCE", format!("dir:{}", dir.display()))
        .env("MESH_VIZ_ADDR", "127.0.0.1:0")
        .env("MESH_VIZ_OTLP_ADDR", "127.0.0.1:0")
        .env("MESH_VIZ_SCRAPE_INTERVAL", interval)
        .env("MESH_VIZ_LOG", "info,mesh_viz=debug")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let (child, line) = crate::spawn_listening(cmd, "viz").await;
    let addr = crate::field(&line, "api");
    let otlp = crate::field(&line, "otlp");
    Viz { addr, otlp, child }
}

impl Viz {
    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let rsp = crate::client::get(self.addr, "viz", path).await;
        assert_eq!(rsp.status, 200, "{path}: {}", rsp.text());
        serde_json::from_str(&rsp.text()).expect("JSON")
    }

    /// The `items` of an API answer.
    pub async fn items(&self, path: &str) -> Vec<Value> {
        self.get(path).await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every meshed pod listed has been scraped at least `n` times since
    /// now, so that traffic sent afterwards falls after a baseline.
    pub async fn scraped(&self, pods: &[&str], n: u64) {
        let base = self.scrapes(pods).await;
        crate::eventually(
            "viz scraping every pod",
            Duration::from_secs(20),
            || async {
                let now = self.scrapes(pods).await;
                now.iter()
                    .zip(&base)
                    .all(|(a, b)| *a >= b + n)
                    .then_some(())
            },
        )
        .await;
    }

    async fn scrapes(&self, pods: &[&str]) -> Vec<u64> {
        let targets = self.get("/api/targets").await;
        pods.iter()
            .map(|p| {
                targets
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["pod"] == *p)
                    .and_then(|t| t["scrapes"].as_u64())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Stops viz.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
