//! Starts the real `mesh-controller` binary over a folder of YAML.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running controller; killed when dropped.
#[derive(Debug)]
pub struct Controller {
    /// The destination service's address.
    pub destination: SocketAddr,
    child: Child,
}

/// Starts `mesh-controller --source dir:DIR` on `destination` (port 0 for any).
pub async fn start(dir: &Path, destination: SocketAddr) -> Controller {
    let mut child = Command::new(crate::bin_path("mesh-controller"))
        .env_clear()
        .env("MESH_CONTROLLER_SOURCE", format!("dir:{}", dir.display()))
        .env("MESH_CONTROLLER_DESTINATION_ADDR", destination.to_string())
        .env("MESH_CONTROLLER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mesh-controller");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            eprintln!("[controller] {line}");
            if line.contains("listening") {
                return line;
            }
        }
        panic!("controller exited before listening");
    })
    .await
    .expect("controller did not start within 30s");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[controller] {line}");
        }
    });
    let start = line.find("destination=").expect("address") + "destination=".len();
    let destination = line[start..]
        .split_whitespace()
        .next()
        .expect("addr")
        .parse()
        .expect("socket address");
    Controller { destination, child }
}

impl Controller {
    /// Stops the controller.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
