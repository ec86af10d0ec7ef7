//! The JWKS fetcher: RequestAuthentications' `jwksUri` documents, fetched by the
//! controller, cached and pushed to proxies inside their inbound policies (proxies
//! never reach out to issuers). A document is fetched when a URI is first named,
//! again every refresh interval, and retried with backoff while it fails; a failed
//! refresh keeps the last good document. A URI that was never fetched is reported in
//! the policy (`jwks_error`), so that its issuer's tokens are refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::Index;

/// The largest JWKS document taken.
pub const MAX_DOCUMENT: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between retries of a failing URI.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a JWKS document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI is not an `http` or `https` URL with a host.
    #[error("not an http(s) URL: {0}")]
    Uri(String),
    /// No address for the host.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with another status than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer is not a JWKS document (`{"keys": [...]}`).
    #[error("not a JWKS document: {0}")]
    Document(String),
}

/// How the fetcher reaches issuers.
#[derive(Clone, Debug)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
    /// `host:port` → the address to connect to instead of resolving the host (as
    /// curl's `--resolve`).
    resolve: HashMap<String, SocketAddr>,
    /// How often a fetched document is fetched again.
    pub refresh: Duration,
}

impl Fetcher {
    /// A fetcher trusting the system's roots and `extra_roots_pem`, with `resolve`
    /// overrides (`host:port` → address).
    pub fn new(
        extra_roots_pem: Option<&[u8]>,
        resolve: HashMap<String, SocketAddr>,
        refresh: Duration,
    ) -> Result<Self, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system root certificate could not be read");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system root certificates rustls cannot use");
        }
        if let Some(pem) = extra_roots_pem {
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("JWKS roots: {e}"))?;
                roots.add(cert).map_err(|e| format!("JWKS roots: {e}"))?;
                any = true;
            }
            if !any {
                return Err("JWKS roots: no certificate in the file".into());
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Arc::new(tls),
            resolve,
            refresh,
        })
    }

    /// Fetches and checks one document.
    pub async fn fetch(&self, uri: &str) -> Result<String, FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get(uri))
            .await
            .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
    }

    async fn get(&self, uri: &str) -> Result<String, FetchError> {
        let parsed: http::Uri = uri.parse().map_err(|_| FetchError::Uri(uri.into()))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Uri(uri.into())),
        };
        let host = parsed
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| FetchError::Uri(uri.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = match self.resolve.get(&format!("{host}:{port}")) {
            Some(a) => *a,
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| FetchError::Resolve(host.clone()))?,
        };
        let io = |e: &dyn std::fmt::Display| FetchError::Io(format!("{addr}: {e}"));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io(&e))?;
        let _ = tcp.set_nodelay(true);
        let path = parsed
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let authority = parsed
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "mesh-controller")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| io(&e))?;
        let response = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| FetchError::Uri(uri.into()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| io(&e))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
        .map_err(|e| io(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| io(&e))?
            .to_bytes();
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| FetchError::Document("not UTF-8".into()))?;
        check(&text)?;
        Ok(text)
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx.send_request(request).await
}

/// Whether `text` is a JWKS document with at least one key.
pub fn check(text: &str) -> Result<(), FetchError> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FetchError::Document(e.to_string()))?;
    match doc.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() => Ok(()),
        Some(_) => Err(FetchError::Document("no keys".into())),
        None => Err(FetchError::Document("no `keys` list".into())),
    }
}

/// When each URI is next fetched, and how long it waits after its next failure.
#[derive(Debug)]
struct Due {
    at: Instant,
    backoff: Duration,
}

/// Keeps the index's JWKS documents current for the URIs its objects name, until the
/// task is dropped.
pub async fn run(index: Arc<Index>, fetcher: Fetcher) {
    let mut due: HashMap<String, Due> = HashMap::new();
    loop {
        // Listen before reading, so that a URI named meanwhile is not missed.
        let wanted = index.jwks_wanted();
        let notified = wanted.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let uris = index.jwks_uris();
        due.retain(|u, _| uris.contains(u));
        let now = Instant::now();
        for uri in &uris {
            let d = due.entry(uri.clone()).or_insert(Due {
                at: now,
                backoff: Duration::from_secs(1),
            });
            if d.at > now {
                continue;
            }
            match fetcher.fetch(uri).await {
                Ok(doc) => {
                    tracing::info!(%uri, "fetched JWKS");
                    index.set_jwks(uri, Ok(doc));
                    d.at = Instant::now() + fetcher.refresh;
                    d.backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %e, retry = ?d.backoff, "cannot fetch JWKS");
                    // A refresh that fails keeps the last good document.
                    index.set_jwks_error(uri, e.to_string());
                    d.at = Instant::now() + d.backoff;
                    d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let next = due.values().map(|d| d.at).min();
        match next {
            Some(at) => {
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_need_keys() {
        assert!(check(r#"{"keys": [{"kty": "EC"}]}"#).is_ok());
        assert!(check(r#"{"keys": []}"#).is_err());
        assert!(check(r#"{"key": 1}"#).is_err());
        assert!(check("<html>").is_err());
    }

    #[tokio::test]
    async fn bad_uris_and_unreachable_hosts_are_errors() {
        let f = Fetcher::new(None, HashMap::new(), Duration::from_secs(60)).expect("fetcher");
        assert!(matches!(
            f.fetch("ftp://x/jwks").await,
            Err(FetchError::Uri(_))
        ));
        // A port nothing listens on, on loopback.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let f = Fetcher::new(
            None,
            HashMap::from([("issuer.example:443".to_string(), addr)]),
            Duration::from_secs(60),
        )
        .expect("fetcher");
        assert!(matches!(
            f.fetch("https://issuer.example/jwks.json").await,
            Err(FetchError::Io(_))
        ));
    }
}
