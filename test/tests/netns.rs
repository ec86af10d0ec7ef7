//! Inbound traffic redirected by real iptables reaches the proxy, which recovers each
//! connection's original destination (SO_ORIGINAL_DST) and forwards there.
//!
//! Each test makes two network namespaces joined by a veth pair: a "client" host and a
//! "pod". The first redirects two ports by hand; the second runs `mesh-proxy init`
//! itself and checks both directions. The proxy is given no application address, so a
//! request can only arrive if the original destination was recovered. Needs root,
//! iproute2 and iptables (`.ci/run` installs them).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A network namespace, deleted (with its processes' sockets) when dropped.
struct Netns {
    name: String,
    children: Vec<Child>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2/iptables installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("mesh-{}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self {
            name,
            children: Vec::new(),
        };
        ns.sh("ip link set lo up");
        ns
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(&run(self.cmd("sh").args(["-c", script])).stdout).into_owned()
    }

    fn spawn(&mut self, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn iptables_redirected_inbound_reaches_the_original_destination() {
    let mut pod = Netns::new("pod");
    let client = Netns::new("cli");
    let (veth_pod, veth_cli) = (
        format!("mp{}", std::process::id()),
        format!("mc{}", std::process::id()),
    );
    run(Command::new("ip").args([
        "link", "add", &veth_pod, "type", "veth", "peer", "name", &veth_cli,
    ]));
    run(Command::new("ip").args(["link", "set", &veth_pod, "netns", &pod.name]));
    run(Command::new("ip").args(["link", "set", &veth_cli, "netns", &client.name]));
    pod.sh(&format!(
        "ip addr add 10.251.0.2/30 dev {veth_pod} && ip link set {veth_pod} up"
    ));
    client.sh(&format!(
        "ip addr add 10.251.0.1/30 dev {veth_cli} && ip link set {veth_cli} up"
    ));
    for port in [8080, 7777] {
        pod.sh(&format!(
            "iptables -t nat -A PREROUTING -p tcp --dport {port} -j REDIRECT --to-ports 4143"
        ));
    }

    let mut app = pod.cmd(
        mesh_test::bin_path("mesh-sample-app")
            .to_str()
            .expect("path"),
    );
    app.args(["--http", "0.0.0.0:8080", "--tcp-echo", "0.0.0.0:7777"]);
    pod.spawn(app);
    let mut proxy = pod.cmd(mesh_test::bin_path("mesh-proxy").to_str().expect("path"));
    proxy
        .env_clear()
        .env("MESH_PROXY_INBOUND_ADDR", "0.0.0.0:4143")
        .env("MESH_PROXY_ADMIN_ADDR", "0.0.0.0:4191")
        .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
    pod.spawn(proxy);

    // HTTP to the app's address and port: redirected, then forwarded to 10.251.0.2:8080.
    let rsp = eventually("HTTP through the redirect", || {
        let out = client
            .cmd("curl")
            .args(["-s", "-m", "5", "http://10.251.0.2:8080/headers"])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.contains("host: 10.251.0.2:8080").then_some(body)
    });
    assert!(rsp.contains("user-agent: curl"), "{rsp}");

    // Opaque TCP to another port: the original destination's port is kept too.
    let script = "exec 3<>/dev/tcp/10.251.0.2/7777; printf '\\026\\003 ping' >&3; timeout 5 head -c 7 <&3 | od -An -c";
    let echoed =
        String::from_utf8_lossy(&run(client.cmd("bash").args(["-c", script])).stdout).into_owned();
    assert!(echoed.contains("p   i   n   g"), "{echoed}");

    // The proxy saw both, inbound.
    let metrics = client.sh("curl -s -m 5 http://10.251.0.2:4191/metrics");
    let requests =
        mesh_test::proxy::sum_metric(&metrics, "request_total", &[("direction", "inbound")]);
    assert_eq!(requests, 1, "{metrics}");
    let opened = mesh_test::proxy::sum_metric(
        &metrics,
        "tcp_open_total",
        &[("direction", "inbound"), ("peer", "src")],
    );
    assert_eq!(opened, 2, "{metrics}");
}

/// `mesh-proxy init` in a real network namespace: a plain `curl` into the pod and a
/// plain `curl` out of it both go through the proxy (running as its own UID, which
/// iptables lets through), each to its original destination; init is idempotent.
#[test]
fn mesh_proxy_init_sends_a_pods_traffic_through_the_proxy() {
    let mut pod = Netns::new("ipod");
    let mut client = Netns::new("icli");
    let (veth_pod, veth_cli) = (
        format!("ip{}", std::process::id()),
        format!("ic{}", std::process::id()),
    );
    run(Command::new("ip").args([
        "link", "add", &veth_pod, "type", "veth", "peer", "name", &veth_cli,
    ]));
    run(Command::new("ip").args(["link", "set", &veth_pod, "netns", &pod.name]));
    run(Command::new("ip").args(["link", "set", &veth_cli, "netns", &client.name]));
    pod.sh(&format!(
        "ip addr add 10.252.0.2/30 dev {veth_pod} && ip link set {veth_pod} up"
    ));
    client.sh(&format!(
        "ip addr add 10.252.0.1/30 dev {veth_cli} && ip link set {veth_cli} up"
    ));

    let proxy_bin = mesh_test::bin_path("mesh-proxy");
    let proxy_bin = proxy_bin.to_str().expect("path");
    let init = format!("{proxy_bin} init --proxy-uid 2102 --skip-inbound-ports 4191");
    let printed = pod.sh(&init);
    assert!(
        printed.contains("-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143")
            && printed.contains("-A MESH_OUTPUT -m owner --uid-owner 2102 -j RETURN"),
        "{printed}"
    );
    let rules = pod.sh("iptables-save -t nat | grep -c '^-A'");
    pod.sh(&init);
    assert_eq!(
        pod.sh("iptables-save -t nat | grep -c '^-A'"),
        rules,
        "init is not idempotent"
    );

    let app = mesh_test::bin_path("mesh-sample-app");
    let app = app.to_str().expect("path");
    let mut cmd = pod.cmd(app);
    cmd.args(["--http", "0.0.0.0:8080"]);
    pod.spawn(cmd);
    let mut cmd = client.cmd(app);
    cmd.args(["--http", "0.0.0.0:9090"]);
    client.spawn(cmd);
    // The proxy runs as UID 2102, as the injected sidecar does.
    let mut proxy = pod.cmd("setpriv");
    proxy
        .args([
            "--reuid",
            "2102",
            "--regid",
            "2102",
            "--clear-groups",
            proxy_bin,
        ])
        .env_clear()
        .env("MESH_PROXY_INBOUND_ADDR", "0.0.0.0:4143")
        .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")
        .env("MESH_PROXY_ADMIN_ADDR", "0.0.0.0:4191")
        .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
    pod.spawn(proxy);

    // In: the client's plain curl to the app reaches it through the proxy.
    let body = eventually("inbound through the proxy", || {
        let out = client
            .cmd("curl")
            .args(["-s", "-m", "5", "http://10.252.0.2:8080/headers"])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.contains("host: 10.252.0.2:8080").then_some(body)
    });
    assert!(body.contains("user-agent: curl"), "{body}");
    // Out: the pod's plain curl to another host goes through the proxy too.
    let out = run(pod
        .cmd("curl")
        .args(["-s", "-m", "5", "http://10.252.0.1:9090/"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    // The admin port is skipped: reachable directly. The proxy saw both requests.
    let metrics = client.sh("curl -s -m 5 http://10.252.0.2:4191/metrics");
    for direction in ["inbound", "outbound"] {
        assert_eq!(
            mesh_test::proxy::sum_metric(&metrics, "request_total", &[("direction", direction)]),
            1,
            "{direction}: {metrics}"
        );
    }
    drop(client);
}
