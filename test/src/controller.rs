//! Starts the real `mesh-controller` binary over a folder of YAML.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::process::Child;

/// A running controller; killed when dropped.
#[derive(Debug)]
pub struct Controller {
    /// The destination service's address.
    pub destination: SocketAddr,
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    child: Child,
}

/// Starts `mesh-controller --source dir:DIR` on `destination` (port 0 for any).
pub async fn start(dir: &Path, destination: SocketAddr) -> Controller {
    start_with(dir, destination, &[]).await
}

/// [`start`], with more of the controller's settings (`MESH_CONTROLLER_…`) in `env`.
pub async fn start_with(
    dir: &Path,
    destination: SocketAddr,
    env: &[(String, String)],
) -> Controller {
    let mut cmd = crate::command("mesh-controller");
    cmd.env_clear()
        .env("MESH_CONTROLLER_SOURCE", format!("dir:{}", dir.display()))
        .env("MESH_CONTROLLER_DESTINATION_ADDR", destination.to_string())
        .env("MESH_CONTROLLER_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (child, line) = crate::spawn_listening(cmd, "controller").await;
    let destination = crate::field(&line, "destination");
    Controller {
        destination,
        dir: dir.to_path_buf(),
        env: env.to_vec(),
        child,
    }
}

impl Controller {
    /// Waits (at most 20 s) until the controller gives `authority` (e.g.
    /// `web.shop.svc.cluster.local:80`) an endpoint: after writing manifests, before
    /// sending traffic that needs them.
    pub async fn wait_for_endpoints(&self, authority: &str) {
        use mesh_api::destination::{
            GetDestination, destination_client::DestinationClient, update,
        };
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            let mut client = DestinationClient::connect(format!("http://{}", self.destination))
                .await
                .expect("connect to the destination service");
            let mut updates = client
                .get(GetDestination {
                    authority: authority.into(),
                    namespace: String::new(),
                    ..Default::default()
                })
                .await
                .expect("Get")
                .into_inner();
            while let Ok(Some(u)) = updates.message().await {
                if matches!(u.update, Some(update::Update::Add(a)) if !a.endpoints.is_empty()) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "the controller never gave {authority} an endpoint"
        );
    }

    /// Kills the controller and starts it again on the same address and folder.
    pub async fn restart(&mut self) {
        let _ = self.child.kill().await;
        let again = start_with(&self.dir, self.destination, &self.env).await;
        *self = again;
    }

    /// Stops the controller.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
