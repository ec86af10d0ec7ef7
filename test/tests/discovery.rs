//! Proxies route by what the destination service says: a client proxy follows a
//! service as its pods come and go in the controller's folder, reaches each pod through
//! that pod's own inbound proxy (local mode: its own loopback address, port 4143, the
//! target port passed along), and keeps routing on the last answer when the controller
//! goes away. Requests keep succeeding throughout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use mesh_test::{client, controller, proxy};

/// A local "pod": the sample app on its own loopback address behind its own proxy.
struct Pod {
    ip: IpAddr,
    _app: tokio::process::Child,
    proxy: proxy::Proxy,
}

/// Loopback addresses unlikely to collide with another test process's.
fn pod_ip(n: u8) -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let block = (std::process::id() % 200) as u8 + 20;
    IpAddr::V4(Ipv4Addr::new(
        127,
        block,
        NEXT.fetch_add(1, Ordering::SeqCst),
        n,
    ))
}

async fn pod(ip: IpAddr) -> Pod {
    let app = tokio::process::Command::new(mesh_test::bin_path("mesh-sample-app"))
        .args(["--http", &SocketAddr::new(ip, 8080).to_string()])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sample app");
    let proxy = proxy::new()
        .env("INBOUND_ADDR", SocketAddr::new(ip, 4143))
        .run()
        .await;
    mesh_test::eventually("the app listening", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(SocketAddr::new(ip, 8080))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    Pod {
        ip,
        _app: app,
        proxy,
    }
}

fn write_pod(dir: &Path, name: &str, ip: IpAddr) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: web}}\n\
         spec:\n  serviceAccountName: web\n  containers: [{{name: app, image: x}}]\nstatus: {{podIP: \"{ip}\"}}\n"
    );
    mesh_test::mesh::replace(&dir.join(format!("{name}.yaml")), &yaml);
}

async fn inbound_requests(pod: &Pod) -> u64 {
    pod.proxy
        .metric("request_total", &[("direction", "inbound")])
        .await
}

#[tokio::test]
async fn a_proxy_follows_a_service_through_scaling_and_controller_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("base.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {mesh.io/inject: enabled}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .expect("write");
    let a = pod(pod_ip(1)).await;
    write_pod(dir.path(), "web-a", a.ip);
    // A fixed address, so that a restarted controller is found where the first one was.
    let ctl_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let ctl = controller::start(dir.path(), ctl_addr).await;
    let client_proxy = proxy::new()
        .env("DESTINATION_ADDR", ctl.destination)
        .env("NAMESPACE", "shop")
        .run()
        .await;

    let host = "web.shop.svc.cluster.local";
    let get = || client::get(client_proxy.outbound, host, "/");
    let rsp = get().await;
    assert_eq!(
        (rsp.status.as_u16(), rsp.text().as_str()),
        (200, "hello"),
        "{:?}",
        rsp.headers
    );
    assert_eq!(
        inbound_requests(&a).await,
        1,
        "the request did not go through the pod's proxy"
    );
    // Short names resolve in the proxy's own namespace.
    assert_eq!(
        client::get(client_proxy.outbound, "web", "/").await.status,
        200
    );

    // Scale up: the new pod gets traffic within a second or so; nothing fails.
    let b = pod(pod_ip(2)).await;
    write_pod(dir.path(), "web-b", b.ip);
    mesh_test::eventually(
        "traffic on the new pod",
        Duration::from_secs(10),
        || async {
            assert_eq!(get().await.status, 200);
            (inbound_requests(&b).await > 0).then_some(())
        },
    )
    .await;

    // A pod dies before the folder says so: its connects are refused, nothing was
    // sent, and the request goes to the other pod.
    let a_inbound = a.proxy.inbound;
    drop(a);
    mesh_test::eventually("pod a gone", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(a_inbound)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get().await.status, 200);
    }
    // Then the folder catches up.
    std::fs::remove_file(dir.path().join("web-a.yaml")).expect("rm");
    for _ in 0..20 {
        assert_eq!(get().await.status, 200);
    }

    // The controller goes away: the last answer stands.
    ctl.kill().await;
    for _ in 0..20 {
        assert_eq!(get().await.status, 200);
    }
    // A new controller, on the same address, and the proxy reconnects to it.
    let ctl = controller::start(dir.path(), ctl_addr).await;
    let c = pod(pod_ip(3)).await;
    write_pod(dir.path(), "web-c", c.ip);
    mesh_test::eventually(
        "traffic on a pod added after the restart",
        Duration::from_secs(15),
        || async {
            assert_eq!(get().await.status, 200);
            (inbound_requests(&c).await > 0).then_some(())
        },
    )
    .await;
    drop(ctl);
}

#[tokio::test]
async fn names_the_controller_does_not_know_still_resolve_by_dns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let app = mesh_test::backend::http().await;
    let p = proxy::new()
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    let rsp = client::get(p.outbound, &format!("localhost:{}", app.addr.port()), "/").await;
    assert_eq!(rsp.status, 200);
    // No controller at all: DNS, without waiting long.
    drop(ctl);
    let p = proxy::new()
        .env("DESTINATION_ADDR", "127.0.0.1:9")
        .run()
        .await;
    let rsp = client::get(p.outbound, &app.authority(), "/").await;
    assert_eq!(rsp.status, 200);
}

/// Requests answered by each pod's inbound proxy so far.
async fn counts(pods: &[&Pod]) -> Vec<u64> {
    let mut out = Vec::new();
    for p in pods {
        out.push(inbound_requests(p).await);
    }
    out
}

#[tokio::test]
async fn a_traffic_split_is_followed_and_reweighted_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples");
    let split =
        std::fs::read_to_string(format!("{examples}/trafficsplit-web-svc.yaml")).expect("example");
    let services: String = [
        ("web-svc", "web-svc"),
        ("web-svc-v1", "web-v1"),
        ("web-svc-v2", "web-v2"),
    ]
    .iter()
    .map(|(name, app)| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
                 spec: {{selector: {{app: {app}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        )
    })
    .collect();
    std::fs::write(
        dir.path().join("base.yaml"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: default, annotations: {{linkerd.io/inject: enabled}}}}\n{services}"),
    )
    .expect("write");
    let (v1, v2) = (pod(pod_ip(1)).await, pod(pod_ip(2)).await);
    for (name, app, ip) in [("v1", "web-v1", v1.ip), ("v2", "web-v2", v2.ip)] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
             spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).expect("write");
    }
    std::fs::write(dir.path().join("split.yaml"), &split).expect("write");
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client_proxy = proxy::new()
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    let send = |n: usize| {
        let outbound = client_proxy.outbound;
        async move {
            let mut tx = client::h1(outbound).await;
            for _ in 0..n {
                let rsp = client::get_on(&mut tx, "web-svc.default.svc.cluster.local", "/").await;
                assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
            }
        }
    };
    let share = |before: &[u64], after: &[u64]| {
        let (a, b) = ((after[0] - before[0]) as f64, (after[1] - before[1]) as f64);
        a / (a + b)
    };

    // The example as written: 500 / 500.
    let before = counts(&[&v1, &v2]).await;
    send(400).await;
    let s = share(&before, &counts(&[&v1, &v2]).await);
    assert!(
        (0.4..=0.6).contains(&s),
        "v1 got {s:.2} of traffic under a 500/500 split"
    );

    // Reweighted to 800 / 200 while requests flow: none fails.
    mesh_test::mesh::replace(
        &dir.path().join("split.yaml"),
        &split.replace(
            "weight: 500\n  - service: web-svc-v2\n    weight: 500",
            "weight: 800\n  - service: web-svc-v2\n    weight: 200",
        ),
    );
    mesh_test::eventually(
        "the reweight to reach the proxy",
        Duration::from_secs(15),
        || async {
            let before = counts(&[&v1, &v2]).await;
            send(200).await;
            (share(&before, &counts(&[&v1, &v2]).await) > 0.7).then_some(())
        },
    )
    .await;
    let before = counts(&[&v1, &v2]).await;
    send(1000).await;
    let s = share(&before, &counts(&[&v1, &v2]).await);
    assert!(
        (0.75..=0.85).contains(&s),
        "v1 got {s:.3} of traffic under an 800/200 split"
    );

    // A zero weight gets nothing.
    mesh_test::mesh::replace(
        &dir.path().join("split.yaml"),
        &split.replace(
            "weight: 500\n  - service: web-svc-v2\n    weight: 500",
            "weight: 1\n  - service: web-svc-v2\n    weight: 0",
        ),
    );
    mesh_test::eventually(
        "the zero weight to reach the proxy",
        Duration::from_secs(15),
        || async {
            let before = counts(&[&v1, &v2]).await;
            send(100).await;
            (counts(&[&v1, &v2]).await[1] == before[1]).then_some(())
        },
    )
    .await;
    let before = counts(&[&v1, &v2]).await;
    send(300).await;
    let after = counts(&[&v1, &v2]).await;
    assert_eq!(after[1], before[1], "a backend of weight 0 got traffic");
}

/// Watches held for `kind` (`destination` or `policy`), as the proxy's metrics say.
async fn watches(p: &proxy::Proxy, kind: &str) -> u64 {
    p.metric("discovery_watches", &[("kind", kind)]).await
}

#[tokio::test]
async fn destinations_unused_for_the_idle_timeout_are_dropped_and_come_back_on_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("base.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {mesh.io/inject: enabled}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\n\
         spec: {selector: {app: other}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .expect("write");
    let a = pod(pod_ip(1)).await;
    write_pod(dir.path(), "web-a", a.ip);
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let p = proxy::new()
        .env("DESTINATION_ADDR", ctl.destination)
        .env("NAMESPACE", "shop")
        .env("DISCOVERY_IDLE_TIMEOUT", "2s")
        .run()
        .await;
    let get = |host: &'static str| client::get(p.outbound, host, "/");
    assert_eq!(get("web.shop.svc.cluster.local").await.status, 200);
    // A service without pods: answered, and watched too.
    assert_eq!(get("other.shop.svc.cluster.local").await.status, 503);
    assert_eq!(watches(&p, "destination").await, 2);
    assert_eq!(watches(&p, "policy").await, 2);
    assert!(p.metric("endpoint_pools", &[]).await >= 1);
    // `web` stays in use; `other` does not.
    mesh_test::eventually(
        "the unused destination dropped",
        Duration::from_secs(10),
        || async {
            assert_eq!(get("web.shop.svc.cluster.local").await.status, 200);
            (watches(&p, "destination").await == 1).then_some(())
        },
    )
    .await;
    assert_eq!(watches(&p, "policy").await, 1);
    // Nothing used: everything goes, connection pools included.
    mesh_test::eventually("everything dropped", Duration::from_secs(10), || async {
        let held = watches(&p, "destination").await
            + watches(&p, "policy").await
            + p.metric("endpoint_pools", &[]).await;
        (held == 0).then_some(())
    })
    .await;
    // And a request afterwards watches again, and goes through the pod's proxy as
    // the controller says.
    let before = inbound_requests(&a).await;
    assert_eq!(get("web.shop.svc.cluster.local").await.status, 200);
    assert_eq!(inbound_requests(&a).await, before + 1);
    assert_eq!(watches(&p, "destination").await, 1);
}
