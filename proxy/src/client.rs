//! Upstream connections: a pool per endpoint and protocol, shared by every request that
//! the balancer sends there.
//!
//! HTTP/1 connections carry one request at a time: a pool per endpoint from which a
//! request takes a connection that is ready (its previous response fully read). HTTP/2
//! multiplexes every request over one connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::balance::PeakEwma;
use crate::body::BoxBody;
use crate::error::ProxyError;
use crate::metrics::{Direction, Metrics};
use crate::tcp::CountingIo;

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
    version: Version,
    direction: Direction,
    config: ClientConfig,
    metrics: Arc<Metrics>,
    h1_pool: Mutex<Vec<(http1::SendRequest<BoxBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<BoxBody>>>,
}

/// Every endpoint the proxy has talked to, keyed by address and HTTP version.
#[derive(Debug)]
pub struct Endpoints {
    config: ClientConfig,
    metrics: Arc<Metrics>,
    map: Mutex<HashMap<(SocketAddr, Version, Direction), Arc<Endpoint>>>,
}

impl Endpoints {
    /// An empty set of endpoints with these connection settings.
    pub fn new(config: ClientConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint for `addr`, created on first use.
    pub fn get(&self, addr: SocketAddr, version: Version, direction: Direction) -> Arc<Endpoint> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((addr, version, direction))
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    addr,
                    load: PeakEwma::default(),
                    version,
                    direction,
                    config: self.config.clone(),
                    metrics: self.metrics.clone(),
                    h1_pool: Mutex::new(Vec::new()),
                    h2: Mutex::new(None),
                })
            })
            .clone()
    }
}

/// A connection to an endpoint, ready for one request.
pub enum Conn {
    /// An HTTP/1 connection, and whether it came from the pool.
    Http1(http1::SendRequest<BoxBody>, bool),
    /// An HTTP/2 connection, and whether it was already open.
    Http2(http2::SendRequest<BoxBody>, bool),
}

impl Endpoint {
    /// A connection ready for a request: pooled, or new. Failing here means no request
    /// was sent, so the caller may safely try another endpoint.
    pub async fn connection(&self) -> Result<Conn, ProxyError> {
        match self.version {
            Version::Http1 => Ok(match self.take_ready() {
                Some(tx) => Conn::Http1(tx, true),
                None => Conn::Http1(self.handshake_h1().await?, false),
            }),
            Version::Http2 => {
                let cached = {
                    let h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
                    h2.as_ref().filter(|tx| !tx.is_closed()).cloned()
                };
                if let Some(mut tx) = cached {
                    if tx.ready().await.is_ok() {
                        return Ok(Conn::Http2(tx, true));
                    }
                    self.forget_h2();
                }
                let mut tx = self.handshake_h2().await?;
                tx.ready().await.map_err(|source| ProxyError::Upstream {
                    addr: self.addr,
                    source,
                })?;
                Ok(Conn::Http2(tx, false))
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
            Conn::Http1(mut tx, reused) => {
                let req = match tx.try_send_request(req).await {
                    Ok(rsp) => return Ok(self.keep_h1(tx, rsp)),
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
                Ok(self.keep_h1(tx, rsp))
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
                tx.ready().await.map_err(|source| ProxyError::Upstream {
                    addr: self.addr,
                    source,
                })?;
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
    ) -> Response<Incoming> {
        // An upgraded connection belongs to its tunnel from now on.
        if rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            self.pool(tx);
        }
        rsp
    }

    async fn connect(&self) -> Result<TokioIo<CountingIo<TcpStream>>, ProxyError> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout(addr))?
            .map_err(|source| ProxyError::Connect { addr, source })?;
        // Small requests and responses must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let stats = self.metrics.tcp_open(self.direction, "dst");
        Ok(TokioIo::new(CountingIo::new(tcp, stats)))
    }

    /// Takes a pooled HTTP/1 connection that is ready for a request. The pool holds
    /// busy connections too (a response body still being read), so returning one
    /// costs nothing; expired and closed ones are dropped on the way.
    fn take_ready(&self) -> Option<http1::SendRequest<BoxBody>> {
        let mut pool = self.h1_pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let ttl = self.config.idle_timeout;
        let mut i = pool.len();
        while i > 0 {
            i -= 1;
            let (tx, since) = &pool[i];
            if tx.is_closed() || (tx.is_ready() && now.saturating_duration_since(*since) > ttl) {
                pool.swap_remove(i);
            } else if tx.is_ready() {
                return Some(pool.swap_remove(i).0);
            }
        }
        None
    }

    /// Keeps a connection for reuse once its response has been read; beyond the pool's
    /// size it is dropped, and hyper closes it after the response in flight.
    fn pool(&self, tx: http1::SendRequest<BoxBody>) {
        let mut pool = self.h1_pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < self.config.max_pooled_per_endpoint {
            pool.push((tx, Instant::now()));
        }
    }

    async fn handshake_h1(&self) -> Result<http1::SendRequest<BoxBody>, ProxyError> {
        let io = self.connect().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1 connection closed");
            }
        });
        Ok(tx)
    }

    async fn handshake_h2(&self) -> Result<http2::SendRequest<BoxBody>, ProxyError> {
        let io = self.connect().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.addr,
                source,
            })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection closed");
            }
        });
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        Ok(tx)
    }

    fn forget_h2(&self) {
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
