//! The proxy's own mTLS identity: a P-256 key made in memory (never written, never
//! sent), a certificate obtained from the identity service with the pod's
//! service-account token and renewed at about 70% of its life, and the TLS settings
//! both directions use with it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::identity_api::CertifyRequest;
use mesh_api::identity_api::identity_client::IdentityClient;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::sync::watch;

/// ALPN protocol names the proxies negotiate between themselves.
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/1.1 over TLS: upgrades (WebSocket) that cannot ride HTTP/2.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Opaque TCP between proxies: a transport header naming the target port, then the
/// connection's bytes ([`crate::tcp::TRANSPORT_MAGIC`]).
pub const ALPN_OPAQUE: &[u8] = b"mesh.tcp/1";

/// Why the identity could not be set up or renewed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A setting is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// TLS or certificate handling failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The key or CSR could not be made.
    #[error("key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The identity service refused or could not be reached.
    #[error("identity service: {0}")]
    Certify(String),
}

/// How to reach the identity service and what to ask it for.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The identity service's `host:port`.
    pub addr: String,
    /// This proxy's identity (`SA.NS.serviceaccount.identity.mesh.cluster.local`).
    pub name: String,
    /// The name the identity service's certificate must carry.
    pub service_name: String,
    /// Trust anchors, PEM.
    pub trust_anchors: Vec<u8>,
    /// The service-account token file, read at every renewal (tokens rotate).
    pub token_path: PathBuf,
}

/// The current certificate, shared by the TLS configs of both directions.
#[derive(Debug, Default)]
struct Current(RwLock<Option<Arc<CertifiedKey>>>);

impl Current {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The proxy's identity and its TLS settings.
pub struct Identity {
    name: String,
    current: Arc<Current>,
    ready: watch::Sender<bool>,
    server: Arc<ServerConfig>,
    client_h2: Arc<ClientConfig>,
    client_h1: Arc<ClientConfig>,
    client_opaque: Arc<ClientConfig>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

/// The crypto provider every TLS config in the proxy uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors given as PEM text, or as the path of a PEM file; `setting` names the
/// setting in the error.
pub fn read_anchors(value: &str, setting: &str) -> Result<Vec<u8>, String> {
    if value.trim_start().starts_with("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value).map_err(|e| format!("cannot read {setting} file {value}: {e}"))
    }
}

/// Parses a PEM trust-anchor bundle into a root store.
pub fn root_store(pem: &[u8]) -> Result<RootCertStore, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| IdentityError::Config(format!("trust anchors: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(IdentityError::Config(
            "trust anchors: no PEM certificate found".into(),
        ));
    }
    Ok(roots)
}

/// The first DNS name of a verified peer certificate: its identity.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_owned)
}

impl Identity {
    /// TLS settings for `name`, trusting `trust_anchors`; no certificate yet.
    pub fn new(name: &str, trust_anchors: &[u8]) -> Result<Self, IdentityError> {
        ServerName::try_from(name.to_owned())
            .map_err(|_| IdentityError::Config(format!("invalid identity name {name:?}")))?;
        let roots = Arc::new(root_store(trust_anchors)?);
        let provider = provider();
        let current = Arc::new(Current::default());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| IdentityError::Config(format!("client verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(current.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_OPAQUE.to_vec()];
        let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, IdentityError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots.clone())
                .with_client_cert_resolver(current.clone());
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        let (ready, _) = watch::channel(false);
        Ok(Self {
            name: name.to_owned(),
            client_h2: client(ALPN_H2)?,
            client_h1: client(ALPN_HTTP1)?,
            client_opaque: client(ALPN_OPAQUE)?,
            server: Arc::new(server),
            current,
            ready,
            roots,
            provider,
        })
    }

    /// This proxy's identity name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a certificate is in place.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once a certificate is in place.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The TLS settings for inbound connections from peers.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The TLS settings for connecting to a peer, offering HTTP/2 or HTTP/1.1.
    pub fn client_config(&self, h2: bool) -> Arc<ClientConfig> {
        if h2 {
            self.client_h2.clone()
        } else {
            self.client_h1.clone()
        }
    }

    /// The TLS settings for carrying an opaque connection to a peer.
    pub fn client_config_opaque(&self) -> Arc<ClientConfig> {
        self.client_opaque.clone()
    }

    /// Installs a certificate chain for `key`, after checking that it chains to the
    /// trust anchors, names this identity, and matches the key.
    pub fn install(
        &self,
        key: &KeyPair,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<(), IdentityError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(IdentityError::Certify("empty certificate chain".into()));
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| IdentityError::Config(e.to_string()))?;
        let name = ServerName::try_from(self.name.clone())
            .map_err(|_| IdentityError::Config(format!("invalid identity {:?}", self.name)))?;
        verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = self.provider.key_provider.load_private_key(der)?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match()?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        self.ready.send_replace(true);
        Ok(())
    }

    /// Obtains a certificate, then renews it for as long as the proxy runs: at about
    /// 70% of its lifetime, with jittered exponential backoff on failure. The current
    /// certificate stays in use until its successor is installed.
    pub async fn run(self: Arc<Self>, settings: Settings) {
        let client = match identity_client(&settings) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "cannot set up the identity client; no certificate");
                return;
            }
        };
        let key = match KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256) {
            Ok(k) => k,
            Err(error) => {
                tracing::error!(%error, "cannot generate a key; no certificate");
                return;
            }
        };
        let csr = match csr(&self.name, &key) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "cannot build the certificate request");
                return;
            }
        };
        let mut backoff = Duration::from_millis(500);
        let mut expires: Option<SystemTime> = None;
        loop {
            let wait = match self.renew(client.clone(), &settings, &key, &csr).await {
                Ok(valid_until) => {
                    expires = Some(valid_until);
                    backoff = Duration::from_millis(500);
                    let left = valid_until
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    // 70% of what is left, ±5% so that a fleet does not renew in step.
                    left.mul_f64(0.70 + (fastrand::f64() - 0.5) * 0.10)
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "certificate request failed");
                    // Past its expiry the certificate is useless to peers: say so.
                    if expires.is_some_and(|e| e <= SystemTime::now()) && self.is_ready() {
                        tracing::error!(
                            "the certificate expired before it could be renewed; not ready"
                        );
                        self.ready.send_replace(false);
                    }
                    let wait = backoff.mul_f64(0.5 + fastrand::f64());
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }

    async fn renew(
        &self,
        mut client: IdentityClient<tonic::transport::Channel>,
        settings: &Settings,
        key: &KeyPair,
        csr: &[u8],
    ) -> Result<SystemTime, IdentityError> {
        let token = std::fs::read(&settings.token_path).map_err(|e| {
            IdentityError::Config(format!(
                "cannot read the token {}: {e}",
                settings.token_path.display()
            ))
        })?;
        let rsp = client
            .certify(CertifyRequest {
                identity: self.name.clone(),
                token,
                certificate_signing_request: csr.to_vec(),
            })
            .await
            .map_err(|s| IdentityError::Certify(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let mut chain = vec![CertificateDer::from(rsp.leaf_certificate)];
        chain.extend(
            rsp.intermediate_certificates
                .into_iter()
                .map(CertificateDer::from),
        );
        let serial = webpki_serial(&chain[0]);
        self.install(key, chain)?;
        let valid_until = UNIX_EPOCH + Duration::from_millis(rsp.valid_until_unix_ms);
        tracing::info!(identity = %self.name, %serial, expires_in = ?valid_until.duration_since(SystemTime::now()).unwrap_or_default(), "certificate installed");
        Ok(valid_until)
    }
}

/// The certificate's serial number in hex, for logs.
fn webpki_serial(cert: &CertificateDer<'_>) -> String {
    // The serial is the first INTEGER after the optional version in tbsCertificate;
    // logging is best-effort, so a parse failure just prints "?".
    fn inner(der: &[u8]) -> Option<String> {
        let (_, rest) = der_header(der)?; // Certificate SEQUENCE
        let (_, tbs) = der_header(rest)?; // tbsCertificate SEQUENCE
        let mut tbs = tbs;
        if tbs.first() == Some(&0xa0) {
            let (len, body) = der_header(tbs)?;
            tbs = body.get(len..)?;
        }
        if tbs.first() != Some(&0x02) {
            return None;
        }
        let (len, body) = der_header(tbs)?;
        Some(
            body.get(..len)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }
    inner(cert).unwrap_or_else(|| "?".into())
}

/// Reads a DER tag and length; returns the length and the bytes after the header.
fn der_header(der: &[u8]) -> Option<(usize, &[u8])> {
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some((usize::from(first), der.get(2..)?));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let len = der
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    Some((len, der.get(2 + n..)?))
}

/// The CSR this proxy sends: its identity as common name and DNS SAN.
fn csr(name: &str, key: &KeyPair) -> Result<Vec<u8>, IdentityError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// A gRPC client for the identity service over TLS, verified against the trust anchors
/// and the service's own identity name.
fn identity_client(
    settings: &Settings,
) -> Result<IdentityClient<tonic::transport::Channel>, IdentityError> {
    let roots = root_store(&settings.trust_anchors)?;
    let mut tls = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_H2.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(settings.service_name.clone()).map_err(|_| {
        IdentityError::Config(format!(
            "invalid identity service name {:?}",
            settings.service_name
        ))
    })?;
    let addr = settings.addr.clone();
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, server_name, addr) = (connector.clone(), server_name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://mesh-identity")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connect);
    Ok(IdentityClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_serials() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec!["a.example".into()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0xcd]));
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(webpki_serial(cert.der()), "01abcd");
        assert_eq!(webpki_serial(&CertificateDer::from(vec![0x30])), "?");
    }

    #[test]
    fn bad_trust_anchors_are_named() {
        let err = Identity::new("a.b.serviceaccount.identity.mesh.cluster.local", b"junk")
            .expect_err("no anchors");
        assert!(err.to_string().contains("trust anchors"), "{err}");
    }
}
