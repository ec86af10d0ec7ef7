//! Real backends on loopback: an HTTP server speaking HTTP/1 and h2c, a WebSocket echo,
//! a TCP echo, and helpers for unhelpful servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The body type backends answer with.
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running HTTP backend and what it has seen.
#[derive(Clone, Debug)]
pub struct Http {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests whose handler was dropped before finishing (the client went away).
    pub cancelled: Arc<AtomicUsize>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Bytes of request bodies `/consume/N` read whole (an aborted body adds nothing).
    pub consumed: Arc<AtomicUsize>,
    /// When not 0, every request is answered with this status (a replica that starts
    /// failing, and recovers when set back to 0).
    pub failing: Arc<std::sync::atomic::AtomicU16>,
}

impl Http {
    /// `127.0.0.1:PORT`, as an authority.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

/// The bytes of `/size/N`: a repeating, position-dependent pattern, so that a lost or
/// reordered chunk changes the result.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i % 251) as u8 ^ ((i / 251) % 256) as u8)
        .collect()
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

struct CancelGuard(Arc<AtomicUsize>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether this is the first request for `key` in `space`, process-wide.
fn first_time(space: &str, key: &str) -> bool {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let key = format!("{space}/{key}");
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let first = !seen.contains(&key);
    if first {
        seen.push(key);
    }
    first
}

/// The test application's routes (a request header `x-status: N` answers N on any;
/// every response says the app's address in `x-served-by`):
/// * `/echo`: the request body back, streamed;
/// * `/size/N`: N bytes of [`pattern`];
/// * `/sleep/MS`: answers after MS milliseconds (counts cancellations);
/// * `/status/N`: answers with status N;
/// * `/trailers`: a streamed body followed by trailers `x-checksum`;
/// * `/consume/N`: reads the whole body, then answers with status N;
/// * `/fail-once/KEY`: 503 the first time for KEY, 200 afterwards;
/// * `/sleep-once/KEY`: 2 s late the first time for KEY, at once afterwards;
/// * `/grpc-fail-once/KEY`: `grpc-status: 14` the first time for KEY, 0 afterwards;
/// * `/headers`: the request's headers, one `name: value` a line;
/// * `/version`: the request's HTTP version (`HTTP/1.1`, `HTTP/2.0`);
/// * anything else: `hello`.
async fn app(
    req: Request<Incoming>,
    cancelled: Arc<AtomicUsize>,
    consumed: Arc<AtomicUsize>,
) -> Result<Response<Body>, Infallible> {
    // `x-status: N` answers N on any path, after reading the body: failures on demand.
    let forced = req
        .headers()
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    if let Some(code) = forced.and_then(|c| StatusCode::from_u16(c).ok()) {
        let _ = req.into_body().collect().await;
        let mut rsp = Response::new(full(format!("forced {code}")));
        *rsp.status_mut() = code;
        return Ok(rsp);
    }
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let rsp = match (parts.next().unwrap_or(""), parts.next()) {
        ("echo", _) => Response::new(req.into_body().map_err(Into::into).boxed_unsync()),
        ("size", Some(n)) => Response::new(full(pattern(n.parse().unwrap_or(0)))),
        ("sleep", Some(ms)) => {
            let mut guard = CancelGuard(cancelled, false);
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            guard.1 = true;
            Response::new(full("slept"))
        }
        ("status", Some(code)) => {
            let mut rsp = Response::new(full(format!("status {code}")));
            *rsp.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            rsp
        }
        ("trailers", _) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().expect("ascii"));
            let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
                Ok(Frame::data(Bytes::from_static(b"part1,"))),
                Ok(Frame::data(Bytes::from_static(b"part2"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut rsp =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
            // HTTP/1 only carries trailers that the response announces.
            rsp.headers_mut()
                .insert("trailer", "x-checksum".parse().expect("ascii"));
            rsp
        }
        ("consume", Some(code)) => {
            // Reads the whole request body, then answers with the status given.
            let read = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            consumed.fetch_add(read, Ordering::SeqCst);
            let mut rsp = Response::new(full(format!("read {read} bytes")));
            *rsp.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            rsp
        }
        ("fail-once", Some(key)) => {
            // The first request for a key fails with 503, every later one succeeds.
            static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let first = {
                let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
                let first = !seen.iter().any(|k| k == key);
                if first {
                    seen.push(key.to_string());
                }
                first
            };
            let mut rsp = Response::new(full(if first { "failed once" } else { "ok now" }));
            if first {
                *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            rsp
        }
        ("sleep-once", Some(key)) => {
            // The first request for a key takes 2 s, every later one answers at once.
            if first_time("sleep", key) {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Response::new(full("awake"))
        }
        ("grpc-fail-once", Some(key)) => {
            // gRPC: UNAVAILABLE the first time for a key (trailers-only), OK afterwards.
            let code = if first_time("grpc", key) { "14" } else { "0" };
            let mut rsp = Response::new(full(""));
            rsp.headers_mut()
                .insert("content-type", "application/grpc".parse().expect("ascii"));
            rsp.headers_mut()
                .insert("grpc-status", code.parse().expect("ascii"));
            rsp
        }
        ("headers", _) => {
            let text: String = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            Response::new(full(text))
        }
        ("version", _) => Response::new(full(format!("{:?}", req.version()))),
        _ => Response::new(full("hello")),
    };
    Ok(rsp)
}

/// Starts the test application on an ephemeral loopback port, speaking HTTP/1 and h2c.
pub async fn http() -> Http {
    http_on("127.0.0.1:0".parse().expect("addr")).await
}

/// Starts the test application on `addr`.
pub async fn http_on(addr: SocketAddr) -> Http {
    http_with_delay(addr, Duration::ZERO)
        .await
        .expect("bind backend")
}

/// Starts the test application on `addr`, answering every request `delay` late.
pub async fn http_with_delay(addr: SocketAddr, delay: Duration) -> std::io::Result<Http> {
    let listener = TcpListener::bind(addr).await?;
    let server = Http {
        addr: listener.local_addr()?,
        connections: Arc::default(),
        cancelled: Arc::default(),
        requests: Arc::default(),
        failing: Arc::default(),
        consumed: Arc::default(),
    };
    let s = server.clone();
    let served_by = http::HeaderValue::from_str(&server.addr.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("?"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::SeqCst);
            // As servers do: HTTP/2 writes frames apart, which Nagle would hold back.
            let _ = stream.set_nodelay(true);
            let (cancelled, requests) = (s.cancelled.clone(), s.requests.clone());
            let failing = s.failing.clone();
            let consumed = s.consumed.clone();
            let served_by = served_by.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let (cancelled, served_by) = (cancelled.clone(), served_by.clone());
                    let failing = failing.load(Ordering::SeqCst);
                    let consumed = consumed.clone();
                    async move {
                        // Even a zero sleep waits for the timer's next millisecond tick.
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let mut rsp = match StatusCode::from_u16(failing) {
                            Ok(code) if failing != 0 => {
                                let mut rsp = Response::new(full(format!("failing {code}")));
                                *rsp.status_mut() = code;
                                rsp
                            }
                            _ => app(req, cancelled, consumed).await?,
                        };
                        rsp.headers_mut().insert("x-served-by", served_by);
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(server)
}

/// A WebSocket server that echoes every message; returns its address.
pub async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP server that echoes everything until the client half-closes, then writes
/// `banner`'s byte count summary and closes. When `banner` is set it speaks first.
pub async fn tcp_echo(banner: Option<&'static [u8]>) -> SocketAddr {
    tcp_echo_on(([127, 0, 0, 1], 0).into(), banner)
        .await
        .expect("bind tcp")
}

/// [`tcp_echo`] on `addr`.
pub async fn tcp_echo_on(
    addr: SocketAddr,
    banner: Option<&'static [u8]>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Some(b) = banner
                    && stream.write_all(b).await.is_err()
                {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0usize;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed; our side keeps writing, proving half-close.
                let _ = stream
                    .write_all(format!("\nbytes={total}\n").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A listener whose accept queue is full and never drained: connects to it hang,
/// which is how a connect timeout is provoked on loopback.
pub struct Blackhole {
    /// The address whose connects hang.
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _fillers: Vec<std::net::TcpStream>,
}

/// Makes a [`Blackhole`].
pub fn blackhole() -> Blackhole {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue; once it is full the kernel drops further SYNs.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_nonblocking(true).expect("nonblocking");
        let _ = s.connect(&addr.into());
        fillers.push(s.into());
    }
    std::thread::sleep(Duration::from_millis(100));
    Blackhole {
        addr,
        _listener: listener,
        _fillers: fillers,
    }
}
