//! Tap: live requests and responses, streamed to whoever watches, as Linkerd's tap.
//!
//! A watcher subscribes with a filter (direction, destination workload, authority,
//! path prefix, method) and reads one JSON line per finished call: method, authority,
//! path, status, latency, bytes, route, client and server identities, TLS, the
//! client's address or the endpoint, the trace id. Only two kinds of watcher are
//! served: a process on the pod's loopback, on the admin port, and the identities
//! `MESH_PROXY_TAP_CLIENTS` names (viz), over mTLS on the tap port. Each watcher has
//! a bounded queue: a call it has no room for is dropped for it and counted. Nobody
//! tapping costs a request one atomic load.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::body::{self, BoxBody};
use crate::vocab::Direction;

/// Watchers at once at most; more are answered 503.
pub const MAX_WATCHERS: usize = 16;
/// Calls waiting for one watcher at most.
const QUEUE: usize = 1024;

/// What a watcher wants to see; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this direction.
    pub direction: Option<Direction>,
    /// Outbound calls answered by this workload (`--to deploy/NAME`).
    pub to: Option<String>,
    /// This authority, case-insensitively.
    pub authority: Option<String>,
    /// Paths starting with this.
    pub path: Option<String>,
    /// This method.
    pub method: Option<String>,
}

impl Filter {
    /// Parses a query string (`direction=inbound&to=books&path=/books&method=GET`);
    /// an unknown key or a bad direction is an error naming it.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut f = Self::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v);
            if v.is_empty() {
                continue;
            }
            match k {
                "direction" => {
                    f.direction = Some(match v.as_str() {
                        "inbound" | "in" => Direction::Inbound,
                        "outbound" | "out" => Direction::Outbound,
                        other => {
                            return Err(format!(
                                "direction: {other:?}: expected inbound or outbound"
                            ));
                        }
                    });
                }
                "to" => f.to = Some(v),
                "authority" => f.authority = Some(v.to_ascii_lowercase()),
                "path" => f.path = Some(v),
                "method" => f.method = Some(v.to_ascii_uppercase()),
                other => {
                    return Err(format!(
                        "{other:?}: expected direction, to, authority, path or method"
                    ));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, c: &Call<'_>) -> bool {
        self.direction.is_none_or(|d| d == c.direction)
            && self.to.as_deref().is_none_or(|t| c.dst_workload == Some(t))
            && self
                .authority
                .as_deref()
                .is_none_or(|a| c.authority.eq_ignore_ascii_case(a))
            && self.path.as_deref().is_none_or(|p| c.path.starts_with(p))
            && self.method.as_deref().is_none_or(|m| c.method == m)
    }
}

/// `%XX` and `+` decoded; invalid escapes kept as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One finished call, as tapped and as the access log writes it.
#[derive(Debug)]
pub struct Call<'a> {
    /// When it arrived.
    pub at: SystemTime,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Its method.
    pub method: &'a str,
    /// Its authority.
    pub authority: &'a str,
    /// Its path and query.
    pub path: &'a str,
    /// The response's status.
    pub status: u16,
    /// A gRPC status, when one was given.
    pub grpc_status: Option<u32>,
    /// From the request to the response's end.
    pub latency: Duration,
    /// Response body bytes.
    pub bytes: u64,
    /// The route it took.
    pub route: &'a str,
    /// The client's identity, with mTLS.
    pub client_id: Option<&'a str>,
    /// The server's identity, with mTLS.
    pub server_id: Option<&'a str>,
    /// `true`, `no_identity` or `disabled`: the peer connection's mTLS.
    pub tls: &'a str,
    /// Inbound: the client's address.
    pub client_addr: Option<SocketAddr>,
    /// Outbound: the endpoint that answered.
    pub endpoint: Option<SocketAddr>,
    /// Outbound: the workload that answered, from discovery.
    pub dst_workload: Option<&'a str>,
    /// Its trace, if it has one (hex).
    pub trace_id: Option<&'a str>,
}

impl Call<'_> {
    fn line(&self, id: u64) -> Bytes {
        let mut v = serde_json::json!({
            "id": id,
            "time": rfc3339(self.at),
            "direction": self.direction.as_str(),
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "status": self.status,
            "latency_ms": (self.latency.as_secs_f64() * 1e6).round() / 1e3,
            "bytes": self.bytes,
            "route": self.route,
            "client_id": self.client_id,
            "server_id": self.server_id,
            "tls": self.tls,
        });
        if let Some(o) = v.as_object_mut() {
            let mut put = |k: &str, val: serde_json::Value| {
                o.insert(k.to_owned(), val);
            };
            if let Some(s) = self.grpc_status {
                put("grpc_status", s.into());
            }
            if let Some(a) = self.client_addr {
                put("client_addr", a.to_string().into());
            }
            if let Some(a) = self.endpoint {
                put("endpoint", a.to_string().into());
            }
            if let Some(w) = self.dst_workload {
                put("dst_workload", w.into());
            }
            if let Some(t) = self.trace_id {
                put("trace_id", t.into());
            }
        }
        let mut line = v.to_string();
        line.push('\n');
        Bytes::from(line)
    }
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
}

/// The proxy's tap: its watchers.
#[derive(Debug, Default)]
pub struct Taps {
    active: AtomicUsize,
    watchers: Mutex<Vec<Watcher>>,
    next: AtomicU64,
    /// Calls dropped for watchers that fell behind.
    pub dropped: AtomicU64,
}

/// A watcher's subscription: unsubscribed when dropped.
#[derive(Debug)]
pub struct Subscription {
    taps: Arc<Taps>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut w = self.taps.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|w| w.id != self.id);
        self.taps.active.store(w.len(), Ordering::Relaxed);
    }
}

impl Taps {
    /// Whether anyone is watching (one relaxed load: the cost of tap to a request).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Watchers now.
    pub fn watchers(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Subscribes a watcher with `filter`; `None` when [`MAX_WATCHERS`] already are.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
    ) -> Option<(Subscription, mpsc::Receiver<Bytes>)> {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= MAX_WATCHERS {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        w.push(Watcher { id, filter, tx });
        self.active.store(w.len(), Ordering::Relaxed);
        Some((
            Subscription {
                taps: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Hands `call` to every watcher whose filter it matches, without waiting.
    pub fn publish(&self, call: &Call<'_>) {
        let w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = None;
        for watcher in w.iter().filter(|w| w.filter.matches(call)) {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let l = line.get_or_insert_with(|| call.line(id)).clone();
            if watcher.tx.try_send(l).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The streaming answer to a tap request: one JSON line per matching call, for as
    /// long as the watcher reads; 400 for a bad filter, 503 when too many watch.
    pub fn respond<B>(self: &Arc<Self>, req: &Request<B>) -> Response<BoxBody> {
        let text = |status: StatusCode, body: String| {
            let mut rsp = Response::new(body::full(Bytes::from(body + "\n")));
            *rsp.status_mut() = status;
            rsp
        };
        if req.method() != http::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "tap is GET".into());
        }
        let filter = match Filter::parse(req.uri().query()) {
            Ok(f) => f,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("tap: {e}")),
        };
        let Some((sub, rx)) = self.subscribe(filter) else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tap: {MAX_WATCHERS} watchers already"),
            );
        };
        let mut rsp = Response::new(body::boxed(Stream { rx, _sub: sub }));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        rsp
    }
}

/// A watcher's stream of lines; ends its subscription when dropped.
struct Stream {
    rx: mpsc::Receiver<Bytes>,
    _sub: Subscription,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

/// Serves tap over mTLS on `listener` to the identities in `allowed` (viz), with the
/// proxy's own certificate; anyone else is refused (403, or at the handshake without
/// a certificate of the mesh).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    identity: Arc<crate::identity::Identity>,
    taps: Arc<Taps>,
    allowed: Arc<[String]>,
) {
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (identity, taps, allowed) = (identity.clone(), taps.clone(), allowed.clone());
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%client, %error, "tap handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(crate::identity::peer_identity);
            let h2 = tls.get_ref().1.alpn_protocol() == Some(crate::identity::ALPN_H2);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let rsp = match &peer {
                    Some(id) if allowed.iter().any(|a| a == id) && req.uri().path() == "/tap" => {
                        taps.respond(&req)
                    }
                    Some(id) if allowed.iter().any(|a| a == id) => {
                        let mut r =
                            Response::new(body::full(Bytes::from_static(b"not found: try /tap\n")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    }
                    other => {
                        tracing::warn!(%client, identity = ?other, "tap refused: not a tap client");
                        let mut r = Response::new(body::full(Bytes::from(format!(
                            "tap is served only to {}\n",
                            allowed.join(", ")
                        ))));
                        *r.status_mut() = StatusCode::FORBIDDEN;
                        r
                    }
                };
                async move { Ok::<_, Infallible>(rsp) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let served = if h2 {
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
            };
            if let Err(error) = served {
                tracing::debug!(%client, %error, "tap connection ended");
            }
        });
    }
}

/// `t` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(direction: Direction, path: &'a str) -> Call<'a> {
        Call {
            at: SystemTime::UNIX_EPOCH,
            direction,
            method: "GET",
            authority: "books.demo.svc.cluster.local:80",
            path,
            status: 200,
            grpc_status: None,
            latency: Duration::from_micros(1500),
            bytes: 10,
            route: "GET /books",
            client_id: Some("web.demo.serviceaccount.identity.mesh.cluster.local"),
            server_id: None,
            tls: "true",
            client_addr: None,
            endpoint: None,
            dst_workload: Some("books-v1"),
            trace_id: None,
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse(Some(
            "direction=outbound&to=books-v1&path=%2Fbooks&method=get",
        ))
        .expect("parses");
        assert!(f.matches(&call(Direction::Outbound, "/books/1")));
        assert!(!f.matches(&call(Direction::Inbound, "/books/1")));
        assert!(!f.matches(&call(Direction::Outbound, "/authors")));
        assert!(Filter::parse(Some("direction=sideways")).is_err());
        assert!(Filter::parse(Some("color=red")).is_err());
        assert_eq!(
            Filter::parse(Some("path=")).expect("empty is unset"),
            Filter::default()
        );
        assert_eq!(decode("a%20b+c%zz%4"), "a b c%zz%4");
    }

    #[tokio::test]
    async fn watchers_get_their_calls_and_unsubscribe_when_gone() {
        let taps = Arc::new(Taps::default());
        assert!(!taps.active());
        let (sub, mut rx) = taps
            .subscribe(Filter::parse(Some("path=/books")).expect("filter"))
            .expect("room");
        assert!(taps.active());
        taps.publish(&call(Direction::Inbound, "/authors"));
        taps.publish(&call(Direction::Inbound, "/books/2"));
        let line = rx.recv().await.expect("a line");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["path"], "/books/2");
        assert_eq!(v["latency_ms"], 1.5);
        assert_eq!(v["dst_workload"], "books-v1");
        assert!(rx.try_recv().is_err(), "/authors was filtered out");
        // A watcher that does not read loses calls, counted; nobody waits.
        for _ in 0..QUEUE + 5 {
            taps.publish(&call(Direction::Inbound, "/books"));
        }
        assert_eq!(taps.dropped.load(Ordering::Relaxed), 5);
        drop(sub);
        assert!(!taps.active());
        // At most MAX_WATCHERS at once.
        let subs: Vec<_> = (0..MAX_WATCHERS)
            .filter_map(|_| taps.subscribe(Filter::default()))
            .collect();
        assert_eq!(subs.len(), MAX_WATCHERS);
        assert!(taps.subscribe(Filter::default()).is_none());
    }
}
