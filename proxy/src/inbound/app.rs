//! The bottom of the inbound stack: the request goes to the local application, with
//! the client's verified identity and the protocol the client spoke.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version as HttpVersion};
use tower::Service;

use super::named_port;
use crate::body::BoxBody;
use crate::client::Version;
use crate::error::{BoxError, ProxyError};
use crate::http::{
    BoxFuture, CLIENT_ID_HEADER, ConnInfo, ORIG_PROTO_HEADER, Shared, TARGET_PORT_HEADER,
    request_authority, upstream,
};
use crate::vocab::Direction;

/// Sends each request to the application.
#[derive(Clone, Debug)]
pub struct App {
    shared: Arc<Shared>,
}

impl App {
    /// Sends to the application through `shared`'s connection pools.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The application address a request goes to: the redirect's original
    /// destination, else the port a peer proxy named on this pod's address, else the
    /// configured application address. Never one of the proxy's own ports.
    fn target(
        &self,
        conn: Option<&ConnInfo>,
        req: &Request<BoxBody>,
    ) -> Result<SocketAddr, ProxyError> {
        let mtls = self.shared.endpoints.mtls();
        let addr = match conn.and_then(|c| Some((c, named_port(c, req, mtls)?))) {
            Some((c, port)) => {
                // Not the admin port, say, on any of the proxy's addresses.
                if self.shared.own_addrs.iter().any(|o| o.port() == port) {
                    return Err(ProxyError::Loop);
                }
                SocketAddr::new(c.local.ip(), port)
            }
            None => conn
                .and_then(|c| c.target)
                .ok_or_else(|| ProxyError::NoEndpoints("application".into()))?,
        };
        if self.shared.is_own(addr) {
            return Err(ProxyError::Loop);
        }
        Ok(addr)
    }

    async fn send(self, mut req: Request<BoxBody>) -> Result<Response<BoxBody>, ProxyError> {
        let conn = req.extensions_mut().remove::<ConnInfo>();
        let addr = self.target(conn.as_ref(), &req)?;
        let headers = req.headers_mut();
        headers.remove(TARGET_PORT_HEADER);
        // The application learns the client's identity from us alone.
        headers.remove(CLIENT_ID_HEADER);
        if let Some(id) = conn.as_ref().and_then(|c| c.peer.id.as_deref())
            && let Ok(v) = HeaderValue::from_str(id)
        {
            headers.insert(CLIENT_ID_HEADER, v);
        }
        // An HTTP/1 request a peer carried over HTTP/2 goes to the app as HTTP/1.
        if headers.remove(ORIG_PROTO_HEADER).is_some() && req.version() == HttpVersion::HTTP_2 {
            *req.version_mut() = HttpVersion::HTTP_11;
        }
        let version = if req.version() == HttpVersion::HTTP_2 {
            Version::Http2
        } else {
            Version::Http1
        };
        let endpoint = self
            .shared
            .endpoints
            .get(addr, version, Direction::Inbound, None);
        let connection = endpoint.connection().await?;
        let authority = request_authority(&req).map(str::to_owned);
        upstream::send(
            &endpoint,
            connection,
            req,
            authority.as_deref(),
            conn.map(|c| c.hold),
        )
        .await
    }
}

impl Service<Request<BoxBody>> for App {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await.map_err(Into::into) })
    }
}
