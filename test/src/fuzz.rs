//! Fuzz harnesses: one function per parser of outside input, run by the libFuzzer
//! targets in `fuzz/` (`test/fuzz` runs each for a set time) and, over the seed corpus
//! and mutations of it, by the test suite's smoke (`test/tests/fuzz_smoke.rs`). Each
//! must never panic, whatever the bytes; where a parser promises more, the harness
//! checks it too.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use mesh_proxy::detect::{Protocol, classify};

/// A harness: runs one input, panicking on a defect.
pub type Harness = fn(&[u8]);

/// The harnesses by name: the names of `fuzz/fuzz_targets/*.rs` and of the corpus
/// folders `fuzz/corpus/*`.
pub const TARGETS: &[(&str, Harness)] = &[
    ("detect", detect),
    ("client_hello", client_hello),
    ("mesh_headers", mesh_headers),
    ("manifests", manifests),
    ("admission_review", admission_review),
    ("csr", csr),
    ("stats", stats),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Protocol detection: a decision, once made, never changes as more bytes arrive
/// (detection stops reading at the first decision, so a later one would be a lie),
/// and a request line naming an `HTTP/` version is never opaque (raw to the app).
pub fn detect(data: &[u8]) {
    let full = classify(data);
    let n = data.len();
    for cut in [1, 2, 3, 5, 8, 13, n / 4, n / 2, n.saturating_sub(1)] {
        if cut == 0 || cut > n {
            continue;
        }
        if let Some(early) = classify(&data[..cut]) {
            assert_eq!(
                Some(early),
                full,
                "decided {early:?} after {cut} bytes, {full:?} after {n}"
            );
        }
    }
    if let Some(line_end) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..line_end];
        let starts_like_a_request = data.first().is_some_and(|b| b.is_ascii_alphabetic())
            && line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"))
            && line.contains(&b' ')
            && line[..line.iter().position(|&b| b == b' ').unwrap_or(0)]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
        if starts_like_a_request && line_end < 16 * 1024 {
            assert_ne!(
                full,
                Some(Protocol::Opaque),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

/// The TLS ClientHello peek: whatever the bytes, it ends (with a name or none), and
/// every byte it read is kept for replay.
pub fn client_hello(data: &[u8]) {
    runtime().block_on(async {
        let mut io = data;
        let mut prefix = bytes::BytesMut::new();
        let sni = mesh_proxy::tls::client_hello_sni(&mut io, &mut prefix, Duration::from_secs(1))
            .await
            .expect("reading a slice cannot fail");
        assert!(
            data.starts_with(&prefix),
            "replayed bytes differ from those read"
        );
        if let Some(name) = sni {
            let _ = mesh_api::identity::parse_dns_name(&name);
        }
    });
}

/// The mesh's own headers and the request-head hygiene around them: arbitrary header
/// names and values (`mesh-target-port`, `mesh-orig-proto`, `Host`, `Connection`
/// naming others) never panic, a target port is only ever a plain decimal, and after
/// hygiene no hop-by-hop header a `Connection` named survives.
pub fn mesh_headers(data: &[u8]) {
    use http::header::{HeaderName, HeaderValue};
    let mut req = http::Request::new(());
    let mut fields = data.split(|&b| b == b'\n');
    if let Some(path) = fields.next()
        && let Ok(uri) = http::Uri::try_from(path)
    {
        *req.uri_mut() = uri;
    }
    for field in fields {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        let name = match name {
            b"t" => Ok(mesh_proxy::http::TARGET_PORT_HEADER),
            b"o" => Ok(mesh_proxy::http::ORIG_PROTO_HEADER),
            b"h" => Ok(http::header::HOST),
            b"c" => Ok(http::header::CONNECTION),
            other => HeaderName::from_bytes(other),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_bytes(value)) {
            req.headers_mut().append(name, value);
        }
    }
    if let Some(port) = mesh_proxy::http::target_port(req.headers()) {
        let text = req
            .headers()
            .get(mesh_proxy::http::TARGET_PORT_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            text.bytes().all(|b| b.is_ascii_digit()),
            "{text:?} -> {port}"
        );
    }
    let _ = mesh_proxy::http::invalid(&req, 8 * 1024);
    let _ = mesh_proxy::http::request_authority(&req);
    let named: Vec<HeaderName> = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = mesh_proxy::http::is_upgrade(req.headers());
    mesh_proxy::http::strip_hop_by_hop(req.headers_mut(), upgrade, true);
    for name in named {
        if !(upgrade && name == http::header::UPGRADE) && name != http::header::CONNECTION {
            assert!(!req.headers().contains_key(&name), "{name} survived");
        }
    }
    let authority = mesh_proxy::http::request_authority(&req).map(str::to_owned);
    mesh_proxy::http::normalize_request(
        &mut req,
        authority.as_deref(),
        ([127, 0, 0, 1], 80).into(),
    );
}

/// Policy compilation from YAML (ServiceProfile, TrafficSplit and the objects they
/// refer to, as the folder source reads them): what parses is applied to an index and
/// every service's answer computed; a refusal names its document; and every policy the
/// controller would send is one the proxy applies whole.
pub fn manifests(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut loaded = mesh_controller::dir::Loaded::default();
    mesh_controller::dir::parse(Path::new("fuzz.yaml"), &text, &mut loaded);
    for e in &loaded.errors {
        assert_eq!(e.file, "fuzz.yaml");
    }
    let index = mesh_controller::Index::default();
    let mut applied = mesh_controller::dir::Applied::new();
    let authorities: Vec<String> = loaded
        .objects
        .iter()
        .map(|(at, _, _)| format!("{}.{}.svc.cluster.local:80", at.name, at.namespace))
        .collect();
    mesh_controller::dir::sync(&index, loaded, &mut applied);
    for authority in authorities.iter().take(16) {
        let _ = index.resolve(authority, "default", None);
        let policy = index.outbound_policy(authority, "default", None);
        if let Err(e) = mesh_proxy::profile::Profile::compile(&policy) {
            panic!("the controller would send a policy the proxy refuses: {e}: {policy:?}");
        }
    }
}

/// AdmissionReview handling: any body is answered, with a review or an error.
pub fn admission_review(data: &[u8]) {
    static WEBHOOK: OnceLock<mesh_controller::webhook::Webhook> = OnceLock::new();
    let webhook = WEBHOOK.get_or_init(|| mesh_controller::webhook::Webhook {
        index: Arc::new(mesh_controller::Index::for_cluster()),
        config: mesh_controller::inject::Config::default(),
        classic: false,
        client: None,
    });
    if let Ok(review) = runtime().block_on(webhook.review(data)) {
        assert!(review.get("response").is_some(), "{review}");
    }
}

/// The identity service's CSR checks: any bytes are refused or issued, and what is
/// issued names exactly the service account asked for.
pub fn csr(data: &[u8]) {
    static ISSUER: OnceLock<mesh_identity::ca::Issuer> = OnceLock::new();
    let issuer = ISSUER.get_or_init(|| {
        let day = Duration::from_secs(86_400);
        let ca = mesh_identity::ca::generate(day * 365, day * 30).expect("CA");
        mesh_identity::ca::Issuer::from_pem(
            ca.trust_anchor_pem.as_bytes(),
            ca.issuer_cert_pem.as_bytes(),
            &ca.issuer_key_pem,
        )
        .expect("issuer")
    });
    let issued = issuer.certify(
        data,
        "web",
        "shop",
        Duration::from_secs(86_400),
        Duration::from_secs(20),
        SystemTime::now(),
    );
    if let Ok(issued) = issued {
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf).expect("leaf parses");
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            names.iter().all(|n| n.contains("web")),
            "a leaf for web.shop names {names:?}"
        );
    }
}

/// viz's parsing of a proxy's `/stats`: any body parses or is refused, and what parses
/// can be differenced against itself.
pub fn stats(data: &[u8]) {
    if let Ok(snapshot) = mesh_viz::stats::Snapshot::parse(data) {
        let _ = snapshot.since(None);
        let _ = snapshot.since(Some(&snapshot));
    }
}

/// Runs `harness` over every file in `corpus` and `mutations` mutated copies of each
/// (bit flips, truncations, splices, byte runs), seeded by `seed`: the test suite's
/// smoke of one target. Returns how many inputs ran.
pub fn smoke(harness: Harness, corpus: &Path, mutations: usize, seed: u64) -> usize {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus)
        .map(|dir| {
            dir.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.sort();
    seeds.push(Vec::new());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ran = 0;
    for input in &seeds {
        harness(input);
        ran += 1;
        for _ in 0..mutations {
            let other = &seeds[rng.usize(..seeds.len())];
            harness(&mutate(&mut rng, input, other));
            ran += 1;
        }
    }
    ran
}

fn mutate(rng: &mut fastrand::Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..4) {
        match rng.u8(..6) {
            0 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] ^= 1 << rng.u8(..8);
            }
            1 if !out.is_empty() => out.truncate(rng.usize(..out.len())),
            2 => {
                let at = rng.usize(..=out.len());
                let from = rng.usize(..=other.len());
                let to = (from + rng.usize(..64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            3 => {
                let at = rng.usize(..=out.len());
                let byte = *rng
                    .choice(b"\r\n \t:\0\xff{}[]-\"'".iter())
                    .unwrap_or(&b' ');
                let run = rng.usize(1..32);
                out.splice(at..at, std::iter::repeat_n(byte, run));
            }
            4 if !out.is_empty() => {
                let i = rng.usize(..out.len());
                out[i] = rng.u8(..);
            }
            _ => out.push(rng.u8(..)),
        }
    }
    out
}
