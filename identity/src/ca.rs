//! The certificate authority: trust anchors, the issuer, and leaves issued from CSRs.
//!
//! The chain is trust anchor (root) → issuer (intermediate, held by `mesh-identity`) →
//! leaf per proxy. Certificates are built with rcgen and parsed with x509-parser.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

/// File names in a CA folder, as in a Kubernetes TLS Secret mounted as files.
pub const TRUST_ANCHORS_FILE: &str = "ca.crt";
/// The issuer's certificate.
pub const ISSUER_CERT_FILE: &str = "tls.crt";
/// The issuer's private key (PKCS#8 PEM).
pub const ISSUER_KEY_FILE: &str = "tls.key";

/// Why a CA could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate or key is unusable.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which certificate or key.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(what: impl Into<String>, reason: impl ToString) -> CaError {
    CaError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A freshly generated trust anchor and issuer, PEM-encoded.
#[derive(Clone, Debug)]
pub struct GeneratedCa {
    /// The trust anchor (root) certificate.
    pub trust_anchor_pem: String,
    /// The issuer (intermediate) certificate, signed by the anchor.
    pub issuer_cert_pem: String,
    /// The issuer's private key.
    pub issuer_key_pem: String,
    /// The trust anchor's private key: needed only to sign the next issuer; keep it
    /// offline, away from mesh-identity.
    pub trust_anchor_key_pem: String,
}

/// Random, positive 128-bit serial numbers from the crypto provider's CSPRNG.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| invalid("serial number", "no randomness available"))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(cn: &str, path_len: u8, lifetime: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Creates a trust anchor valid for `anchor_lifetime` and an issuer it signed, valid for
/// `issuer_lifetime`. Both use ECDSA P-256.
pub fn generate(
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
) -> Result<GeneratedCa, CaError> {
    let anchor_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| invalid("trust anchor key", e))?;
    let anchor_params = ca_params("root.mesh.cluster.local", 1, anchor_lifetime)?;
    let anchor = anchor_params
        .self_signed(&anchor_key)
        .map_err(|e| invalid("trust anchor", e))?;
    let trust_anchor_key_pem = anchor_key.serialize_pem();
    let anchor_issuer = rcgen::Issuer::new(anchor_params, anchor_key);
    generate_issuer(&anchor_issuer, issuer_lifetime).map(|(cert, key)| GeneratedCa {
        trust_anchor_pem: anchor.pem(),
        issuer_cert_pem: cert,
        issuer_key_pem: key,
        trust_anchor_key_pem,
    })
}

/// Creates an issuer signed by `anchor` (for rotating the issuer under the same
/// anchor): its certificate and key, PEM-encoded.
pub fn generate_issuer(
    anchor: &rcgen::Issuer<'_, KeyPair>,
    lifetime: Duration,
) -> Result<(String, String), CaError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| invalid("issuer key", e))?;
    let cert = ca_params("identity.mesh.cluster.local", 0, lifetime)?
        .signed_by(&key, anchor)
        .map_err(|e| invalid("issuer", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The trust anchor's key file, written beside a generated CA: not part of the issuer
/// Secret.
pub const TRUST_ANCHOR_KEY_FILE: &str = "ca.key";

/// Loads a trust anchor and its key (`ca.crt`, `ca.key`) to sign new issuers with.
pub fn load_anchor(dir: &Path) -> Result<rcgen::Issuer<'static, KeyPair>, CaError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
    };
    let key = KeyPair::from_pem(&read(TRUST_ANCHOR_KEY_FILE)?)
        .map_err(|e| invalid("trust anchor key", e))?;
    let certs = parse_certs("trust anchor", read(TRUST_ANCHORS_FILE)?.as_bytes())?;
    // The anchor whose key this is (the bundle may hold others).
    for cert in &certs {
        let Ok((_, x509)) = X509Certificate::from_der(cert) else {
            continue;
        };
        if x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
            return rcgen::Issuer::from_ca_cert_der(cert, key)
                .map_err(|e| invalid("trust anchor", e));
        }
    }
    Err(invalid(
        "trust anchor key",
        "matches no certificate in ca.crt",
    ))
}

/// Writes a CA folder: `ca.crt` (trust anchors), `tls.crt` and `tls.key` (issuer), and
/// `ca.key` (the anchor's key, for the next issuer). Keys are readable by their owner
/// only.
pub fn write(dir: &Path, ca: &GeneratedCa) -> Result<(), CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, text) in [
        (TRUST_ANCHORS_FILE, &ca.trust_anchor_pem),
        (ISSUER_CERT_FILE, &ca.issuer_cert_pem),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    for (name, key) in [
        (ISSUER_KEY_FILE, &ca.issuer_key_pem),
        (TRUST_ANCHOR_KEY_FILE, &ca.trust_anchor_key_pem),
    ] {
        let path = dir.join(name);
        write_private(&path, key.as_bytes()).map_err(io(&path))?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// The request a proxy makes for `dns`: that name as common name and DNS SAN.
pub fn csr_params(dns: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(vec![dns.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, dns);
    Ok(params)
}

/// Parses every certificate in a PEM bundle.
pub fn parse_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "no PEM certificate found"));
    }
    Ok(certs)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The issuer `mesh-identity` signs with, and the trust anchors it chains to.
pub struct Issuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    anchors: Vec<CertificateDer<'static>>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("not_after", &self.not_after)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// A leaf issued to a proxy.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf certificate (DER).
    pub leaf: CertificateDer<'static>,
    /// The issuer's certificate, to send along with the leaf.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

/// Why a CSR was refused. Each maps to a gRPC status and a metric reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// The CSR is not DER PKCS#10.
    #[error("malformed certificate signing request: {0}")]
    MalformedCsr(String),
    /// The CSR's signature does not verify with its own key.
    #[error("the certificate signing request's signature is invalid")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("unsupported key: {0}; an ECDSA P-256 key is required")]
    UnsupportedKey(String),
    /// The CSR asks for a name the token does not grant.
    #[error("the token's identity is {allowed}, but the request asks for {asked}")]
    WrongIdentity {
        /// The name asked for.
        asked: String,
        /// The name the token grants.
        allowed: String,
    },
    /// The issuer has expired (or is about to): it must be rotated.
    #[error("the issuer certificate expires at {0}: rotate the issuer")]
    IssuerExpired(String),
    /// Signing failed.
    #[error("cannot issue the certificate: {0}")]
    Internal(String),
}

impl Rejection {
    /// The `reason` label value in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedCsr(_) => "malformed_csr",
            Self::BadSignature => "bad_signature",
            Self::UnsupportedKey(_) => "unsupported_key",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::IssuerExpired(_) => "issuer_expired",
            Self::Internal(_) => "internal",
        }
    }
}

impl Issuer {
    /// Loads and checks an issuer: its certificate must be a CA whose key is `key_pem`,
    /// currently valid, and signed by one of `anchors_pem` (which may hold old and new
    /// anchors during a rotation).
    pub fn from_pem(anchors_pem: &[u8], cert_pem: &[u8], key_pem: &str) -> Result<Self, CaError> {
        let anchors = parse_certs("trust anchors", anchors_pem)?;
        let chain = parse_certs("issuer certificate", cert_pem)?;
        let cert = chain[0].clone();
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("issuer key", e))?;
        let (_, x509) =
            X509Certificate::from_der(&cert).map_err(|e| invalid("issuer certificate", e))?;
        if !x509.is_ca() {
            return Err(invalid(
                "issuer certificate",
                "not a CA certificate (basicConstraints CA:FALSE)",
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                "issuer key",
                "does not match the issuer certificate",
            ));
        }
        let now = SystemTime::now();
        let validity = x509.validity();
        if !validity.is_valid_at(
            x509_parser::time::ASN1Time::from_timestamp(unix(now))
                .map_err(|e| invalid("clock", e))?,
        ) {
            return Err(invalid(
                "issuer certificate",
                format!(
                    "not valid now (valid {} to {})",
                    validity.not_before, validity.not_after
                ),
            ));
        }
        let signed_by_anchor = anchors.iter().any(|a| {
            X509Certificate::from_der(a).is_ok_and(|(_, anchor)| {
                anchor.subject() == x509.issuer()
                    && x509.verify_signature(Some(anchor.public_key())).is_ok()
            })
        });
        if !signed_by_anchor {
            return Err(invalid(
                "issuer certificate",
                "not signed by any of the trust anchors",
            ));
        }
        let not_after = UNIX_EPOCH
            + Duration::from_secs(u64::try_from(validity.not_after.timestamp()).unwrap_or(0));
        let issuer = rcgen::Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| invalid("issuer certificate", e))?;
        Ok(Self {
            issuer,
            cert,
            anchors,
            not_after,
        })
    }

    /// Loads an issuer from a CA folder (`ca.crt`, `tls.crt`, `tls.key`), or with the
    /// trust anchors from another file.
    pub fn load(dir: &Path, anchors: Option<&Path>) -> Result<Self, CaError> {
        let read =
            |path: PathBuf| std::fs::read(&path).map_err(|source| CaError::Io { path, source });
        let anchors =
            read(anchors.map_or_else(|| dir.join(TRUST_ANCHORS_FILE), Path::to_path_buf))?;
        let cert = read(dir.join(ISSUER_CERT_FILE))?;
        let key = read(dir.join(ISSUER_KEY_FILE))?;
        let key = String::from_utf8(key).map_err(|_| invalid("issuer key", "not PEM text"))?;
        Self::from_pem(&anchors, &cert, &key)
    }

    /// When the issuer's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The issuer's certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The trust anchors the issuer chains to.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// Issues a leaf for `service_account` in `namespace` from `csr_der`, after checking
    /// that the CSR is well-formed, self-signed, carries a P-256 key, and asks for that
    /// identity and nothing else. Validity starts `skew` before `now` (clocks differ)
    /// and lasts `lifetime`, never past the issuer's own expiry.
    pub fn certify(
        &self,
        csr_der: &[u8],
        service_account: &str,
        namespace: &str,
        lifetime: Duration,
        skew: Duration,
        now: SystemTime,
    ) -> Result<Issued, Rejection> {
        // A leaf that would end before it starts (an expired issuer) helps no one.
        if self.not_after <= now + skew.max(Duration::from_secs(1)) {
            let when = time::OffsetDateTime::from(self.not_after);
            return Err(Rejection::IssuerExpired(when.to_string()));
        }
        let dns = mesh_api::identity::dns_name(service_account, namespace);
        let spiffe = mesh_api::identity::spiffe_id(service_account, namespace);
        let (rest, csr) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| Rejection::MalformedCsr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(Rejection::MalformedCsr(
                "trailing bytes after the request".into(),
            ));
        }
        csr.verify_signature()
            .map_err(|_| Rejection::BadSignature)?;
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            return Err(Rejection::UnsupportedKey(format!(
                "algorithm {}, parameters {}",
                spki.algorithm.algorithm,
                curve.map_or_else(|| "none".to_owned(), |c| c.to_string())
            )));
        }
        let wrong = |asked: String| Rejection::WrongIdentity {
            asked,
            allowed: dns.clone(),
        };
        for cn in info.subject.iter_common_name() {
            let cn = cn
                .as_str()
                .map_err(|e| Rejection::MalformedCsr(e.to_string()))?;
            if cn != dns {
                return Err(wrong(format!("common name {cn}")));
            }
        }
        let mut asked_dns = false;
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(n) if *n == dns => asked_dns = true,
                            GeneralName::URI(u) if *u == spiffe => {}
                            other => return Err(wrong(other.to_string())),
                        }
                    }
                }
                // Key usages and the like are decided by the CA, not the request.
                ParsedExtension::KeyUsage(_)
                | ParsedExtension::ExtendedKeyUsage(_)
                | ParsedExtension::BasicConstraints(_) => {}
                other => {
                    return Err(Rejection::MalformedCsr(format!(
                        "unsupported extension requested: {other:?}"
                    )));
                }
            }
        }
        if !asked_dns {
            return Err(wrong("no DNS name".into()));
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| Rejection::MalformedCsr(e.to_string()))?;

        let not_after = (now + lifetime).min(self.not_after);
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, dns.as_str());
        let internal = |e: rcgen::Error| Rejection::Internal(e.to_string());
        params.subject_alt_names = vec![
            SanType::DnsName(dns.clone().try_into().map_err(internal)?),
            SanType::URI(spiffe.try_into().map_err(internal)?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - skew).into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial().map_err(|e| Rejection::Internal(e.to_string()))?);
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(internal)?;
        Ok(Issued {
            leaf: leaf.der().clone(),
            intermediates: vec![self.cert.clone()],
            not_after,
        })
    }

    /// A key and certificate for the identity service itself (`service_account` in
    /// `namespace`), for its own TLS.
    pub fn self_certify(
        &self,
        service_account: &str,
        namespace: &str,
        lifetime: Duration,
    ) -> Result<(KeyPair, Issued), Rejection> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Rejection::Internal(e.to_string()))?;
        let dns = mesh_api::identity::dns_name(service_account, namespace);
        let csr = csr_params(&dns)
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| Rejection::Internal(e.to_string()))?;
        let now = SystemTime::now();
        let issued = self.certify(
            csr.der(),
            service_account,
            namespace,
            lifetime,
            Duration::from_secs(60),
            now,
        )?;
        Ok((key, issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

    const HOUR: Duration = Duration::from_secs(3600);

    fn issuer() -> (GeneratedCa, Issuer) {
        let ca = generate(10 * HOUR, 5 * HOUR).expect("generate");
        let issuer = Issuer::from_pem(
            ca.trust_anchor_pem.as_bytes(),
            ca.issuer_cert_pem.as_bytes(),
            &ca.issuer_key_pem,
        )
        .expect("load");
        (ca, issuer)
    }

    fn csr(names: Vec<String>, alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    fn certify(issuer: &Issuer, csr: &[u8], sa: &str) -> Result<Issued, Rejection> {
        issuer.certify(
            csr,
            sa,
            "default",
            HOUR,
            Duration::from_secs(20),
            SystemTime::now(),
        )
    }

    #[test]
    fn issues_leaves_for_the_service_account_only() {
        let (_, issuer) = issuer();
        let a = mesh_api::identity::dns_name("a", "default");
        let issued =
            certify(&issuer, &csr(vec![a.clone()], &PKCS_ECDSA_P256_SHA256), "a").expect("issued");
        let (_, leaf) = X509Certificate::from_der(&issued.leaf).expect("parse");
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .expect("ext")
            .expect("san")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            vec![
                format!("DNSName({a})"),
                "URI(spiffe://cluster.local/ns/default/sa/a)".to_owned()
            ]
        );
        assert!(!leaf.is_ca());
        assert!(
            leaf.verify_signature(Some(
                X509Certificate::from_der(issuer.certificate())
                    .expect("i")
                    .1
                    .public_key()
            ))
            .is_ok()
        );
        let lifetime =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert!((3600 + 19..=3600 + 21).contains(&lifetime), "{lifetime}");

        // The same request with the token of `b`.
        let err = certify(&issuer, &csr(vec![a.clone()], &PKCS_ECDSA_P256_SHA256), "b")
            .expect_err("wrong identity");
        assert_eq!(err.reason(), "wrong_identity");
        // Extra names are refused too.
        let err = certify(
            &issuer,
            &csr(
                vec![a.clone(), "evil.example.com".into()],
                &PKCS_ECDSA_P256_SHA256,
            ),
            "a",
        )
        .expect_err("extra name");
        assert_eq!(err.reason(), "wrong_identity");
        let err = certify(
            &issuer,
            &csr(vec![a.clone(), "127.0.0.1".into()], &PKCS_ECDSA_P256_SHA256),
            "a",
        )
        .expect_err("ip");
        assert_eq!(err.reason(), "wrong_identity");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let (_, issuer) = issuer();
        let a = mesh_api::identity::dns_name("a", "default");
        let mut tampered = csr(vec![a.clone()], &PKCS_ECDSA_P256_SHA256);
        // Change a byte of the name inside the signed part.
        let pos = tampered
            .windows(4)
            .position(|w| w == b"a.de")
            .expect("name in CSR");
        tampered[pos] = b'b';
        assert_eq!(
            certify(&issuer, &tampered, "a").expect_err("tampered"),
            Rejection::BadSignature
        );
        assert_eq!(
            certify(&issuer, &csr(vec![a.clone()], &PKCS_ECDSA_P384_SHA384), "a")
                .expect_err("p384")
                .reason(),
            "unsupported_key"
        );
        assert_eq!(
            certify(&issuer, &csr(vec![a.clone()], &PKCS_ED25519), "a")
                .expect_err("ed25519")
                .reason(),
            "unsupported_key"
        );
        assert_eq!(
            certify(&issuer, b"not a csr", "a")
                .expect_err("junk")
                .reason(),
            "malformed_csr"
        );
    }

    #[test]
    fn an_expired_issuer_refuses_to_issue() {
        let (_, issuer) = issuer();
        let a = mesh_api::identity::dns_name("a", "default");
        let later = issuer.not_after() + HOUR;
        let err = issuer
            .certify(
                &csr(vec![a], &PKCS_ECDSA_P256_SHA256),
                "a",
                "default",
                HOUR,
                Duration::ZERO,
                later,
            )
            .expect_err("expired issuer");
        assert_eq!(err.reason(), "issuer_expired");
    }

    #[test]
    fn new_issuers_are_signed_by_a_kept_anchor() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = generate(10 * HOUR, 5 * HOUR).expect("generate");
        write(dir.path(), &ca).expect("write");
        let anchor = load_anchor(dir.path()).expect("anchor and key");
        let (cert, key) = generate_issuer(&anchor, 2 * HOUR).expect("issuer");
        Issuer::from_pem(ca.trust_anchor_pem.as_bytes(), cert.as_bytes(), &key)
            .expect("the next issuer chains to the same anchor");
    }

    #[test]
    fn leaves_never_outlive_the_issuer() {
        let (_, issuer) = issuer();
        let a = mesh_api::identity::dns_name("a", "default");
        let issued = issuer
            .certify(
                &csr(vec![a], &PKCS_ECDSA_P256_SHA256),
                "a",
                "default",
                100 * HOUR,
                Duration::ZERO,
                SystemTime::now(),
            )
            .expect("issued");
        assert!(issued.not_after <= issuer.not_after());
    }

    #[test]
    fn issuers_must_chain_to_an_anchor_and_match_their_key() {
        let (ca, _) = issuer();
        let other = generate(HOUR, HOUR).expect("other");
        let err = Issuer::from_pem(
            other.trust_anchor_pem.as_bytes(),
            ca.issuer_cert_pem.as_bytes(),
            &ca.issuer_key_pem,
        )
        .expect_err("foreign anchor");
        assert!(
            err.to_string()
                .contains("not signed by any of the trust anchors"),
            "{err}"
        );
        // A bundle with both anchors (during a rotation) accepts either issuer.
        let bundle = format!("{}{}", other.trust_anchor_pem, ca.trust_anchor_pem);
        Issuer::from_pem(
            bundle.as_bytes(),
            ca.issuer_cert_pem.as_bytes(),
            &ca.issuer_key_pem,
        )
        .expect("old issuer under the bundle");
        Issuer::from_pem(
            bundle.as_bytes(),
            other.issuer_cert_pem.as_bytes(),
            &other.issuer_key_pem,
        )
        .expect("new issuer under the bundle");
        let err = Issuer::from_pem(
            ca.trust_anchor_pem.as_bytes(),
            ca.issuer_cert_pem.as_bytes(),
            &other.issuer_key_pem,
        )
        .expect_err("wrong key");
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = Issuer::from_pem(b"", ca.issuer_cert_pem.as_bytes(), &ca.issuer_key_pem)
            .expect_err("no anchors");
        assert!(err.to_string().contains("trust anchors"), "{err}");
    }
}
