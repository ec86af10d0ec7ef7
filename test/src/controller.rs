//! Starts the real `mesh-controller` binary over a folder of YAML.

use std::net::SocketAddr;
use std::path::Path;

use tokio::process::Child;

/// A running controller; killed when dropped.
#[derive(Debug)]
pub struct Controller {
    /// The destination service's address.
    pub destination: SocketAddr,
    child: Child,
}

/// Starts `mesh-controller --source dir:DIR` on `destination` (port 0 for any).
pub async fn start(dir: &Path, destination: SocketAddr) -> Controller {
    let mut cmd = crate::command("mesh-controller");
    cmd.env_clear()
        .env("MESH_CONTROLLER_SOURCE", format!("dir:{}", dir.display()))
        .env("MESH_CONTROLLER_DESTINATION_ADDR", destination.to_string())
        .env("MESH_CONTROLLER_LOG", "info");
    let (child, line) = crate::spawn_listening(cmd, "controller").await;
    let destination = crate::field(&line, "destination");
    Controller { destination, child }
}

impl Controller {
    /// Stops the controller.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
