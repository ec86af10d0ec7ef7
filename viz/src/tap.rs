//! `/api/tap`: the live calls of one workload's pods, merged into one stream of JSON
//! lines, each naming the pod it came from. With an identity of its own (in a
//! cluster), viz taps each proxy over mTLS on its tap port, checking the pod's
//! identity as any meshed peer would; without one (`mesh demo`, where viz runs on the
//! pods' loopback), on the proxy's admin port. The stream lasts until the watcher
//! goes, and then every proxy's tap ends with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use mesh_controller::index::PodView;
use tokio::sync::mpsc;

/// Taps viz relays at once at most.
pub const MAX_TAPS: usize = 8;
/// Lines waiting for a slow watcher at most; more are dropped.
const QUEUE: usize = 1024;
/// Filter keys passed on to the proxies.
pub const FILTERS: [&str; 5] = ["direction", "to", "authority", "path", "method"];

/// Relays in flight, bounded by [`MAX_TAPS`].
#[derive(Debug, Default)]
pub struct Relays(AtomicUsize);

/// A relay's slot; freed when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Relays>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Relays {
    /// A slot, unless [`MAX_TAPS`] relays are running.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_TAPS {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }
}

/// The merged stream a watcher reads: lines, each marked whether it is a call.
pub struct Stream {
    rx: mpsc::Receiver<(Bytes, bool)>,
    /// Calls still to pass before the stream ends, if bounded.
    left: Option<u64>,
    _slot: Slot,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == Some(0) {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((line, call))) => {
                if call && let Some(n) = self.left.as_mut() {
                    *n -= 1;
                }
                Poll::Ready(Some(Ok(Frame::data(line))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How viz reaches a proxy's tap.
#[derive(Clone, Debug)]
pub enum Via {
    /// The admin port, as a process on the pod's loopback.
    Admin(u16),
    /// The tap port, over mTLS as viz's identity.
    Tls {
        /// viz's identity (its certificate, renewed).
        identity: Arc<mesh_proxy::identity::Identity>,
        /// The proxies' tap port.
        port: u16,
    },
}

/// Starts tapping `pods` (their proxies, reached `via`) with `query` (the proxies'
/// filter) and returns the merged stream, ended after `limit` calls if given. A first
/// line says which pods are tapped.
pub fn start(
    pods: Vec<PodView>,
    via: &Via,
    query: String,
    limit: Option<u64>,
    slot: Slot,
) -> Stream {
    let (tx, rx) = mpsc::channel(QUEUE);
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let hello = serde_json::json!({"tapping": names}).to_string() + "\n";
    let _ = tx.try_send((Bytes::from(hello), false));
    for pod in pods {
        let Some(ip) = pod.ip else { continue };
        let (tx, query, via) = (tx.clone(), query.clone(), via.clone());
        tokio::spawn(relay(ip, via, pod, query, tx));
    }
    Stream {
        rx,
        left: limit,
        _slot: slot,
    }
}

/// An HTTP/1 connection to the proxy's tap, `via` the admin port or mTLS.
async fn connect(
    ip: std::net::IpAddr,
    via: &Via,
    pod: &PodView,
) -> Result<
    (
        SocketAddr,
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    ),
    String,
> {
    let port = match via {
        Via::Admin(p) | Via::Tls { port: p, .. } => *p,
    };
    let addr = SocketAddr::new(ip, port);
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    match via {
        Via::Admin(_) => Ok((addr, handshake(stream).await?)),
        Via::Tls { identity, .. } => {
            if !identity.is_ready() {
                return Err("viz has no certificate yet from the identity service".into());
            }
            // The proxy must prove the pod's identity, as to any meshed peer.
            let name = mesh_api::identity::dns_name(&pod.service_account, &pod.namespace);
            let server = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("{name}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(identity.client_config(false))
                .connect(server, stream)
                .await
                .map_err(|e| format!("{addr}: TLS as {name}: {e}"))?;
            Ok((addr, handshake(tls).await?))
        }
    }
}

/// An HTTP/1 client connection over `io`, served in the background.
async fn handshake<I>(
    io: I,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// Relays one proxy's tap into `tx` until either side ends.
async fn relay(
    ip: std::net::IpAddr,
    via: Via,
    pod: PodView,
    query: String,
    tx: mpsc::Sender<(Bytes, bool)>,
) {
    let error_line = |e: String| {
        let line = serde_json::json!({"pod": pod.name, "namespace": pod.namespace, "error": e});
        (Bytes::from(line.to_string() + "\n"), false)
    };
    let connected = async {
        let (addr, mut send) = connect(ip, &via, &pod).await?;
        let req = http::Request::get(format!("/tap?{query}"))
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !rsp.status().is_success() {
            let status = rsp.status();
            let body = rsp.into_body().collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).trim().to_string());
            return Err(format!("{addr}: {status}: {}", text.unwrap_or_default()));
        }
        Ok::<_, String>((addr, rsp.into_body()))
    };
    let (addr, mut body) = match tokio::time::timeout(Duration::from_secs(5), connected).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => {
            let _ = tx.try_send(error_line(e));
            return;
        }
        Err(_) => {
            let _ = tx.try_send(error_line(format!("{ip}: no answer within 5s")));
            return;
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            // The watcher went: stop, and the proxy's tap ends with the connection.
            () = tx.closed() => return,
        };
        let Some(Ok(frame)) = frame else {
            let _ = tx.try_send(error_line(format!("{addr}: the proxy ended the tap")));
            return;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        // A proxy's line is short; one that never ends is not a line.
        if pending.len() > 64 * 1024 {
            pending.clear();
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(serde_json::Value::Object(mut call)) = serde_json::from_slice(&line) else {
                continue;
            };
            call.insert("pod".into(), pod.name.clone().into());
            call.insert("namespace".into(), pod.namespace.clone().into());
            call.insert("workload".into(), pod.workload.clone().into());
            let line = serde_json::Value::Object(call).to_string() + "\n";
            // A watcher that does not keep up loses lines rather than slowing anyone.
            if let Err(mpsc::error::TrySendError::Closed(_)) =
                tx.try_send((Bytes::from(line), true))
            {
                return;
            }
        }
    }
}

/// The proxies' filter from a tap request's parameters: only [`FILTERS`], each
/// percent-encoded again.
pub fn proxy_query(params: &[(String, String)]) -> String {
    params
        .iter()
        .filter(|(k, v)| FILTERS.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filters_go_on_encoded_and_relays_are_bounded() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            proxy_query(&[
                p("workload", "web"),
                p("path", "/a b&c"),
                p("method", "GET"),
                p("to", "")
            ]),
            "path=/a%20b%26c&method=GET"
        );
        let relays = Arc::new(Relays::default());
        let slots: Vec<_> = (0..MAX_TAPS).filter_map(|_| relays.take()).collect();
        assert_eq!(slots.len(), MAX_TAPS);
        assert!(relays.take().is_none());
        drop(slots);
        assert!(relays.take().is_some());
    }
}
