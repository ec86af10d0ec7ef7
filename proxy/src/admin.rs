//! The admin server: `/metrics`, `/stats`, `/live`, `/ready`, `POST /shutdown` and
//! `/tap` (the last two for processes on loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::body::{self, BoxBody};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::origins::Origins;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server reads and controls.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The proxy's identity, for readiness.
    pub identity: Option<Arc<Identity>>,
    /// The metrics served.
    pub metrics: Arc<Metrics>,
    /// The proxy's own upstream connections: requests arriving on one of them were
    /// relayed by the proxy itself and are refused.
    pub origins: Arc<Origins>,
    /// Whether the proxy is draining.
    pub drain: watch::Receiver<bool>,
    /// Where `POST /shutdown` sends, when the endpoint is enabled.
    pub shutdown: Option<mpsc::Sender<()>>,
}

/// Serves admin requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let local = stream.local_addr().ok();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let relayed = local.is_some_and(|l| admin.origins.contains(client, l));
                let rsp = route(&req, client, relayed, &admin);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn route(
    req: &Request<Incoming>,
    client: SocketAddr,
    relayed: bool,
    admin: &Admin,
) -> Response<BoxBody> {
    let text = |status: StatusCode, body: &str| {
        let mut rsp = Response::new(body::full(Bytes::from(format!("{body}\n"))));
        *rsp.status_mut() = status;
        rsp
    };
    // Relayed by this proxy's outbound side (`curl -x proxy http://0.0.0.0:4191/…`):
    // whoever asked is not the process it appears to be, so nothing is answered.
    if relayed {
        tracing::warn!(%client, path = req.uri().path(), "admin request relayed by the proxy itself refused");
        return text(
            StatusCode::FORBIDDEN,
            "admin requests relayed by the proxy itself are refused",
        );
    }
    let (metrics, drain) = (&admin.metrics, &admin.drain);
    let identity_ready = admin.identity.as_ref().is_none_or(|i| i.is_ready());
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut rsp = Response::new(body::full(Bytes::from(metrics.render())));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(OPENMETRICS),
            );
            rsp
        }
        (&Method::GET, "/stats") => {
            let stats = metrics.stats(crate::metrics::instance());
            let body = serde_json::to_vec(&stats).unwrap_or_else(|_| b"{}".to_vec());
            let mut rsp = Response::new(body::full(Bytes::from(body)));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "live"),
        (&Method::GET, "/ready") if *drain.borrow() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        (&Method::GET, "/ready") if !identity_ready => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for a certificate from the identity service",
        ),
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready"),
        (&Method::POST, "/shutdown") => match &admin.shutdown {
            None => text(
                StatusCode::FORBIDDEN,
                "the shutdown endpoint is disabled (MESH_PROXY_SHUTDOWN_ENDPOINT_ENABLED)",
            ),
            // Only a process in the pod may stop the proxy.
            Some(_) if !client.ip().to_canonical().is_loopback() => text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from localhost",
            ),
            Some(shutdown) => {
                let _ = shutdown.try_send(());
                text(StatusCode::OK, "shutdown")
            }
        },
        // Live calls: a process in the pod may watch them (`mesh viz tap` through
        // viz uses the tap port, over mTLS).
        (_, "/tap") if !client.ip().to_canonical().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "tap is served here only to localhost; viz taps over mTLS on the tap port",
        ),
        (_, "/tap") => metrics.taps.respond(req),
        (_, "/metrics" | "/stats" | "/live" | "/ready" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /stats, /live, /ready, /tap or POST /shutdown",
        ),
    }
}
