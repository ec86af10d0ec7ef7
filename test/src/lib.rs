//! mesh-test: the harness for end-to-end tests that start the real `mesh-proxy` binary
//! beside real backends on loopback, plus the load generator and benchmark binaries.
//!
//! ```ignore
//! let app = backend::http().await;
//! let proxy = proxy::new().app(app.addr).run().await;
//! let rsp = client::get(proxy.outbound, &app.authority(), "/echo").await;
//! ```

pub mod backend;
pub mod client;
pub mod controller;
pub mod grpc;
pub mod identity;
pub mod load;
pub mod mesh;
pub mod proxy;
pub mod viz;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, for at most `patience`; panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the workspace's binaries are: `MESH_BIN_DIR`, else beside this executable
/// (`target/<profile>/`, one level up from `deps/` for test binaries).
pub fn bin_path(name: &str) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR") {
        return std::path::Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build -p mesh-proxy, or run the whole `cargo test --workspace`)",
        path.display()
    );
    path
}
