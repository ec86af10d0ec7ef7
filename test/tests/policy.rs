//! The policy API end to end: the controller decides a pod's inbound mTLS from its
//! annotations (and its namespace's), the proxy follows the decision as it changes,
//! keeps the last one while the controller is away, and falls back to its own setting
//! when no controller ever answered.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_test::identity::{self, Identity};
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{client, controller};

/// The folder: namespace `shop`, service `web`, pod `web-0` at `ip` with `annotations`.
fn world(annotations: &str, ip: std::net::IpAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, annotations: {{mesh.io/inject: enabled}}}}\n---\n{}---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop, labels: {{app: web}}, annotations: {{{annotations}}}}}\n\
         spec: {{serviceAccountName: web, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n",
        mesh::service_yaml("web", "shop"),
    )
}

/// Whether a plaintext request to the pod's inbound port is served.
async fn plaintext_served(pod: &Pod) -> bool {
    let attempt = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tx = client::try_h1(SocketAddr::new(pod.ip, 4143)).await?;
        let req = http::Request::get("/")
            .header("host", "web")
            .body(client::body(bytes::Bytes::new()))
            .ok()?;
        tx.send_request(req).await.ok()
    })
    .await;
    matches!(attempt, Ok(Some(rsp)) if rsp.status() == 200)
}

async fn web(
    id: &Identity,
    mode: &'static str,
    ctl: Option<SocketAddr>,
    ip: std::net::IpAddr,
) -> Pod {
    Pod::start(PodSpec {
        identity: Some(id),
        mode,
        destination: ctl,
        name: Some("web-0"),
        ..PodSpec::new(ip, "web", "shop")
    })
    .await
}

#[tokio::test]
async fn inbound_mtls_comes_from_the_controller_and_the_proxy_falls_back_to_its_own() {
    let (ca, work, dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let ip = pod_ip();
    let file = mesh::write(
        dir.path(),
        "world",
        &world("config.mesh.io/inbound-tls: strict", ip),
    );
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;

    // The proxy's own setting is permissive; the controller says strict.
    let pod = web(&id, "permissive", Some(ctl.destination), ip).await;
    assert!(
        !plaintext_served(&pod).await,
        "plaintext reached a pod the controller made strict"
    );

    // The annotation changes: the proxy follows, without a restart.
    mesh::replace(&file, &world("config.mesh.io/inbound-tls: permissive", ip));
    mesh_test::eventually(
        "plaintext served once permissive",
        Duration::from_secs(10),
        || async { plaintext_served(&pod).await.then_some(()) },
    )
    .await;

    // A bad value is refused by the controller: the last good decision stays.
    mesh::replace(&file, &world("config.mesh.io/inbound-tls: sometimes", ip));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        plaintext_served(&pod).await,
        "a refused annotation changed the policy"
    );

    // Strict again, then the controller goes away: the last decision stands.
    mesh::replace(&file, &world("config.mesh.io/inbound-tls: strict", ip));
    mesh_test::eventually(
        "plaintext refused once strict",
        Duration::from_secs(10),
        || async { (!plaintext_served(&pod).await).then_some(()) },
    )
    .await;
    let gone = ctl.destination;
    ctl.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !plaintext_served(&pod).await,
        "the last policy was dropped with the controller"
    );
    drop(pod);

    // No controller ever answered: the proxy's own setting decides, both ways.
    let strict = web(&id, "strict", Some(gone), pod_ip()).await;
    assert!(
        !plaintext_served(&strict).await,
        "the proxy's own strict setting was ignored"
    );
    let permissive = web(&id, "permissive", Some(gone), pod_ip()).await;
    assert!(
        plaintext_served(&permissive).await,
        "the proxy's own permissive setting was ignored"
    );
}

#[tokio::test]
async fn a_destination_rule_turns_mtls_off_toward_its_host() {
    let (ca, work, dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let ip = pod_ip();
    mesh::write(dir.path(), "world", &world("", ip));
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let _web = web(&id, "permissive", Some(ctl.destination), ip).await;
    let caller = Pod::start(PodSpec {
        identity: Some(&id),
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), "caller", "shop")
    })
    .await;
    let call = || async {
        let req = http::Request::get("/")
            .header("host", "web.shop.svc.cluster.local")
            .body(client::body(bytes::Bytes::new()))
            .expect("request");
        let rsp = client::send(&mut client::h1(caller.proxy.outbound).await, req).await;
        assert_eq!(rsp.status, 200);
    };
    let proxy = &caller.proxy;
    let responses = |tls: &'static str| async move {
        proxy
            .metric("response_total", &[("direction", "outbound"), ("tls", tls)])
            .await
    };
    // Meshed: mTLS.
    mesh_test::eventually("an mTLS call", Duration::from_secs(15), || async {
        call().await;
        (responses("true").await > 0).then_some(())
    })
    .await;
    // tls.mode DISABLE: plaintext to the pods from now on.
    mesh::write(
        dir.path(),
        "rule",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\n\
         spec: {host: web, trafficPolicy: {tls: {mode: DISABLE}}}\n",
    );
    mesh_test::eventually("a plaintext call", Duration::from_secs(15), || async {
        call().await;
        (responses("no_identity").await > 0).then_some(())
    })
    .await;
    let secured = responses("true").await;
    for _ in 0..5 {
        call().await;
    }
    assert_eq!(responses("true").await, secured, "no more mTLS toward web");
}
