//! Real HTTP clients for the tests: HTTP/1 and HTTP/2 connections over loopback.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::backend::Body;

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// Its trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

/// Reads a response's body and trailers in full.
pub async fn read(rsp: Response<Incoming>) -> Reply {
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A body from bytes.
pub fn body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An HTTP/1 connection to `addr`.
pub async fn h1(addr: SocketAddr) -> http1::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    tx
}

/// An HTTP/1 connection to `addr`, or `None` when it cannot be made.
pub async fn try_h1(addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Some(tx)
}

/// An HTTP/2 (prior knowledge) connection to `addr`, or `None` when it cannot be made.
pub async fn try_h2(addr: SocketAddr) -> Option<http2::SendRequest<Body>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
pub async fn h2(addr: SocketAddr) -> http2::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// Sends `req` on an HTTP/1 connection and reads the response in full.
pub async fn send(tx: &mut http1::SendRequest<Body>, req: Request<Body>) -> Reply {
    read(tx.send_request(req).await.expect("response")).await
}

/// `GET path` with `Host: host` on an existing HTTP/1 connection.
pub async fn get_on(tx: &mut http1::SendRequest<Body>, host: &str, path: &str) -> Reply {
    let req = Request::get(path)
        .header("host", host)
        .body(body(Bytes::new()))
        .expect("request");
    send(tx, req).await
}

/// `GET path` with `Host: host` over a new HTTP/1 connection to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    get_on(&mut h1(addr).await, host, path).await
}
