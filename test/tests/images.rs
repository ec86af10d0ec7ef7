//! The container images `docker/build` makes, built and run for real with podman.
//!
//! Each image holds its static binary and nothing more (the proxy's also iptables for its
//! init container), runs as its own non-root user, and the four together carry a meshed
//! call: identity issues both proxies' certificates, the controller resolves the service,
//! the proxies speak mTLS, and viz sees the secured edge. The proxy image's `init`
//! programs iptables in a network namespace the test makes, as the pod's init container.
//!
//! Needs podman (runc where cgroups are hybrid), musl-tools, the Rust target
//! x86_64-unknown-linux-musl, apt-get and dpkg-deb, iproute2 and root: `.ci/run`
//! installs them. The release build inside `docker/build` takes minutes the first time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_api::identity::dns_name;
use mesh_test::images::{IMAGES, Images, run, workspace};
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{client, controller, identity, viz};

const WEB: &str = "web.shop.svc.cluster.local";

/// Lets the images' non-root users read what the test wrote (a mounted Secret is
/// world-readable too): folders 0755, files 0644.
fn readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    set(dir, 0o755);
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            readable(&path);
        } else {
            set(&path, 0o644);
        }
    }
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("mesh-img-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
        Self(name)
    }

    /// Runs the proxy image in this namespace as the init container runs: root with
    /// NET_ADMIN and NET_RAW (and the rest of [`Images::podman_run`]'s restrictions).
    fn run_image(&self, images: &Images, entrypoint: &str, args: &[&str]) -> String {
        let out = run(Command::new("podman")
            .args(images.podman_run())
            .args([
                &format!("--network=ns:/run/netns/{}", self.0),
                "--user=0",
                "--cap-add=NET_ADMIN",
                "--cap-add=NET_RAW",
                &format!("--entrypoint={entrypoint}"),
                &images.image("proxy"),
            ])
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The nat table, as the image's own iptables reads it.
    fn nat_rules(&self, images: &Images) -> String {
        self.run_image(images, "/usr/sbin/iptables", &["-t", "nat", "-S"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), Into::into)
}

/// Image metadata and contents: the non-root user, one layer with nothing but the
/// binary (two for the proxy: iptables, then the binary), no shell.
fn check_minimal(images: &Images) {
    for (name, binary) in IMAGES {
        let user = images.inspect(name, "{{.Config.User}}");
        let expected = if name == "proxy" {
            "2102:2102"
        } else {
            "2103:2103"
        };
        assert_eq!(user, expected, "{name}: user");
        let layers: usize = images
            .inspect(name, "{{len .RootFS.Layers}}")
            .parse()
            .expect("layer count");
        let size: u64 = images.inspect(name, "{{.Size}}").parse().expect("size");
        let built = target_dir().join("images/context").join(binary);
        let bytes = std::fs::read(&built).expect("the binary");
        let binary_size = bytes.len() as u64;
        assert!(
            !bytes.windows(11).any(|w| w == b"ld-linux-x8"),
            "{binary} names a dynamic loader: not static"
        );
        eprintln!(
            "image {name}: {layers} layer(s), {:.1} MiB ({binary} {:.1} MiB)",
            size as f64 / 1048576.0,
            binary_size as f64 / 1048576.0
        );
        // The image is the binary plus, for the proxy, iptables and its libraries.
        let (want_layers, extra) = if name == "proxy" {
            (2, 16 << 20)
        } else {
            (1, 64 << 10)
        };
        assert_eq!(layers, want_layers, "{name}: layers");
        assert!(
            size <= binary_size + extra,
            "{name}: {size} bytes for a {binary_size}-byte binary"
        );
        // No shell to exec into.
        let shell = Command::new("podman")
            .args(images.podman_run())
            .args(["--entrypoint", "/bin/sh", &images.image(name), "-c", "true"])
            .output()
            .expect("podman");
        assert_eq!(
            shell.status.code(),
            Some(127),
            "{name}: /bin/sh should not exist: {}",
            String::from_utf8_lossy(&shell.stderr)
        );
        // The static binary runs as the image's user with a read-only root.
        let args: &[&str] = if name == "proxy" {
            &["init", "--help"]
        } else {
            &["--version"]
        };
        let out = run(Command::new("podman")
            .args(images.podman_run())
            .arg(images.image(name))
            .args(args));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(if name == "proxy" { "iptables" } else { binary }),
            "{name}: {text}"
        );
    }
}

/// The proxy image as the pod's init container (root, NET_ADMIN and NET_RAW, read-only
/// root) in a fresh network namespace: its own iptables sets the rules, twice alike.
fn check_init(images: &Images) {
    let ns = Netns::new();
    let init = || {
        ns.run_image(
            images,
            "/usr/local/bin/mesh-proxy",
            &[
                "init",
                "--proxy-uid",
                "2102",
                "--skip-inbound-ports",
                "4191",
            ],
        )
    };
    let printed = init();
    let rules = ns.nat_rules(images);
    for want in [
        "-N MESH_INBOUND",
        "-N MESH_OUTPUT",
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "--to-ports 4143",
        "--to-ports 4140",
        "--uid-owner 2102",
        "--dport 4191 -j RETURN",
    ] {
        assert!(
            rules.contains(want),
            "no {want:?} in\n{rules}\n(init printed:\n{printed})"
        );
    }
    init();
    assert_eq!(
        ns.nat_rules(images),
        rules,
        "a second init changed the rules"
    );
}

#[tokio::test]
async fn the_images_are_minimal_and_carry_a_meshed_call() {
    let images = Images::build("localhost/mesh-test", "test");
    check_minimal(&images);
    check_init(&images);

    // From here on the helpers start the mesh's binaries from the images.
    images.activate();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let (ca, work, world) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    identity::new_ca(ca);
    for d in [ca, work, world] {
        readable(d);
    }
    let id = identity::start(ca, None, "24h", work).await;
    let ctl = controller::start(world, "127.0.0.1:0".parse().expect("addr")).await;
    let spec = |sa, mode| PodSpec {
        identity: Some(&id),
        mode,
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), sa, "shop")
    };
    let web = Pod::start(spec("web", "strict")).await;
    let load = Pod::start(spec("load", "permissive")).await;
    mesh::write(world, "svc", &mesh::service_yaml("web", "shop"));
    mesh::write(
        world,
        "web-0",
        &mesh::pod_yaml("web-0", "shop", "web", "web", web.ip),
    );
    mesh::write(
        world,
        "load-0",
        &mesh::pod_yaml("load-0", "shop", "load", "load", load.ip),
    );
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;
    let v = viz::start(world, "300ms").await;
    v.scraped(&["web-0", "load-0"], 1).await;

    // The call goes load's proxy → (discovery, mTLS) → web's strict proxy → the app.
    let mut tx = client::h1(load.proxy.outbound).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let edge = loop {
        let rsp = client::get_on(&mut tx, WEB, "/").await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let edges = v.items("/api/edges?namespace=shop&window=10m").await;
        if let Some(e) = edges
            .iter()
            .find(|e| e["src"] == "load" && e["dst"] == "web" && e["secured"] == true)
        {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "viz never saw a secured edge load → web: {edges:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(edge["src_identity"], dns_name("load", "shop"), "{edge:#}");
    assert_eq!(edge["dst_identity"], dns_name("web", "shop"), "{edge:#}");
    let verified = web
        .proxy
        .metric(
            "request_total",
            &[
                ("direction", "inbound"),
                ("client_id", &dns_name("load", "shop")),
            ],
        )
        .await;
    assert!(verified > 0, "web's proxy verified no request from load");

    v.kill().await;
    ctl.kill().await;
    id.kill().await;
    drop((web, load));
    images.remove_containers();
}
