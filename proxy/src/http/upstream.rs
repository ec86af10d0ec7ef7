//! One request sent on one connection to one endpoint, as both directions send them:
//! the head made fit for the connection's protocol, an HTTP/1 request carried over a
//! meshed HTTP/2 connection marked as such, and an upgraded connection carried on.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Version as HttpVersion};
use hyper_util::rt::TokioIo;

use super::Hold;
use super::headers::{ORIG_PROTO_HEADER, is_upgrade, normalize_request};
use crate::body::{self, BoxBody};
use crate::client::{Conn, Endpoint, Version};
use crate::error::ProxyError;

/// Sends `req` for `authority` on `conn`, a connection to `endpoint`, and returns the
/// response head. `hold` is kept by an upgraded tunnel for as long as it is open.
pub async fn send(
    endpoint: &Endpoint,
    conn: Conn,
    mut req: Request<BoxBody>,
    authority: Option<&str>,
    hold: Option<Arc<Hold>>,
) -> Result<Response<BoxBody>, ProxyError> {
    let http1 = req.version() != HttpVersion::HTTP_2;
    let upgrade = (http1 && is_upgrade(req.headers())).then(|| hyper::upgrade::on(&mut req));
    let carried = http1 && endpoint.version() == Version::Http2;
    if carried {
        *req.version_mut() = HttpVersion::HTTP_2;
        req.headers_mut()
            .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
    }
    normalize_request(&mut req, authority, endpoint.addr);
    let mut rsp = endpoint.send(conn, req).await?;
    if carried {
        *rsp.version_mut() = HttpVersion::HTTP_11;
    }
    if let Some(client) = upgrade
        && rsp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let server = hyper::upgrade::on(&mut rsp);
        tokio::spawn(async move {
            tunnel(client, server).await;
            drop(hold);
        });
    }
    Ok(rsp.map(body::boxed))
}

/// Carries the bytes of an upgraded connection (e.g. a WebSocket) both ways.
async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((client, server)) => {
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(%error, "upgraded connection closed");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
}
