//! Starts the real `mesh-identity` binary over a fresh CA, hands out service-account
//! tokens, and speaks TLS to proxies as a test client would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_identity::ca::{self, GeneratedCa};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

/// A fresh trust anchor and issuer, valid for a day, written to `dir`.
pub fn new_ca(dir: &Path) -> GeneratedCa {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let generated = ca::generate(Duration::from_secs(86_400), Duration::from_secs(86_400))
        .expect("generate CA");
    ca::write(dir, &generated).expect("write CA");
    generated
}

/// A running identity service; killed when dropped.
#[derive(Debug)]
pub struct Identity {
    /// The gRPC (TLS) address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin: SocketAddr,
    /// The CA folder it issues from.
    pub ca_dir: PathBuf,
    /// The trust-anchor bundle proxies are given.
    pub anchors: PathBuf,
    /// Where tokens live: the token file and one file per token.
    pub work: PathBuf,
    tokens: Mutex<Vec<String>>,
    lifetime: String,
    env: Vec<(String, String)>,
    child: tokio::sync::Mutex<Child>,
}

/// Starts `mesh-identity` issuing from `ca_dir` (trust anchors from `anchors`, default
/// `ca_dir/ca.crt`) with leaves living `lifetime` (e.g. `1m`), tokens in `work`.
pub async fn start(ca_dir: &Path, anchors: Option<&Path>, lifetime: &str, work: &Path) -> Identity {
    start_with(ca_dir, anchors, lifetime, work, &[]).await
}

/// [`start`], with extra `MESH_IDENTITY_*` variables (`("RATE_PER_TOKEN", "3")`).
pub async fn start_with(
    ca_dir: &Path,
    anchors: Option<&Path>,
    lifetime: &str,
    work: &Path,
    env: &[(&str, &str)],
) -> Identity {
    let tokens_file = work.join("tokens.yaml");
    std::fs::write(&tokens_file, "tokens: []\n").expect("write tokens");
    let anchors = anchors.map_or_else(|| ca_dir.join(ca::TRUST_ANCHORS_FILE), Path::to_path_buf);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (child, addr, admin) = spawn(ca_dir, &anchors, work, lifetime, &env, any, any).await;
    Identity {
        addr,
        admin,
        ca_dir: ca_dir.to_path_buf(),
        anchors,
        work: work.to_path_buf(),
        tokens: Mutex::new(Vec::new()),
        lifetime: lifetime.to_owned(),
        env,
        child: tokio::sync::Mutex::new(child),
    }
}

/// Starts the `mesh-identity` process; returns it and its two addresses.
async fn spawn(
    ca_dir: &Path,
    anchors: &Path,
    work: &Path,
    lifetime: &str,
    env: &[(String, String)],
    addr: SocketAddr,
    admin: SocketAddr,
) -> (Child, SocketAddr, SocketAddr) {
    let mut cmd = crate::command("mesh-identity");
    cmd.env_clear()
        .env("MESH_IDENTITY_ADDR", addr.to_string())
        .env("MESH_IDENTITY_ADMIN_ADDR", admin.to_string())
        .env("MESH_IDENTITY_ISSUER_DIR", ca_dir)
        .env("MESH_IDENTITY_TRUST_ANCHORS", anchors)
        .env(
            "MESH_IDENTITY_TOKENS",
            format!("file:{}", work.join("tokens.yaml").display()),
        )
        .env("MESH_IDENTITY_CERT_LIFETIME", lifetime)
        .env("MESH_IDENTITY_RELOAD_INTERVAL", "1s")
        .env("MESH_IDENTITY_LOG", "info")
        .envs(env.iter().map(|(k, v)| (format!("MESH_IDENTITY_{k}"), v)));
    let (child, line) = crate::spawn_listening(cmd, "identity").await;
    (
        child,
        crate::field(&line, "identity"),
        crate::field(&line, "admin"),
    )
}

impl Identity {
    /// Kills the service and starts it again on the same addresses, with the same
    /// tokens and settings.
    pub async fn restart(&self) {
        let mut child = self.child.lock().await;
        let _ = child.kill().await;
        let (again, _, _) = spawn(
            &self.ca_dir,
            &self.anchors,
            &self.work,
            &self.lifetime,
            &self.env,
            self.addr,
            self.admin,
        )
        .await;
        *child = again;
    }

    /// Registers a token for service account `sa` in `ns` (optionally already expired)
    /// and returns it with the path of a file holding it.
    pub fn token(&self, sa: &str, ns: &str, expired: bool) -> (String, PathBuf) {
        let token = format!("{sa}-{ns}-{:016x}", fastrand_u64());
        let mut tokens = self.tokens.lock().expect("lock");
        let expires = if expired {
            "\n  expiresAt: 2020-01-01T00:00:00Z"
        } else {
            ""
        };
        tokens.push(format!(
            "- token: {token}\n  namespace: {ns}\n  serviceAccount: {sa}{expires}\n"
        ));
        std::fs::write(
            self.work.join("tokens.yaml"),
            format!("tokens:\n{}", tokens.concat()),
        )
        .expect("write tokens");
        let path = self.work.join(format!("{token}.token"));
        std::fs::write(&path, &token).expect("write token");
        (token, path)
    }

    /// Configures `proxy` to run as service account `sa` in `ns` with mTLS.
    pub fn proxy(&self, proxy: crate::proxy::Builder, sa: &str, ns: &str) -> crate::proxy::Builder {
        let (_, token) = self.token(sa, ns, false);
        proxy
            .env("IDENTITY_ADDR", self.addr)
            .env("IDENTITY_NAME", mesh_api::identity::dns_name(sa, ns))
            .env("TRUST_ANCHORS", self.anchors.display())
            .env("TOKEN_PATH", token.display())
            .env("NAMESPACE", ns)
    }

    /// The text of the admin `/metrics`.
    pub async fn metrics(&self) -> String {
        let rsp = crate::client::get(self.admin, "admin", "/metrics").await;
        assert_eq!(rsp.status, 200);
        rsp.text()
    }

    /// Stops the service.
    pub async fn kill(self) {
        let _ = self.child.into_inner().kill().await;
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A client certificate: chain and key.
pub struct ClientCert {
    /// Leaf first, then the issuer.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// Issues a client certificate for `sa`.`ns` from the CA in `ca_dir`, valid from
/// `not_before` for `lifetime` (use a past window for an expired certificate).
pub fn client_cert(
    ca_dir: &Path,
    sa: &str,
    ns: &str,
    not_before: std::time::SystemTime,
    lifetime: Duration,
) -> ClientCert {
    let issuer = mesh_identity::ca::Issuer::load(ca_dir, None).expect("load issuer");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let dns = mesh_api::identity::dns_name(sa, ns);
    let csr = ca::csr_params(&dns)
        .and_then(|p| p.serialize_request(&key))
        .expect("csr");
    let issued = issuer
        .certify(csr.der(), sa, ns, lifetime, Duration::ZERO, not_before)
        .expect("certify");
    let mut chain = vec![issued.leaf];
    chain.extend(issued.intermediates);
    ClientCert {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Accepts any server certificate and remembers the chain (the test inspects it).
#[derive(Debug, Default)]
struct Capture(Mutex<Vec<CertificateDer<'static>>>);

impl rustls::client::danger::ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.0.lock().expect("lock") = chain;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a TLS client saw of a proxy's inbound port.
#[derive(Debug)]
pub struct Probe {
    /// The chain the server presented (empty if the handshake failed before).
    pub server_chain: Vec<CertificateDer<'static>>,
    /// The HTTP/1.1 response's head and body, or why there was none.
    pub response: Result<String, String>,
}

impl Probe {
    /// The presented leaf's serial number, in hex.
    pub fn serial(&self) -> String {
        let leaf = self
            .server_chain
            .first()
            .expect("server presented a certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("parse leaf");
        cert.raw_serial_as_string()
    }
}

/// Connects to `addr` with TLS naming `sni`, presenting `cert` (or none), and sends
/// `GET path` over HTTP/1.1 (ALPN http/1.1).
pub async fn probe(addr: SocketAddr, sni: &str, cert: Option<&ClientCert>, path: &str) -> Probe {
    probe_with(addr, sni, cert, path, "").await
}

/// [`probe`] with extra request header lines (each ending in `\r\n`).
pub async fn probe_with(
    addr: SocketAddr,
    sni: &str,
    cert: Option<&ClientCert>,
    path: &str,
    headers: &str,
) -> Probe {
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\n{headers}connection: close\r\n\r\n");
    probe_raw(addr, sni, cert, &[b"http/1.1"], request.as_bytes()).await
}

/// Connects with TLS 1.3 offering `alpn` (none when empty), sends `request` as it is
/// and reads the answer until the server closes.
pub async fn probe_raw(
    addr: SocketAddr,
    sni: &str,
    cert: Option<&ClientCert>,
    alpn: &[&[u8]],
    request: &[u8],
) -> Probe {
    let capture = Arc::new(Capture::default());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(capture.clone());
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let response = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
            .await
            .map_err(|_| "read timed out".to_owned())?;
        match read {
            Ok(_) if out.is_empty() => Err("closed without a response".to_owned()),
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Err(e) if out.is_empty() => Err(format!("read: {e}")),
            // A close_notify-less close after a whole response is still a response.
            Err(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }
    .await;
    let server_chain = capture.0.lock().expect("lock").clone();
    Probe {
        server_chain,
        response,
    }
}

/// The first flight of a TLS client asking for `sni`: a real ClientHello.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

/// Whether `chain` (leaf first) verifies for `name` against the anchors in `pem`.
pub fn verifies(chain: &[CertificateDer<'static>], name: &str, anchors_pem: &[u8]) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca::parse_certs("anchors", anchors_pem).expect("anchors") {
        roots.add(cert).expect("root");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    use rustls::client::danger::ServerCertVerifier as _;
    let name = ServerName::try_from(name.to_owned()).expect("name");
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

/// A gRPC client for the identity service over TLS, trusting `anchors_pem` and
/// checking the service's own identity (`mesh-identity.mesh`).
pub async fn grpc_client(
    addr: SocketAddr,
    anchors_pem: &[u8],
) -> mesh_api::identity_api::identity_client::IdentityClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca::parse_certs("anchors", anchors_pem).expect("anchors") {
        roots.add(cert).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(mesh_api::identity::service_name("mesh")).expect("name");
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://identity")
        .connect_with_connector(connect)
        .await
        .expect("connect to mesh-identity over TLS");
    mesh_api::identity_api::identity_client::IdentityClient::new(channel)
}

/// Calls `Certify`.
pub async fn certify(
    client: &mut mesh_api::identity_api::identity_client::IdentityClient<tonic::transport::Channel>,
    token: &str,
    identity: &str,
    csr: &[u8],
) -> Result<mesh_api::identity_api::CertifyResponse, tonic::Status> {
    client
        .certify(mesh_api::identity_api::CertifyRequest {
            identity: identity.to_owned(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: csr.to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A CSR for `name` with a fresh key of algorithm `alg`.
pub fn csr(name: &str, alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    ca::csr_params(name)
        .and_then(|p| p.serialize_request(&key))
        .expect("csr")
        .der()
        .to_vec()
}

/// The CSR with one byte of its signed name changed: its signature no longer holds.
pub fn tamper(mut csr: Vec<u8>) -> Vec<u8> {
    let pos = csr
        .windows(15)
        .position(|w| w == b"serviceaccount.")
        .expect("a name in the CSR");
    csr[pos] = b'S';
    csr
}
