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

    /// The proxy as an injected sidecar runs it: as UID 2102 (which `init`'s rules let
    /// through), inbound on 4143, outbound on 127.0.0.1:4140, admin on 4191.
    fn sidecar(&self, proxy_bin: &str) -> Command {
        let mut proxy = self.cmd("setpriv");
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
            .env("MESH_PROXY_ADMIN_ADDR", "0.0.0.0:4191");
        proxy
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

    // Tap on the admin port is for the pod's own processes: another host gets 403, the
    // pod's loopback the stream (cut by curl's timeout after its 200).
    let outside =
        client.sh("curl -s -o /dev/null -w '%{http_code}' -m 5 http://10.251.0.2:4191/tap");
    assert_eq!(outside, "403");
    let inside =
        pod.sh("curl -s -o /dev/null -w '%{http_code}' -m 1 http://127.0.0.1:4191/tap || true");
    assert_eq!(inside, "200");
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
    let mut proxy = pod.sidecar(proxy_bin);
    proxy.env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
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

/// A process in `ns` from a folder the proxies' UID can read.
fn in_ns(ns: &Netns, program: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(program)
        .kill_on_drop(true);
    cmd
}

/// Makes `path` (and what is in it) readable by the proxies' own UID.
fn readable(path: &std::path::Path) {
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(path));
}

/// Opaque TCP between two meshed pods, each with `mesh-proxy init`'s iptables: the
/// client's bytes go to its proxy, which learns from the controller that the address
/// is a meshed pod and carries them over mTLS to the peer's proxy (its inbound port,
/// the target port in a transport header); the peer's proxy authenticates the client
/// and forwards to its app. The port is strict: a plaintext client is refused. A
/// Server and AuthorizationPolicy then decide who may connect; a denied client's
/// connection is closed at once.
#[tokio::test]
async fn opaque_tcp_between_meshed_pods_rides_mtls_through_strict_ports() {
    let ctl = Netns::new("octl");
    let mut client = Netns::new("ocli");
    let mut db = Netns::new("odb");
    let pid = std::process::id();
    for (ns, side, net) in [(&client, "oc", "10.253.1"), (&db, "od", "10.253.2")] {
        let (outer, inner) = (format!("{side}r{pid}"), format!("{side}p{pid}"));
        run(Command::new("ip").args([
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]));
        run(Command::new("ip").args(["link", "set", &outer, "netns", &ctl.name]));
        run(Command::new("ip").args(["link", "set", &inner, "netns", &ns.name]));
        ctl.sh(&format!(
            "ip addr add {net}.1/24 dev {outer} && ip link set {outer} up"
        ));
        ns.sh(&format!(
            "ip addr add {net}.2/24 dev {inner} && ip link set {inner} up && ip route add default via {net}.1"
        ));
    }
    ctl.sh("sysctl -q -w net.ipv4.ip_forward=1");

    // The control plane, in the router namespace.
    let work = tempfile::tempdir().expect("tmp");
    let ca = work.path().join("ca");
    std::fs::create_dir(&ca).expect("ca dir");
    mesh_test::identity::new_ca(&ca);
    let mut tokens = String::from("tokens:\n");
    for (sa, ns) in [("client", "shop"), ("db", "shop")] {
        std::fs::write(
            work.path().join(format!("{sa}.token")),
            format!("{sa}-token"),
        )
        .expect("token");
        tokens.push_str(&format!(
            "- {{token: {sa}-token, namespace: {ns}, serviceAccount: {sa}}}\n"
        ));
    }
    std::fs::write(work.path().join("tokens.yaml"), tokens).expect("tokens");
    let mut identity = in_ns(&ctl, &mesh_test::bin_path("mesh-identity"));
    identity
        .env_clear()
        .env("MESH_IDENTITY_ADDR", "0.0.0.0:0")
        .env("MESH_IDENTITY_ADMIN_ADDR", "0.0.0.0:0")
        .env("MESH_IDENTITY_ISSUER_DIR", &ca)
        .env(
            "MESH_IDENTITY_TRUST_ANCHORS",
            ca.join(mesh_identity::ca::TRUST_ANCHORS_FILE),
        )
        .env(
            "MESH_IDENTITY_TOKENS",
            format!("file:{}", work.path().join("tokens.yaml").display()),
        )
        .env("MESH_IDENTITY_LOG", "info");
    let (_identity, line) = mesh_test::spawn_listening(identity, "identity").await;
    let identity_port = mesh_test::field(&line, "identity").port();
    let objects = work.path().join("objects");
    std::fs::create_dir(&objects).expect("objects dir");
    let world = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {mesh.io/inject: enabled}}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: client-0, namespace: shop, labels: {app: client}}\n\
        spec: {serviceAccountName: client, containers: [{name: app, image: x}]}\nstatus: {podIP: 10.253.1.2}\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: shop, labels: {app: db}, annotations: \
        {config.linkerd.io/opaque-ports: \"5432\", config.mesh.io/inbound-tls: strict}}\n\
        spec: {serviceAccountName: db, containers: [{name: app, image: x}]}\nstatus: {podIP: 10.253.2.2}\n";
    mesh_test::mesh::write(&objects, "world", world);
    let mut controller = in_ns(&ctl, &mesh_test::bin_path("mesh-controller"));
    controller
        .env_clear()
        .env(
            "MESH_CONTROLLER_SOURCE",
            format!("dir:{}", objects.display()),
        )
        .env("MESH_CONTROLLER_DESTINATION_ADDR", "0.0.0.0:0")
        .env("MESH_CONTROLLER_LOG", "info");
    let (_controller, line) = mesh_test::spawn_listening(controller, "controller").await;
    let destination_port = mesh_test::field(&line, "destination").port();
    readable(work.path());

    // The pods: init's iptables, the proxy as its own UID, the apps.
    let proxy_bin = mesh_test::bin_path("mesh-proxy");
    let proxy_bin = proxy_bin.to_str().expect("path");
    for (ns, pod, sa, net) in [
        (&mut client, "client-0", "client", "10.253.1"),
        (&mut db, "db-0", "db", "10.253.2"),
    ] {
        ns.sh(&format!(
            "{proxy_bin} init --proxy-uid 2102 --skip-inbound-ports 4191"
        ));
        let mut proxy = ns.sidecar(proxy_bin);
        proxy
            .env(
                "MESH_PROXY_IDENTITY_ADDR",
                format!("{net}.1:{identity_port}"),
            )
            .env(
                "MESH_PROXY_IDENTITY_NAME",
                mesh_api::identity::dns_name(sa, "shop"),
            )
            .env(
                "MESH_PROXY_TRUST_ANCHORS",
                ca.join(mesh_identity::ca::TRUST_ANCHORS_FILE),
            )
            .env(
                "MESH_PROXY_TOKEN_PATH",
                work.path().join(format!("{sa}.token")),
            )
            .env("MESH_PROXY_NAMESPACE", "shop")
            .env("MESH_PROXY_POD_NAME", pod)
            .env(
                "MESH_PROXY_DESTINATION_ADDR",
                format!("{net}.1:{destination_port}"),
            )
            .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
        ns.spawn(proxy);
    }
    let mut echo = db.cmd(
        mesh_test::bin_path("mesh-sample-app")
            .to_str()
            .expect("path"),
    );
    echo.args(["--tcp-echo", "0.0.0.0:5432"]);
    db.spawn(echo);
    for ip in ["10.253.1.2", "10.253.2.2"] {
        eventually("the proxy ready", || {
            let out = ctl
                .cmd("curl")
                .args(["-s", "-m", "2", &format!("http://{ip}:4191/ready")])
                .output()
                .ok()?;
            out.status.success().then_some(String::new())
        });
    }

    // `ping` to the db's address from its app (redirected): echoed back.
    let ping = |ns: &Netns| {
        let script =
            "exec 3<>/dev/tcp/10.253.2.2/5432 || exit 0; printf ping >&3; timeout 5 head -c 4 <&3";
        String::from_utf8_lossy(
            &ns.cmd("bash")
                .args(["-c", script])
                .output()
                .expect("bash")
                .stdout,
        )
        .into_owned()
    };
    eventually("opaque TCP over mTLS", || {
        (ping(&client) == "ping").then_some(String::new())
    });
    let metrics = ctl.sh("curl -s -m 5 http://10.253.2.2:4191/metrics");
    let secured = mesh_test::proxy::sum_metric(
        &metrics,
        "tcp_open_total",
        &[("direction", "inbound"), ("peer", "src"), ("tls", "true")],
    );
    assert!(secured >= 1, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("inbound_tcp_authz_allow_total")
                && l.contains(
                    "client_id=\"client.shop.serviceaccount.identity.mesh.cluster.local\""
                )),
        "{metrics}"
    );
    // The router's plaintext client: the strict port refuses it.
    assert_eq!(ping(&ctl), "", "plaintext to a strict port");

    // A Server with the default access policy (deny): the client is closed at once.
    let server = "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\n\
        metadata: {name: db, namespace: shop}\n\
        spec: {podSelector: {matchLabels: {app: db}}, port: 5432, proxyProtocol: opaque}\n";
    let file = mesh_test::mesh::write(&objects, "policy", server);
    readable(work.path());
    eventually("the Server denies", || {
        ping(&client).is_empty().then_some(String::new())
    });
    let metrics = ctl.sh("curl -s -m 5 http://10.253.2.2:4191/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("inbound_tcp_authz_deny_total")),
        "{metrics}"
    );
    // Authorized by identity: through again.
    mesh_test::mesh::replace(
        &file,
        &format!(
            "{server}---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: db-clients, namespace: shop}}\n\
             spec:\n  targetRef: {{group: policy.linkerd.io, kind: Server, name: db}}\n  \
             requiredAuthenticationRefs: [{{kind: ServiceAccount, name: client}}]\n"
        ),
    );
    readable(work.path());
    eventually("the client is authorized", || {
        (ping(&client) == "ping").then_some(String::new())
    });
    drop(client);
}

/// A DestinationRule's `loadBalancer.simple: PASSTHROUGH`: a request naming a Service
/// goes where its connection was going (the original destination iptables recovered),
/// not to an endpoint the balancer picks. The client pod runs `mesh-proxy init`; the
/// Service's two pods (and an address that is no pod of it) live in the router
/// namespace, each answering with its address (`x-served-by`).
#[tokio::test]
async fn passthrough_sends_a_request_to_its_connections_original_destination() {
    let mut ctl = Netns::new("pctl");
    let mut client = Netns::new("pcli");
    let pid = std::process::id();
    let (outer, inner) = (format!("pr{pid}"), format!("pp{pid}"));
    run(Command::new("ip").args([
        "link", "add", &outer, "type", "veth", "peer", "name", &inner,
    ]));
    run(Command::new("ip").args(["link", "set", &outer, "netns", &ctl.name]));
    run(Command::new("ip").args(["link", "set", &inner, "netns", &client.name]));
    ctl.sh(&format!(
        "ip addr add 10.254.1.1/24 dev {outer} && ip link set {outer} up && \
         for a in 2 3 4; do ip addr add 10.254.2.$a/32 dev lo; done"
    ));
    client.sh(&format!(
        "ip addr add 10.254.1.2/24 dev {inner} && ip link set {inner} up && ip route add default via 10.254.1.1"
    ));

    // The Service's pods and a stranger, all one app on three addresses.
    let mut app = ctl.cmd(
        mesh_test::bin_path("mesh-sample-app")
            .to_str()
            .expect("path"),
    );
    for a in 2..=4 {
        app.args(["--http", &format!("10.254.2.{a}:8080")]);
    }
    ctl.spawn(app);
    let work = tempfile::tempdir().expect("tmp");
    let objects = work.path().join("objects");
    std::fs::create_dir(&objects).expect("objects dir");
    let mut world = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n\
         spec: {selector: {app: reviews}, ports: [{port: 8080, targetPort: 8080}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client-0, namespace: shop, labels: {app: client}}\n\
         spec: {containers: [{name: app, image: x}]}\nstatus: {podIP: 10.254.1.2}\n",
    );
    for a in 2..=3 {
        world.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-{a}, namespace: shop, labels: {{app: reviews}}}}\n\
             spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: 10.254.2.{a}}}\n"
        ));
    }
    mesh_test::mesh::write(&objects, "world", &world);
    let mut controller = in_ns(&ctl, &mesh_test::bin_path("mesh-controller"));
    controller
        .env_clear()
        .env(
            "MESH_CONTROLLER_SOURCE",
            format!("dir:{}", objects.display()),
        )
        .env("MESH_CONTROLLER_DESTINATION_ADDR", "0.0.0.0:0")
        .env("MESH_CONTROLLER_LOG", "info");
    let (_controller, line) = mesh_test::spawn_listening(controller, "controller").await;
    let destination_port = mesh_test::field(&line, "destination").port();

    // The client pod: init's iptables and the proxy as its own UID.
    let proxy_bin = mesh_test::bin_path("mesh-proxy");
    let proxy_bin = proxy_bin.to_str().expect("path");
    client.sh(&format!(
        "{proxy_bin} init --proxy-uid 2102 --skip-inbound-ports 4191"
    ));
    let mut proxy = client.sidecar(proxy_bin);
    proxy
        .env("MESH_PROXY_NAMESPACE", "shop")
        .env("MESH_PROXY_POD_NAME", "client-0")
        .env(
            "MESH_PROXY_DESTINATION_ADDR",
            format!("10.254.1.1:{destination_port}"),
        )
        .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
    client.spawn(proxy);

    // Who answers ten requests naming the Service, each on a connection to `ip`.
    let served = |ip: &str| {
        let script = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do curl -s -m 5 -o /dev/null -D - \
             -H 'host: reviews.shop.svc.cluster.local:8080' http://{ip}:8080/ \
             | tr -d '\\r' | sed -n 's/^x-served-by: //p'; done | sort | uniq -c | tr -s ' ' | tr '\\n' ','"
        );
        client.sh(&script)
    };
    // Balanced first: a connection to one pod reaches both.
    eventually("the Service balanced over both pods", || {
        let seen = served("10.254.2.3");
        (seen.contains("10.254.2.2") && seen.contains("10.254.2.3")).then_some(seen)
    });
    // PASSTHROUGH: each connection's own destination, whatever the name says.
    mesh_test::mesh::write(
        &objects,
        "rule",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\n\
         spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}\n",
    );
    eventually("passthrough to the original destination", || {
        let seen = served("10.254.2.3");
        (seen.trim() == "10 10.254.2.3,").then_some(seen)
    });
    assert_eq!(served("10.254.2.2").trim(), "10 10.254.2.2,");
    // An address that is no pod of the Service: still where the connection went.
    assert_eq!(served("10.254.2.4").trim(), "10 10.254.2.4,");
    // The proxy handled them all, outbound, under the Service's name.
    let metrics = ctl.sh("curl -s -m 5 http://10.254.1.2:4191/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("request_total")
            && l.contains("direction=\"outbound\"")
            && l.contains("reviews.shop.svc.cluster.local:8080")),
        "{metrics}"
    );
    drop(client);
}
