//! Upstream connections: a pool per endpoint and protocol, shared by every request that
//! the balancer sends there.
//!
//! HTTP/1 connections carry one request at a time: a pool per endpoint from which a
//! request takes a connection that is ready (its previous response fully read). HTTP/2
//! multiplexes every request over one connection per endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::balance::PeakEwma;
use crate::body::BoxBody;
use crate::error::ProxyError;
use crate::fasthash::FastMap;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::origins::{Origin, Origins};
use crate::tcp::CountingIo;
use crate::vocab::{Direction, Tls};

/// Which HTTP version a pooled connection speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
}

/// Settings for upstream connections.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// How long an idle HTTP/1 connection is kept.
    pub idle_timeout: Duration,
    /// HTTP/1 connections pooled per endpoint.
    pub max_pooled_per_endpoint: usize,
}

/// One endpoint: its load estimate and its connections.
#[derive(Debug)]
pub struct Endpoint {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Its peak-EWMA load, for the balancer.
    pub load: PeakEwma,
    /// The identity the endpoint must present (mTLS), or `None` for plaintext.
    pub identity: Option<Arc<str>>,
    tls: Option<Arc<Identity>>,
    /// Whether this proxy has an identity at all (plaintext is then `no_identity`).
    mtls: bool,
    version: Version,
    direction: Direction,
    config: ClientConfig,
    metrics: Arc<Metrics>,
    origins: Arc<Origins>,
    /// Idle HTTP/1 connections: since when, and how many requests each carried.
    h1_pool: Mutex<Vec<(http1::SendRequest<BoxBody>, Instant, u32)>>,
    /// The HTTP/2 connection, and how many requests were sent on it.
    h2: Mutex<Option<(http2::SendRequest<BoxBody>, Arc<AtomicU32>)>>,
    /// When a request last asked for it (milliseconds since [`epoch`]).
    used_ms: AtomicU64,
}

/// A fixed instant the endpoints' last use is counted from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The time requests stamp endpoints with: set by each sweep, so that a request reads
/// an atomic instead of the clock (a quarter of the idle timeout is precision enough).
static COARSE_NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Endpoints per address, protocol and direction, and per worker (each worker keeps its
/// own connections, [`crate::worker`]); under it, one per identity the address may be
/// asked to present (almost always one), so that a lookup hashes no string and
/// allocates nothing.
type EndpointKey = (SocketAddr, Version, Direction, u16);

/// Every endpoint the proxy has talked to, keyed by address, HTTP version and the
/// identity it must present.
#[derive(Debug)]
pub struct Endpoints {
    config: ClientConfig,
    metrics: Arc<Metrics>,
    origins: Arc<Origins>,
    tls: Option<Arc<Identity>>,
    map: Mutex<FastMap<EndpointKey, Vec<Arc<Endpoint>>>>,
}

impl Endpoints {
    /// An empty set of endpoints with these connection settings; with `tls`, endpoints
    /// that have an identity are reached over mTLS. Every connection is tracked in
    /// `origins` while open.
    pub fn new(
        config: ClientConfig,
        metrics: Arc<Metrics>,
        origins: Arc<Origins>,
        tls: Option<Arc<Identity>>,
    ) -> Self {
        Self {
            config,
            metrics,
            origins,
            tls,
            map: Mutex::new(FastMap::default()),
        }
    }

    /// Whether this proxy speaks mTLS to meshed endpoints.
    pub fn mtls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint for `addr`, created on first use. `identity` is what discovery said
    /// the endpoint presents; it is ignored when this proxy has no identity of its own.
    pub fn get(
        &self,
        addr: SocketAddr,
        version: Version,
        direction: Direction,
        identity: Option<&str>,
    ) -> Arc<Endpoint> {
        let identity = identity.filter(|_| self.tls.is_some());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let same = map
            .entry((addr, version, direction, crate::worker::index()))
            .or_default();
        let endpoint = match same.iter().find(|e| e.identity.as_deref() == identity) {
            Some(e) => e.clone(),
            None => {
                let identity: Option<Arc<str>> = identity.map(Arc::from);
                let endpoint = Arc::new(Endpoint {
                    addr,
                    load: PeakEwma::default(),
                    tls: identity.as_ref().and(self.tls.clone()),
                    mtls: self.tls.is_some(),
                    identity,
                    version,
                    direction,
                    config: self.config.clone(),
                    metrics: self.metrics.clone(),
                    origins: self.origins.clone(),
                    h1_pool: Mutex::new(Vec::new()),
                    h2: Mutex::new(None),
                    used_ms: AtomicU64::new(0),
                });
                same.push(endpoint.clone());
                // Under the map's lock, as the sweep's count is.
                self.metrics.held.endpoints.fetch_add(1, Ordering::Relaxed);
                endpoint
            }
        };
        endpoint
            .used_ms
            .store(COARSE_NOW_MS.load(Ordering::Relaxed), Ordering::Relaxed);
        endpoint
    }

    /// Drops the endpoints (and their pooled connections) that no request has used
    /// within `idle` and none holds now; returns how many are left.
    pub fn sweep(&self, idle: Duration) -> usize {
        let now = epoch().elapsed().as_millis() as u64;
        COARSE_NOW_MS.store(now, Ordering::Relaxed);
        let cutoff = now.saturating_sub(idle.as_millis() as u64);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = 0;
        map.retain(|_, same| {
            same.retain(|e| {
                Arc::strong_count(e) > 1 || e.used_ms.load(Ordering::Relaxed) >= cutoff
            });
            held += same.len();
            !same.is_empty()
        });
        self.metrics
            .held
            .endpoints
            .store(held as u64, Ordering::Relaxed);
        held
    }
}

/// A connection to an endpoint, ready for one request.
pub enum Conn {
    /// An HTTP/1 connection, whether it came from the pool, and its use so far.
    Http1(http1::SendRequest<BoxBody>, bool, Reuse),
    /// An HTTP/2 connection, and whether it was already open.
    Http2(http2::SendRequest<BoxBody>, bool),
}

/// How much an HTTP/1 connection has carried, and may.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reuse {
    served: u32,
    limit: Option<u32>,
}

impl Endpoint {
    /// The HTTP version requests to this endpoint are sent with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// A connection ready for a request: pooled, or new. Failing here means no request
    /// was sent, so the caller may safely try another endpoint.
    pub async fn connection(&self) -> Result<Conn, ProxyError> {
        self.connection_with(None).await
    }

    /// As [`Self::connection`], on a connection that has carried fewer than `limit`
    /// requests (a backend's `maxRequestsPerConnection`); one that reaches it is
    /// closed once its response is read.
    pub async fn connection_with(&self, limit: Option<u32>) -> Result<Conn, ProxyError> {
        match self.version {
            Version::Http1 => Ok(match self.take_ready(limit) {
                Some((tx, served)) => Conn::Http1(tx, true, Reuse { served, limit }),
                None => Conn::Http1(
                    self.handshake_h1().await?,
                    false,
                    Reuse { served: 0, limit },
                ),
            }),
            Version::Http2 => {
                let cached = {
                    let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
                    h2.as_ref().filter(|(tx, _)| !tx.is_closed()).cloned()
                };
                if let Some((mut tx, sent)) = cached {
                    let spent = limit.is_some_and(|l| sent.fetch_add(1, Ordering::Relaxed) >= l);
                    if !spent && tx.ready().await.is_ok() {
                        return Ok(Conn::Http2(tx, true));
                    }
                    self.forget_h2();
                }
                Ok(Conn::Http2(self.handshake_h2().await?, false))
            }
        }
    }

    /// Sends `req` on `conn` and returns the response head. A reused connection that
    /// the server closed just now hands the unsent request back; it goes out once more
    /// on a fresh connection.
    pub async fn send(
        &self,
        conn: Conn,
        req: Request<BoxBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match conn {
            Conn::Http1(mut tx, reused, reuse) => {
                let req = match tx.try_send_request(req).await {
                    Ok(rsp) => return Ok(self.keep_h1(tx, rsp, reuse)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => unsent,
                        _ => return Err(ProxyError::upstream(self.addr, e.into_error())),
                    },
                };
                let mut tx = self.handshake_h1().await?;
                let rsp = tx
                    .send_request(req)
                    .await
                    .map_err(|e| ProxyError::upstream(self.addr, e))?;
                let fresh = Reuse { served: 0, ..reuse };
                Ok(self.keep_h1(tx, rsp, fresh))
            }
            Conn::Http2(mut tx, reused) => {
                let req = match tx.try_send_request(req).await {
                    Ok(rsp) => return Ok(rsp),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => unsent,
                        _ => return Err(ProxyError::upstream(self.addr, e.into_error())),
                    },
                };
                self.forget_h2();
                let mut tx = self.handshake_h2().await?;
                tx.send_request(req)
                    .await
                    .map_err(|e| ProxyError::upstream(self.addr, e))
            }
        }
    }

    fn keep_h1(
        &self,
        tx: http1::SendRequest<BoxBody>,
        rsp: Response<Incoming>,
        reuse: Reuse,
    ) -> Response<Incoming> {
        let served = reuse.served.saturating_add(1);
        // An upgraded connection belongs to its tunnel from now on; one that has
        // carried its bound is closed after this response (dropping `tx`).
        if rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && reuse.limit.is_none_or(|l| served < l)
        {
            self.pool(tx, served);
        }
        rsp
    }

    /// A new connection to the endpoint, and its tracking guard, to be kept as long as
    /// the connection.
    async fn connect(&self) -> Result<(TokioIo<ConnIo>, Origin), ProxyError> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr))?
            .map_err(|source| ProxyError::Connect { addr, source })?;
        let origin = self.origins.track(&tcp);
        // Small requests and responses must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let (Some(tls), Some(identity)) = (&self.tls, &self.identity) else {
            let tls = if self.mtls {
                Tls::NoIdentity
            } else {
                Tls::Disabled
            };
            let stats = self.metrics.tcp_open(self.direction, "dst", tls);
            return Ok((
                TokioIo::new(ConnIo::Plain(CountingIo::new(tcp, stats))),
                origin,
            ));
        };
        if !tls.is_ready() {
            return Err(ProxyError::NoIdentity);
        }
        let stats = self.metrics.tcp_open(self.direction, "dst", Tls::Secured);
        let io = CountingIo::new(tcp, stats);
        let name = rustls::pki_types::ServerName::try_from(identity.to_string()).map_err(|_| {
            ProxyError::Tls {
                addr,
                reason: format!("invalid identity {identity:?} from discovery"),
            }
        })?;
        let connector =
            tokio_rustls::TlsConnector::from(tls.client_config(self.version == Version::Http2));
        let stream = tokio::time::timeout(self.config.connect_timeout, connector.connect(name, io))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr))?
            .map_err(|e| ProxyError::Tls {
                addr,
                reason: tls_failure(identity, &e),
            })?;
        Ok((TokioIo::new(ConnIo::Tls(Box::new(stream))), origin))
    }

    /// Takes a pooled HTTP/1 connection that is ready for a request. The pool holds
    /// busy connections too (a response body still being read), so returning one
    /// costs nothing; expired and closed ones are dropped on the way.
    /// An idle pooled connection that has carried fewer than `limit` requests, and how
    /// many it has.
    fn take_ready(&self, limit: Option<u32>) -> Option<(http1::SendRequest<BoxBody>, u32)> {
        let mut pool = self.h1_pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let ttl = self.config.idle_timeout;
        let mut i = pool.len();
        while i > 0 {
            i -= 1;
            let (tx, since, served) = &pool[i];
            if tx.is_closed() || (tx.is_ready() && now.saturating_duration_since(*since) > ttl) {
                pool.swap_remove(i);
            } else if tx.is_ready() && limit.is_none_or(|l| *served < l) {
                let (tx, _, served) = pool.swap_remove(i);
                return Some((tx, served));
            }
        }
        None
    }

    /// Keeps a connection for reuse once its response has been read; beyond the pool's
    /// size it is dropped, and hyper closes it after the response in flight.
    fn pool(&self, tx: http1::SendRequest<BoxBody>, served: u32) {
        let mut pool = self.h1_pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.config.max_pooled_per_endpoint {
            pool.push((tx, Instant::now(), served));
        }
    }

    async fn handshake_h1(&self) -> Result<http1::SendRequest<BoxBody>, ProxyError> {
        let (io, origin) = self.connect().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            let _origin = origin;
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1 connection closed");
            }
        });
        Ok(tx)
    }

    /// A new HTTP/2 connection, ready for a request, kept for the requests after.
    async fn handshake_h2(&self) -> Result<http2::SendRequest<BoxBody>, ProxyError> {
        let (io, origin) = self.connect().await?;
        let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            let _origin = origin;
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed");
            }
        });
        // The server's SETTINGS must arrive within the connect timeout too: a peer that
        // accepts and then says nothing must not hold the request (dropping `tx` here
        // closes the connection).
        let addr = self.addr;
        tokio::time::timeout(self.config.connect_timeout, tx.ready())
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr))?
            .map_err(|source| ProxyError::Upstream { addr, source })?;
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((tx.clone(), Arc::new(AtomicU32::new(1))));
        Ok(tx)
    }

    fn forget_h2(&self) {
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Why a TLS handshake with a peer expected to be `expected` failed, in words that name
/// both identities when the peer presented the wrong one.
fn tls_failure(expected: &str, e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return e.to_string();
    };
    match tls {
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented, ..
        }) => {
            format!(
                "identity mismatch: expected {expected}, endpoint presented {}",
                if presented.is_empty() {
                    "no identity".to_owned()
                } else {
                    presented.join(", ")
                }
            )
        }
        Error::InvalidCertificate(CertificateError::NotValidForName) => {
            format!("identity mismatch: expected {expected}")
        }
        Error::InvalidCertificate(c) => {
            format!("endpoint certificate rejected ({c:?}), expected {expected}")
        }
        other => format!("{other} (expected identity {expected})"),
    }
}

/// An upstream connection: plaintext or mTLS.
pub enum ConnIo {
    /// Plaintext TCP.
    Plain(CountingIo<TcpStream>),
    /// mTLS to a meshed endpoint.
    Tls(Box<TlsStream<CountingIo<TcpStream>>>),
}

impl tokio::io::AsyncRead for ConnIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ConnIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
