//! mesh-test: the harness for end-to-end tests that start the real `mesh-proxy` binary
//! beside real backends on loopback, plus the load generator and benchmark binaries.
//!
//! ```ignore
//! let app = backend::http().await;
//! let proxy = proxy::new().app(app.addr).run().await;
//! let rsp = client::get(proxy.outbound, &app.authority(), "/echo").await;
//! ```

pub mod backend;
pub mod chaos;
pub mod client;
pub mod collector;
pub mod controller;
pub mod fuzz;
pub mod grpc;
pub mod identity;
pub mod images;
pub mod load;
pub mod mesh;
pub mod procfs;
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

/// A command that runs the workspace binary `name`: from `target/` (see [`bin_path`]), or
/// from its container image once [`images::Images::activate`] was called.
pub fn command(name: &str) -> tokio::process::Command {
    images::command(name).unwrap_or_else(|| tokio::process::Command::new(bin_path(name)))
}

/// Spawns `cmd` (stderr piped, killed on drop), echoes its log prefixed with `tag`, and
/// waits at most 30 s for the line announcing it listens; returns the child and that line.
pub async fn spawn_listening(
    mut cmd: tokio::process::Command,
    tag: &'static str,
) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tag}: {e}"));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
            if line.contains("listening") {
                return Some(line);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("{tag} did not start within 30s"))
    .unwrap_or_else(|| panic!("{tag} exited before listening"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
        }
    });
    (child, line)
}

/// The address after `name=` in a log line.
pub fn field(line: &str, name: &str) -> std::net::SocketAddr {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + name.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no address after {name}= in {line:?}"))
}
