//! Starts the real `mesh-proxy` binary on ephemeral loopback ports and reads its admin
//! endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// Settings for a proxy to start.
#[derive(Debug, Default)]
pub struct Builder {
    env: BTreeMap<String, String>,
    cpus: Option<String>,
}

/// A proxy to configure and [`run`](Builder::run).
pub fn new() -> Builder {
    Builder::default()
}

impl Builder {
    /// Sets `MESH_PROXY_<name>` for the proxy process.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env
            .insert(format!("MESH_PROXY_{name}"), value.to_string());
        self
    }

    /// Runs the proxy on these CPUs only (a `taskset -c` list), as a pod's CPU set.
    pub fn cpus(mut self, list: &str) -> Self {
        self.cpus = Some(list.to_string());
        self
    }

    /// The application address inbound connections are forwarded to.
    pub fn app(self, addr: SocketAddr) -> Self {
        self.env("INBOUND_APP_ADDR", addr)
    }

    /// Starts the proxy and waits until it listens.
    pub async fn run(self) -> Proxy {
        let mut cmd = match &self.cpus {
            Some(cpus) => {
                let mut cmd = tokio::process::Command::new("taskset");
                cmd.arg("-c").arg(cpus).arg(crate::bin_path("mesh-proxy"));
                cmd
            }
            None => crate::command("mesh-proxy"),
        };
        cmd.env_clear()
            .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_LOG", "info,mesh_proxy=debug")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn mesh-proxy");
        // What the proxy writes on stdout (its access log), kept for the test.
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let kept = stdout.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut startup = Vec::new();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read proxy log") {
                eprintln!("[proxy] {line}");
                if line.contains("listening") {
                    return Some(line);
                }
                startup.push(line);
            }
            None
        })
        .await
        .expect("proxy did not start within 30s")
        .expect("proxy exited before listening");
        // Keep echoing the proxy's log so that a failing test shows it.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[proxy] {line}");
            }
        });
        let field = |name: &str| -> SocketAddr {
            let start = listening.find(&format!("{name}=")).expect("field") + name.len() + 1;
            let rest = &listening[start..];
            rest.split_whitespace()
                .next()
                .expect("value")
                .parse()
                .expect("address")
        };
        let tap = listening
            .split_whitespace()
            .find_map(|f| f.strip_prefix("tap="))
            .and_then(|v| v.parse().ok());
        Proxy {
            inbound: field("inbound"),
            outbound: field("outbound"),
            admin: field("admin"),
            tap,
            child,
            stdout,
            startup,
        }
    }
}

/// A running `mesh-proxy` process; killed when dropped.
#[derive(Debug)]
pub struct Proxy {
    /// The inbound listener.
    pub inbound: SocketAddr,
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    /// The tap server (mTLS), when it runs one.
    pub tap: Option<SocketAddr>,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    startup: Vec<String>,
}

impl Proxy {
    /// The lines the proxy logged before it listened (its start-up warnings).
    pub fn startup_log(&self) -> &[String] {
        &self.startup
    }

    /// The lines the proxy has written on stdout so far (its access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let rsp = crate::client::get(self.admin, "admin", "/metrics").await;
        assert_eq!(rsp.status, 200);
        rsp.text()
    }

    /// The sum of the samples of `series` (e.g. `request_total`) whose labels include
    /// every `name="value"` pair given.
    pub async fn metric(&self, series: &str, labels: &[(&str, &str)]) -> u64 {
        sum_metric(&self.metrics().await, series, labels)
    }

    /// Waits until `/ready` answers 200 (with mTLS: until the proxy has a certificate).
    pub async fn wait_ready(&self) {
        crate::eventually("the proxy ready", Duration::from_secs(20), || async {
            let rsp = crate::client::get(self.admin, "admin", "/ready").await;
            (rsp.status == 200).then_some(())
        })
        .await;
    }

    /// Asks the proxy to shut down through the admin server.
    pub async fn shutdown(&self) {
        let mut tx = crate::client::h1(self.admin).await;
        let req = http::Request::post("/shutdown")
            .header("host", "admin")
            .body(crate::client::body(bytes::Bytes::new()))
            .expect("request");
        let rsp = tx.send_request(req).await.expect("shutdown response");
        assert_eq!(rsp.status(), 200);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Kills the process and waits for it to exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends the process a signal with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `patience`.
    pub async fn wait(&mut self, patience: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(patience, self.child.wait())
            .await
            .expect("proxy did not exit in time")
            .expect("wait")
    }
}

/// Sums the samples of `series` in Prometheus text whose labels include all of `labels`.
pub fn sum_metric(text: &str, series: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
