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
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).expect("write pod");
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
