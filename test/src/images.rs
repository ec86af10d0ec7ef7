//! Runs the mesh's binaries from their container images (built by `docker/build`) instead
//! of from `target/`, with podman: once [`Images::activate`] was called, [`crate::command`]
//! starts `mesh-proxy`, `mesh-identity`, `mesh-controller` and `mesh-viz` as containers.
//!
//! Containers share the host's network (tests talk to loopback), see the host's temporary
//! folder read-only at the same path (so paths in their environment stay valid), run
//! with a read-only root, no capabilities and the image's own non-root user, as the
//! manifests `mesh install` and `mesh inject` write ask of a cluster.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The four images and the binary each runs.
pub const IMAGES: [(&str, &str); 4] = [
    ("proxy", "mesh-proxy"),
    ("identity", "mesh-identity"),
    ("controller", "mesh-controller"),
    ("viz", "mesh-viz"),
];

static ACTIVE: OnceLock<Images> = OnceLock::new();

/// The label on every container the tests start: one test process runs images at a
/// time, and what a killed run left behind is removed by the next.
const LABEL: &str = "mesh-test=images";

/// Images built under `registry` with `tag`, and how to run them here.
#[derive(Clone, Debug)]
pub struct Images {
    /// The image name prefix, e.g. `localhost/mesh-test`.
    pub registry: String,
    /// The images' tag.
    pub tag: String,
    label: String,
    host_args: Vec<String>,
}

/// Runs `cmd`, panicking with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The workspace's root folder.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

impl Images {
    /// Builds the four images with `docker/build --engine podman` (a static release build
    /// of the binaries first, so this takes minutes the first time).
    pub fn build(registry: &str, tag: &str) -> Self {
        run(Command::new(workspace().join("docker/build"))
            .args(["--engine", "podman", "--registry", registry, "--tag", tag])
            .current_dir(workspace()));
        let images = Self {
            registry: registry.into(),
            tag: tag.into(),
            label: LABEL.into(),
            host_args: host_args(),
        };
        images.remove_containers();
        images
    }

    /// The reference of image `name` (`proxy`, `identity`, …).
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}:{}", self.registry, self.tag)
    }

    /// `podman image inspect --format FORMAT` of image `name`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        let out = run(Command::new("podman").args([
            "image",
            "inspect",
            "--format",
            format,
            &self.image(name),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman run` as the mesh's manifests run containers (read-only root without
    /// podman's writable tmpfs mounts, no capabilities, no privilege escalation) with
    /// this machine's settings, labelled for [`Self::remove_containers`]; add options
    /// (e.g. `--cap-add`), then the image and its arguments.
    pub fn podman_run(&self) -> Vec<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mesh-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut args: Vec<String> = ["run", "--rm", "--name", &name, "--label", &self.label]
            .map(String::from)
            .into();
        args.extend(
            [
                "--read-only",
                "--read-only-tmpfs=false",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
            ]
            .map(String::from),
        );
        args.extend(self.host_args.iter().cloned());
        args
    }

    /// From now on, [`crate::command`] runs the mesh's binaries from these images.
    pub fn activate(&self) {
        assert!(
            ACTIVE.set(self.clone()).is_ok(),
            "images already activated in this test process"
        );
    }

    /// The command that runs binary `name` in its image, or `None` if it has none.
    fn command(&self, name: &str) -> Option<tokio::process::Command> {
        let (image, _) = IMAGES.iter().find(|(_, b)| *b == name)?;
        let tmp = std::env::temp_dir();
        let tmp = tmp.display();
        let mut cmd = tokio::process::Command::new("podman");
        cmd.args(self.podman_run()).args([
            "--network=host",
            // The command's own environment (set by the caller) goes into the container.
            "--env-host",
            &format!("--volume={tmp}:{tmp}:ro"),
            &self.image(image),
        ]);
        Some(cmd)
    }

    /// Removes every container this test process started (also those still running).
    pub fn remove_containers(&self) {
        let out = run(Command::new("podman").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={}", self.label),
        ]));
        let ids = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0"])
                .args(&ids)
                .output();
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        self.remove_containers();
    }
}

/// The active images' command for binary `name`, if images are active and it has one.
pub(crate) fn command(name: &str) -> Option<tokio::process::Command> {
    ACTIVE.get().and_then(|images| images.command(name))
}

/// Options this machine needs: podman asks for rlimits above the hard limits a sandbox
/// may set (the container gets the current ones), and crun cannot run on hosts with
/// hybrid cgroups, which runc can.
fn host_args() -> Vec<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut args = Vec::new();
    if let Some(n) = hard("Max open files") {
        args.push(format!("--ulimit=nofile={n}:{n}"));
    }
    if let Some(n) = hard("Max processes") {
        let n = n.min(4096);
        args.push(format!("--ulimit=nproc={n}:{n}"));
    }
    let hybrid = Path::new("/sys/fs/cgroup/unified").exists();
    if hybrid && Command::new("runc").arg("--version").output().is_ok() {
        args.push("--runtime=runc".into());
    }
    args
}
