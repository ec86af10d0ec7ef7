//! The destination service over the dir source, end to end: a real gRPC client on
//! loopback watches authorities while the test edits the folder.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::destination as pb;
use mesh_api::destination::destination_client::DestinationClient;
use mesh_api::discovery as disc_pb;
use mesh_api::discovery::discovery_client::DiscoveryClient;
use mesh_api::policy as policy_pb;
use mesh_api::policy::inbound_policies_client::InboundPoliciesClient;
use mesh_api::policy::outbound_policies_client::OutboundPoliciesClient;
use mesh_controller::{Index, destination, dir, discovery, policy};
use tonic::Streaming;

const NS_AND_SVC: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  annotations: {mesh.io/inject: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

fn pod(name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels: {{app: web, pod-template-hash: abc12}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-abc12, uid: u, controller: true}}]
spec:
  serviceAccountName: web
  containers: [{{name: app, image: x, ports: [{{name: http, containerPort: 8080}}]}}]
status: {{podIP: "{ip}", phase: Running}}
"#
    )
}

/// The destination and policy services over a folder, as the controller serves them.
async fn serve(dir: &Path) -> SocketAddr {
    let index = Arc::new(Index::default());
    let (synced, mut ready) = tokio::sync::watch::channel(false);
    tokio::spawn(dir::watch(dir.to_path_buf(), index.clone(), synced));
    ready.wait_for(|r| *r).await.expect("first sync");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(discovery::Service::new(index.clone()))
            .add_service(destination::Service::new(index.clone()))
            .add_service(policy::Service::outbound(index.clone()))
            .add_service(policy::Service::inbound(index))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn start(dir: &Path) -> DestinationClient<tonic::transport::Channel> {
    DestinationClient::connect(format!("http://{}", serve(dir).await))
        .await
        .expect("connect")
}

/// The next message, within a second: the promise the destination service makes.
async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("an update within 1 s")
        .expect("stream ok")
        .expect("stream open")
}

fn get(authority: &str) -> pb::GetDestination {
    pb::GetDestination {
        authority: authority.into(),
        namespace: "demo".into(),
        ..Default::default()
    }
}

fn addrs(update: &pb::Update) -> Vec<String> {
    match &update.update {
        Some(pb::update::Update::Add(a)) => a
            .endpoints
            .iter()
            .map(|e| {
                e.addr
                    .as_ref()
                    .map(|a| format!("+{}:{}", a.ip, a.port))
                    .unwrap_or_default()
            })
            .collect(),
        Some(pb::update::Update::Remove(r)) => r
            .addrs
            .iter()
            .map(|a| format!("-{}:{}", a.ip, a.port))
            .collect(),
        Some(pb::update::Update::NoEndpoints(n)) => vec![format!("none(exists={})", n.exists)],
        None => vec![],
    }
}

#[tokio::test]
async fn endpoints_follow_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), NS_AND_SVC).expect("write");
    std::fs::write(
        dir.path().join("pod-a.yaml"),
        pod("web-abc12-a", "127.0.1.1"),
    )
    .expect("write");
    let mut client = start(dir.path()).await;

    // Every spelling of the name resolves to the same service.
    for authority in [
        "web.demo.svc.cluster.local:80",
        "web.demo:80",
        "web",
        "10.96.0.10:80",
    ] {
        let mut s = client.get(get(authority)).await.expect("get").into_inner();
        let first = next(&mut s).await;
        assert_eq!(addrs(&first), ["+127.0.1.1:8080"], "{authority}");
        let Some(pb::update::Update::Add(add)) = first.update else {
            unreachable!()
        };
        let e = &add.endpoints[0];
        assert_eq!(
            e.tls_identity,
            "web.demo.serviceaccount.identity.mesh.cluster.local"
        );
        assert_eq!(e.metric_labels["deployment"], "web");
        assert_eq!(
            e.protocol_hint.as_ref().map(|h| (h.h2, h.inbound_port)),
            Some((true, 4143))
        );
    }

    let mut s = client
        .get(get("web.demo.svc.cluster.local:80"))
        .await
        .expect("get")
        .into_inner();
    next(&mut s).await;
    // Scale up.
    std::fs::write(
        dir.path().join("pod-b.yaml"),
        pod("web-abc12-b", "127.0.1.2"),
    )
    .expect("write");
    assert_eq!(addrs(&next(&mut s).await), ["+127.0.1.2:8080"]);
    // Scale down.
    std::fs::remove_file(dir.path().join("pod-a.yaml")).expect("rm");
    assert_eq!(addrs(&next(&mut s).await), ["-127.0.1.1:8080"]);
    std::fs::remove_file(dir.path().join("pod-b.yaml")).expect("rm");
    assert_eq!(addrs(&next(&mut s).await), ["none(exists=true)"]);
}

#[tokio::test]
async fn a_file_broken_mid_way_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("all.yaml");
    let good = format!(
        "{NS_AND_SVC}---\n{}---\n{}",
        pod("a", "127.0.1.1"),
        pod("b", "127.0.1.2")
    );
    std::fs::write(&file, &good).expect("write");
    let mut client = start(dir.path()).await;
    let mut s = client
        .get(get("web.demo:80"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(addrs(&next(&mut s).await).len(), 2);
    // A syntax error in the first pod's document: nothing after it can be read, and
    // nothing the file gave before is withdrawn.
    std::fs::write(
        &file,
        good.replace(
            "kind: Pod\nmetadata:\n  name: a",
            "kind: Pod\nmetadata: [\n  name: a",
        ),
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), s.message())
            .await
            .is_err(),
        "endpoints were withdrawn"
    );
    std::fs::write(&file, good.replace("127.0.1.2", "127.0.1.3")).expect("write");
    let mut changes = [addrs(&next(&mut s).await), addrs(&next(&mut s).await)].concat();
    changes.sort();
    assert_eq!(changes, ["+127.0.1.3:8080", "-127.0.1.2:8080"]);
}

#[tokio::test]
async fn unknown_names_say_so_and_appear_when_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut client = start(dir.path()).await;
    let mut s = client
        .get(get("web.demo.svc.cluster.local:80"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(addrs(&next(&mut s).await), ["none(exists=false)"]);
    std::fs::write(
        dir.path().join("all.yaml"),
        format!("{NS_AND_SVC}---\n{}", pod("p", "127.0.1.9")),
    )
    .expect("write");
    assert_eq!(addrs(&next(&mut s).await), ["+127.0.1.9:8080"]);
    let err = client.get(get("bad authority")).await.expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn profiles_and_splits_follow_the_folder_and_bad_edits_keep_the_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples");
    let profile =
        std::fs::read_to_string(format!("{examples}/serviceprofile-webapp.yaml")).expect("example");
    let split =
        std::fs::read_to_string(format!("{examples}/trafficsplit-web-svc.yaml")).expect("example");
    let services: String = ["webapp", "web-svc", "web-svc-v1", "web-svc-v2"]
        .iter()
        .map(|s| format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {s}, namespace: default}}\nspec: {{selector: {{app: {s}}}, ports: [{{port: 80}}]}}\n"))
        .collect();
    std::fs::write(dir.path().join("services.yaml"), services).expect("write");
    std::fs::write(dir.path().join("profile.yaml"), &profile).expect("write");
    std::fs::write(dir.path().join("split.yaml"), &split).expect("write");
    let addr = serve(dir.path()).await;
    let mut client = OutboundPoliciesClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");

    let req = |a: &str| policy_pb::OutboundPolicyRequest {
        authority: a.into(),
        namespace: "default".into(),
    };
    let mut p = client
        .watch(req("webapp.default.svc.cluster.local:80"))
        .await
        .expect("policy")
        .into_inner();
    let first = next(&mut p).await;
    assert_eq!(
        first
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["GET", "POST"]
    );
    let timeout = |r: &policy_pb::HttpRoute| r.timeouts.as_ref().map(|t| t.request_ms);
    assert_eq!(timeout(&first.routes[1]), Some(30_000));
    assert!(first.routes[1].retry.is_some() && first.routes[0].retry.is_none());
    assert_eq!(first.retry_budget.as_ref().map(|b| b.ttl_ms), Some(10_000));
    assert_eq!(
        first
            .sources
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>(),
        ["ServiceProfile"]
    );

    // An invalid edit is refused; the stream stays quiet and the old profile stands.
    std::fs::write(
        dir.path().join("profile.yaml"),
        profile.replace("pathRegex: \"/api\"", "pathRegex: \"/api(\""),
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), p.message())
            .await
            .is_err(),
        "a bad profile was pushed"
    );
    // So is a regex that compiles past the bound (it would stall the proxy).
    std::fs::write(
        dir.path().join("profile.yaml"),
        profile.replace(
            "pathRegex: \"/api\"",
            "pathRegex: \"(?:[a-z0-9/]{1,60}){200}Z\"",
        ),
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), p.message())
            .await
            .is_err(),
        "a stalling profile was pushed"
    );
    // A valid edit goes through.
    std::fs::write(
        dir.path().join("profile.yaml"),
        profile.replace("timeout: 30s", "timeout: 5s"),
    )
    .expect("write");
    assert_eq!(timeout(&next(&mut p).await.routes[1]), Some(5_000));

    // The split: 500/500, then reweighted.
    let mut s = client
        .watch(req("web-svc:80"))
        .await
        .expect("policy")
        .into_inner();
    let weights = |p: &policy_pb::OutboundPolicy| {
        p.backends
            .iter()
            .map(|d| match d.backend.as_ref().and_then(|b| b.kind.as_ref()) {
                Some(policy_pb::backend::Kind::Authority(a)) => (a.clone(), d.weight),
                other => panic!("not a service: {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        weights(&next(&mut s).await),
        [
            (
                "web-svc-v1.default.svc.cluster.local:80".to_string(),
                500_000
            ),
            (
                "web-svc-v2.default.svc.cluster.local:80".to_string(),
                500_000
            )
        ]
    );
    std::fs::write(
        dir.path().join("split.yaml"),
        split.replace(
            "weight: 500\n  - service: web-svc-v2\n    weight: 500",
            "weight: 800\n  - service: web-svc-v2\n    weight: 200",
        ),
    )
    .expect("write");
    assert_eq!(
        weights(&next(&mut s).await)
            .iter()
            .map(|w| w.1)
            .collect::<Vec<_>>(),
        [800_000, 200_000]
    );
    // Zero weights and missing backends are refused; 800/200 stays.
    std::fs::write(
        dir.path().join("split.yaml"),
        split.replace("weight: 500", "weight: 0"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("split2.yaml"),
        split
            .replace("web-svc-split", "other")
            .replace("web-svc-v2", "nope"),
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), s.message())
            .await
            .is_err(),
        "a bad split was pushed"
    );
}

#[tokio::test]
async fn endpoint_slices_decide_when_a_service_has_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A service with no selector: only its EndpointSlice says where it is. One endpoint
    // is ready and backed by a known pod, one is not ready.
    let slice = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {ports: [{name: sql, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x1, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints:
- addresses: ["127.0.1.7"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-abc12-a, namespace: demo}
- addresses: ["127.0.1.8"]
  conditions: {ready: false}
"#;
    std::fs::write(
        dir.path().join("base.yaml"),
        format!(
            "{NS_AND_SVC}---\n{}---\n{slice}",
            pod("web-abc12-a", "127.0.1.1")
        ),
    )
    .expect("write");
    let mut client = start(dir.path()).await;
    let mut s = client
        .get(get("db.demo.svc.cluster.local:5432"))
        .await
        .expect("get")
        .into_inner();
    let first = next(&mut s).await;
    assert_eq!(addrs(&first), ["+127.0.1.7:15432"]);
    let Some(pb::update::Update::Add(add)) = first.update else {
        unreachable!()
    };
    // Identity and labels come from the pod the slice points at.
    assert_eq!(
        add.endpoints[0].tls_identity,
        "web.demo.serviceaccount.identity.mesh.cluster.local"
    );
    assert_eq!(add.endpoints[0].metric_labels["pod"], "web-abc12-a");
}

#[test]
fn bad_documents_name_file_document_and_field() {
    let mut loaded = dir::Loaded::default();
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: eighty}]}\n---\n\
                key: [unclosed\n";
    dir::parse(Path::new("svc.yaml"), text, &mut loaded);
    assert_eq!(loaded.objects.len(), 1);
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors[0].starts_with(
            "svc.yaml document 2 (Service default/bad): spec.ports[0].port: invalid type"
        ),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("svc.yaml document 3: invalid YAML"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn inbound_mtls_follows_the_pod_then_its_namespace_and_bad_edits_keep_the_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, annotations: {{{annotations}}}}}\n"
        )
    };
    let pod = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: demo, annotations: {{{annotations}}}}}\n\
             spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: 127.0.1.9}}\n"
        )
    };
    std::fs::write(
        dir.path().join("ns.yaml"),
        ns("config.mesh.io/inbound-tls: strict, config.linkerd.io/default-inbound-policy: all-authenticated"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("pod.yaml"),
        pod("config.mesh.io/inbound-permissive-ports: '9090'"),
    )
    .expect("write");
    let addr = serve(dir.path()).await;
    let mut client = InboundPoliciesClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let watch = |port: u32| policy_pb::InboundPolicyRequest {
        workload: "web-0".into(),
        namespace: "demo".into(),
        port,
    };
    let mode = |p: &policy_pb::InboundPolicy| p.mtls();
    // 8080: the pod says nothing of it, its namespace is strict, and admits meshed
    // clients only (Linkerd's annotation: the default policy, not the TLS mode).
    let mut web = client.watch(watch(8080)).await.expect("watch").into_inner();
    let first = next(&mut web).await;
    assert_eq!(mode(&first), policy_pb::MtlsMode::Strict);
    assert_eq!(first.sources[0].kind, "Namespace");
    assert_eq!(
        first.default_policy(),
        policy_pb::DefaultPolicy::AllAuthenticated
    );
    // 9090: the pod's own exception.
    let mut metrics = client.watch(watch(9090)).await.expect("watch").into_inner();
    assert_eq!(
        mode(&next(&mut metrics).await),
        policy_pb::MtlsMode::Permissive
    );
    // The pod turns strict everywhere but 9090.
    std::fs::write(
        dir.path().join("pod.yaml"),
        pod("config.mesh.io/inbound-tls: permissive, config.mesh.io/inbound-strict-ports: '8080'"),
    )
    .expect("write");
    let now = next(&mut web).await;
    assert_eq!(
        (mode(&now), now.sources[0].kind.as_str()),
        (policy_pb::MtlsMode::Strict, "Pod")
    );
    // 9090 is still the pod's permissive port: no news for its watcher.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), metrics.message())
            .await
            .is_err()
    );
    // A bad value is refused: nothing changes.
    std::fs::write(
        dir.path().join("pod.yaml"),
        pod("config.mesh.io/inbound-tls: sometimes"),
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(600), web.message())
            .await
            .is_err(),
        "a bad annotation changed the policy"
    );
    // A workload nobody knows: no decision, the proxy's own setting applies.
    let mut other = client
        .watch(policy_pb::InboundPolicyRequest {
            workload: "nope".into(),
            namespace: "elsewhere".into(),
            port: 8080,
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(mode(&next(&mut other).await), policy_pb::MtlsMode::Unset);
    let bad = client.watch(watch(0)).await.expect_err("port 0");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn one_discovery_stream_follows_many_targets_each_under_its_id() {
    use disc_pb::notice::Notice as N;
    use disc_pb::subscription::Target;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), NS_AND_SVC).expect("write");
    std::fs::write(dir.path().join("pod-a.yaml"), pod("web-a", "127.0.1.1")).expect("write");
    std::fs::write(
        dir.path().join("api.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: demo}\n\
         spec: {selector: {app: api}, ports: [{port: 80}]}\n",
    )
    .expect("write");
    let addr = serve(dir.path()).await;
    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (subscribe, subscriptions) = tokio::sync::mpsc::unbounded_channel();
    let outgoing = futures_util::stream::unfold(subscriptions, |mut rx| async move {
        rx.recv().await.map(|s| (s, rx))
    });
    let sub = |id: u64, target: Option<Target>| {
        subscribe
            .send(disc_pb::Subscription { id, target })
            .expect("send");
    };
    let mut notices = client.watch(outgoing).await.expect("watch").into_inner();
    sub(
        1,
        Some(Target::Endpoints(get("web.demo.svc.cluster.local:80"))),
    );
    sub(
        2,
        Some(Target::Outbound(policy_pb::OutboundPolicyRequest {
            authority: "web:80".into(),
            namespace: "demo".into(),
        })),
    );
    sub(
        3,
        Some(Target::Endpoints(get("api.demo.svc.cluster.local:80"))),
    );
    sub(
        4,
        Some(Target::Inbound(policy_pb::InboundPolicyRequest {
            workload: "web-a".into(),
            namespace: "demo".into(),
            port: 8080,
        })),
    );
    sub(5, Some(Target::Endpoints(get("not an authority"))));
    sub(6, None);
    // Each subscription's first answer, in order, under its id.
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Endpoints(u)) if addrs(u) == ["+127.0.1.1:8080"]),
        "{n:?}"
    );
    assert_eq!(n.id, 1);
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Outbound(p)) if p.service == "web.demo.svc.cluster.local:80"),
        "{n:?}"
    );
    assert_eq!(n.id, 2);
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Endpoints(u)) if addrs(u) == ["none(exists=true)"]),
        "{n:?}"
    );
    assert_eq!(n.id, 3);
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Inbound(p)) if p.port == 8080),
        "{n:?}"
    );
    assert_eq!(n.id, 4);
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Refused(r)) if r.code == tonic::Code::InvalidArgument as i32 && r.message.contains("not an authority")),
        "{n:?}"
    );
    assert_eq!(n.id, 5);
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Refused(r)) if r.code == tonic::Code::InvalidArgument as i32),
        "{n:?}"
    );
    assert_eq!(n.id, 6);
    // A new pod of web: news for web's endpoints only.
    std::fs::write(dir.path().join("pod-b.yaml"), pod("web-b", "127.0.1.2")).expect("write");
    let n = next(&mut notices).await;
    assert_eq!(n.id, 1);
    assert!(
        matches!(&n.notice, Some(N::Endpoints(u)) if addrs(u) == ["+127.0.1.2:8080"]),
        "{n:?}"
    );
    // Unsubscribed, web's endpoints say nothing more; a new subscription to the same
    // service (id 7) sees the next pod, and nothing for id 1 comes before it.
    sub(1, Some(Target::Unsubscribe(disc_pb::Unsubscribe {})));
    sub(
        7,
        Some(Target::Endpoints(get("web.demo.svc.cluster.local:80"))),
    );
    let n = next(&mut notices).await;
    assert_eq!(n.id, 7);
    std::fs::write(dir.path().join("pod-c.yaml"), pod("web-c", "127.0.1.3")).expect("write");
    let n = next(&mut notices).await;
    assert_eq!(n.id, 7, "{n:?}");
    assert!(
        matches!(&n.notice, Some(N::Endpoints(u)) if addrs(u) == ["+127.0.1.3:8080"]),
        "{n:?}"
    );
    // Subscribing again under a followed id replaces what it follows.
    sub(
        7,
        Some(Target::Endpoints(get("api.demo.svc.cluster.local:80"))),
    );
    let n = next(&mut notices).await;
    assert!(
        matches!(&n.notice, Some(N::Endpoints(u)) if addrs(u) == ["none(exists=true)"]),
        "{n:?}"
    );
    std::fs::write(dir.path().join("pod-d.yaml"), pod("web-d", "127.0.1.4")).expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), notices.message())
            .await
            .is_err(),
        "nothing follows web any more"
    );
    // The client stops subscribing: the stream goes on for what it holds, and ends
    // once that is unsubscribed too.
    for id in [2, 3, 4, 7] {
        sub(id, Some(Target::Unsubscribe(disc_pb::Unsubscribe {})));
    }
    drop(subscribe);
    let end = tokio::time::timeout(Duration::from_secs(1), notices.message())
        .await
        .expect("ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn a_connection_holds_a_bounded_number_of_subscriptions_across_its_streams() {
    use disc_pb::notice::Notice as N;
    use disc_pb::subscription::Target;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), NS_AND_SVC).expect("write");
    let index = Arc::new(Index::default());
    let (synced, mut ready) = tokio::sync::watch::channel(false);
    tokio::spawn(dir::watch(dir.path().to_path_buf(), index.clone(), synced));
    ready.wait_for(|r| *r).await.expect("first sync");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(discovery::Service::with_limit(index, 3))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // One connection, two streams on it.
    let client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let open = || {
        let mut client = client.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<disc_pb::Subscription>();
            let outgoing = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|s| (s, rx))
            });
            let notices = client.watch(outgoing).await.expect("watch").into_inner();
            (tx, notices)
        }
    };
    let web = |id: u64| disc_pb::Subscription {
        id,
        target: Some(Target::Endpoints(get("web.demo.svc.cluster.local:80"))),
    };
    let refused = |n: &disc_pb::Notice| match &n.notice {
        Some(N::Refused(r)) => Some(r.code),
        _ => None,
    };
    let (a, mut a_notices) = open().await;
    let (b, mut b_notices) = open().await;
    for id in [1, 2] {
        a.send(web(id)).expect("send");
        assert_eq!(refused(&next(&mut a_notices).await), None);
    }
    // A malformed target takes no room.
    b.send(disc_pb::Subscription {
        id: 9,
        target: None,
    })
    .expect("send");
    assert_eq!(
        refused(&next(&mut b_notices).await),
        Some(tonic::Code::InvalidArgument as i32)
    );
    b.send(web(1)).expect("send");
    assert_eq!(refused(&next(&mut b_notices).await), None, "the third");
    b.send(web(2)).expect("send");
    assert_eq!(
        refused(&next(&mut b_notices).await),
        Some(tonic::Code::ResourceExhausted as i32),
        "a fourth on the same connection, even on another stream"
    );
    // Room given back by an unsubscription, and by a stream that ends.
    a.send(disc_pb::Subscription {
        id: 1,
        target: Some(Target::Unsubscribe(disc_pb::Unsubscribe {})),
    })
    .expect("send");
    // The unsubscription is taken before the next subscription on the same stream.
    a.send(web(3)).expect("send");
    assert_eq!(refused(&next(&mut a_notices).await), None);
    drop((a, a_notices));
    let mut id = 10;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        b.send(web(id)).expect("send");
        if refused(&next(&mut b_notices).await).is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream gave its room back"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
