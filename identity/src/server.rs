//! Serving: the issuer reloaded from its files, the gRPC service over TLS with a
//! certificate the service issues itself, and the admin server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

use crate::ca::Issuer;

/// Where the issuer comes from, and how often its files are checked for changes.
#[derive(Clone, Debug)]
pub struct IssuerSource {
    /// The CA folder (`tls.crt`, `tls.key`, and `ca.crt` unless `anchors` is set).
    pub dir: PathBuf,
    /// A separate trust-anchor bundle.
    pub anchors: Option<PathBuf>,
    /// How often the files are checked.
    pub interval: Duration,
}

impl IssuerSource {
    fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut paths = vec![
            self.dir.join(crate::ca::ISSUER_CERT_FILE),
            self.dir.join(crate::ca::ISSUER_KEY_FILE),
        ];
        paths.push(
            self.anchors
                .clone()
                .unwrap_or_else(|| self.dir.join(crate::ca::TRUST_ANCHORS_FILE)),
        );
        paths
            .into_iter()
            .map(|p| {
                // Kubernetes swaps a mounted Secret's files through a symlink: follow it.
                let meta = std::fs::metadata(&p).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map_or(0, |m| m.len());
                (p, modified, len)
            })
            .collect()
    }

    /// Loads the issuer once.
    pub fn load(&self) -> Result<Issuer, crate::ca::CaError> {
        Issuer::load(&self.dir, self.anchors.as_deref())
    }

    /// Watches the files, sending each new valid issuer; an invalid one is logged and
    /// the last good issuer stays in force.
    pub async fn watch(self, tx: watch::Sender<Arc<Issuer>>, on_load: impl Fn(&Issuer)) {
        let mut seen = self.fingerprint();
        loop {
            tokio::time::sleep(self.interval).await;
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            match self.load() {
                Ok(issuer) => {
                    tracing::info!(dir = %self.dir.display(), "issuer reloaded");
                    on_load(&issuer);
                    let _ = tx.send(Arc::new(issuer));
                }
                Err(error) => tracing::warn!(
                    %error,
                    dir = %self.dir.display(),
                    "new issuer files are invalid; keeping the current issuer"
                ),
            }
        }
    }
}

/// The service's own certificate, swapped when the issuer changes or it ages.
#[derive(Debug)]
struct OwnCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn certified_key(issuer: &Issuer, namespace: &str) -> anyhow::Result<CertifiedKey> {
    let (key, issued) = issuer
        .self_certify("mesh-identity", namespace, Duration::from_secs(24 * 3600))
        .map_err(|e| anyhow::anyhow!("cannot issue the identity service's own certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&key)?;
    let mut chain = vec![issued.leaf];
    chain.extend(issued.intermediates);
    Ok(CertifiedKey::new(chain, signer))
}

/// Builds the TLS config the gRPC server uses, with its certificate kept current.
pub fn tls_config(
    mut issuer: watch::Receiver<Arc<Issuer>>,
    namespace: String,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let own = Arc::new(OwnCert(RwLock::new(None)));
    let first = certified_key(&issuer.borrow_and_update(), &namespace)?;
    *own.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(first));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(own.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Renew on every issuer change, and twice a day anyway.
    tokio::spawn(async move {
        loop {
            let changed = tokio::select! {
                r = issuer.changed() => r.is_ok(),
                () = tokio::time::sleep(Duration::from_secs(12 * 3600)) => true,
            };
            if !changed {
                return;
            }
            match certified_key(&issuer.borrow_and_update(), &namespace) {
                Ok(key) => *own.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key)),
                Err(error) => tracing::warn!(%error, "keeping the current server certificate"),
            }
        }
    });
    Ok(Arc::new(config))
}

/// A TLS connection, as tonic's server wants it.
pub struct TlsConn(pub TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop, yielding
/// the connections whose handshake succeeded.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, client) = match listener.accept().await {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, %client, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serves `/metrics`, `/live` and `/ready` on `listener`.
pub async fn admin(listener: TcpListener, registry: Arc<prometheus_client::registry::Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let rsp = admin_route(&req, &registry);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn admin_route<B>(
    req: &Request<B>,
    registry: &prometheus_client::registry::Registry,
) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (StatusCode::OK, out),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode metrics\n".into(),
                ),
            }
        }
        (&Method::GET, "/live" | "/ready") => (StatusCode::OK, "ok\n".into()),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /live or /ready\n".into(),
        ),
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp
}
