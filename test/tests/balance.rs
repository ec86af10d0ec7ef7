//! Load balancing across a name's endpoints: `localhost` resolves to both 127.0.0.1 and
//! ::1 without any DNS server, so two backends on the same port of each are two real
//! endpoints of one name.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use mesh_test::backend::{self, Http};
use mesh_test::{client, proxy};

/// Two backends on one port, on 127.0.0.1 and ::1; the first answers after `delay`, the
/// second after `delay` too, or 25 ms when `slow` is set.
async fn pair_with(delay: Duration, slow: bool) -> (Http, Http) {
    let v6_delay = if slow {
        Duration::from_millis(25)
    } else {
        delay
    };
    for _ in 0..20 {
        let Ok(v4) = backend::http_with_delay(([127, 0, 0, 1], 0).into(), delay).await else {
            continue;
        };
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, v4.addr.port()).into();
        if let Ok(v6) = backend::http_with_delay(v6, v6_delay).await {
            return (v4, v6);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

async fn send(proxy: &proxy::Proxy, port: u16, n: usize) {
    let mut tx = client::h1(proxy.outbound).await;
    for _ in 0..n {
        let req = Request::get("/")
            .header("host", format!("localhost:{port}"))
            .body(client::body(Bytes::new()))
            .expect("req");
        assert_eq!(client::send(&mut tx, req).await.status, 200);
    }
}

#[tokio::test]
async fn equal_endpoints_share_concurrent_traffic() {
    // With requests in flight, each endpoint's load grows with its pending requests,
    // so equal endpoints share the traffic. (Strictly one request at a time, P2C keeps
    // choosing the endpoint measured fastest, as it should.)
    let (a, b) = pair_with(Duration::from_millis(2), false).await;
    let proxy = proxy::new().run().await;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (outbound, port) = (proxy.outbound, a.addr.port());
            tokio::spawn(async move {
                let mut tx = client::h1(outbound).await;
                for _ in 0..25 {
                    let req = Request::get("/")
                        .header("host", format!("localhost:{port}"))
                        .body(client::body(Bytes::new()))
                        .expect("req");
                    assert_eq!(client::send(&mut tx, req).await.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let (na, nb) = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    assert_eq!(na + nb, 200);
    assert!(na >= 20 && nb >= 20, "traffic not spread: {na} / {nb}");
}

#[tokio::test]
async fn a_slow_endpoint_gets_little_traffic() {
    let (fast, slow) = pair_with(Duration::ZERO, true).await;
    let proxy = proxy::new().run().await;
    send(&proxy, fast.addr.port(), 100).await;
    let (nf, ns) = (
        fast.requests.load(Ordering::SeqCst),
        slow.requests.load(Ordering::SeqCst),
    );
    assert_eq!(nf + ns, 100);
    assert!(ns <= 10, "the slow endpoint got {ns} of 100 requests");
}

#[tokio::test]
async fn a_dead_endpoint_of_a_live_name_does_not_stop_traffic() {
    // Only the IPv4 endpoint listens; ::1 refuses connections. A refused connect sent
    // nothing, so the proxy tries the other endpoint, and peak-EWMA then steers away
    // from the one that failed: no request fails.
    let live = backend::http().await;
    let proxy = proxy::new().run().await;
    let mut ok = 0;
    for _ in 0..50 {
        let rsp = client::get(
            proxy.outbound,
            &format!("localhost:{}", live.addr.port()),
            "/",
        )
        .await;
        if rsp.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 50, "only {ok} of 50 succeeded");
}
