//! JWT verification for a port's `RequestAuthentication`s: finds tokens where the
//! providers say they come, verifies signature, issuer, audience and time, and hands
//! the claims to the authorization checks. A token that is present but fails is the
//! client's error (401); a request with no token passes on with no request principal.

use base64::Engine;
use http::{HeaderName, HeaderValue, Request};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_api::policy as pb;
use serde_json::Value;

/// The claims of a verified token.
#[derive(Clone, Debug)]
pub struct Verified {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The whole payload.
    pub claims: Value,
}

impl Verified {
    /// Istio's request principal: `ISS/SUB`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// The claim at `path` (nested objects) as strings: a string is one, a list is its
    /// entries, a number or boolean its text; `None` when absent.
    pub fn claim_strings(&self, path: &[String]) -> Option<Vec<String>> {
        let mut v = &self.claims;
        for key in path {
            v = v.get(key)?;
        }
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        Some(match v {
            Value::Array(items) => items.iter().filter_map(text).collect(),
            other => text(other).into_iter().collect(),
        })
    }
}

/// One verification key: its id, the key, and the algorithm it is for.
type Key = (Option<String>, DecodingKey, Option<Algorithm>);

/// Where a token may be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header(HeaderName, String),
    Param(String),
    Cookie(String),
}

struct Provider {
    issuer: String,
    audiences: Vec<String>,
    /// The keys, or why there are none.
    keys: Result<Vec<Key>, String>,
    locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The JWT issuers a port verifies.
#[derive(Debug, Default)]
pub struct Verifier {
    providers: Vec<Provider>,
}

fn keys(p: &pb::JwtProvider) -> Result<Vec<Key>, String> {
    if !p.jwks_error.is_empty() {
        return Err(format!(
            "no keys for issuer {:?}: {}",
            p.issuer, p.jwks_error
        ));
    }
    let set: JwkSet = serde_json::from_str(&p.jwks).map_err(|e| format!("JWKS: {e}"))?;
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some((jwk.common.key_id.clone(), key, alg))
        })
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "the JWKS of issuer {:?} has no usable key",
            p.issuer
        ));
    }
    Ok(keys)
}

fn locations(p: &pb::JwtProvider) -> Vec<Location> {
    let mut out: Vec<Location> = p
        .from_headers
        .iter()
        .filter_map(|h| {
            HeaderName::from_bytes(h.name.as_bytes())
                .ok()
                .map(|n| Location::Header(n, h.prefix.clone()))
        })
        .collect();
    out.extend(p.from_params.iter().cloned().map(Location::Param));
    out.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if out.is_empty() {
        out.push(Location::Header(
            http::header::AUTHORIZATION,
            "Bearer ".into(),
        ));
        out.push(Location::Param("access_token".into()));
    }
    out
}

fn cookie<'h, B>(req: &'h Request<B>, name: &str) -> Option<&'h str> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The token at `loc`, if any.
fn find<B>(req: &Request<B>, loc: &Location) -> Option<String> {
    match loc {
        Location::Header(name, prefix) => {
            let v = req.headers().get(name)?.to_str().ok()?;
            let token = if prefix.is_empty() {
                Some(v)
            } else if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix) {
                Some(&v[prefix.len()..])
            } else {
                None
            }?;
            Some(token.trim().to_string())
        }
        Location::Param(name) => {
            crate::profile::query_param(req.uri().query(), name).map(str::to_string)
        }
        Location::Cookie(name) => cookie(req, name).map(str::to_string),
    }
}

/// Removes the token at `loc` from the request.
fn strip<B>(req: &mut Request<B>, loc: &Location) {
    match loc {
        Location::Header(name, _) => {
            req.headers_mut().remove(name);
        }
        Location::Param(name) => {
            let uri = req.uri();
            let Some(query) = uri.query() else { return };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
                .collect();
            let path = uri.path();
            let pq = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = u;
                }
            }
        }
        // Cookies are left: removing one from a shared header would rewrite the others.
        Location::Cookie(_) => {}
    }
}

/// The unverified payload of a compact JWT, for choosing its issuer's keys.
fn peek(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Verifier {
    /// Compiles a port's providers.
    pub fn compile(providers: &[pb::JwtProvider]) -> Self {
        Self {
            providers: providers
                .iter()
                .map(|p| Provider {
                    issuer: p.issuer.clone(),
                    audiences: p.audiences.clone(),
                    keys: keys(p),
                    locations: locations(p),
                    forward: p.forward_token,
                    payload_header: (!p.output_payload_to_header.is_empty())
                        .then(|| HeaderName::from_bytes(p.output_payload_to_header.as_bytes()).ok())
                        .flatten(),
                    claim_headers: p
                        .output_claim_to_headers
                        .iter()
                        .filter_map(|c| {
                            Some((
                                HeaderName::from_bytes(c.header.as_bytes()).ok()?,
                                c.claim.clone(),
                            ))
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether the port verifies no tokens.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Finds and verifies the request's token: `Ok(None)` when it bears none, the
    /// claims when it verifies (the token then removed unless forwarded, and the
    /// payload and claims written to the headers asked for), else why it was refused.
    pub fn verify<B>(&self, req: &mut Request<B>) -> Result<Option<Verified>, Refused> {
        if self.providers.is_empty() {
            return Ok(None);
        }
        let mut found = None;
        'search: for p in &self.providers {
            for loc in &p.locations {
                if let Some(token) = find(req, loc) {
                    found = Some((token, loc.clone()));
                    break 'search;
                }
            }
        }
        let Some((token, loc)) = found else {
            return Ok(None);
        };
        let iss = peek(&token)
            .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| Refused("the token is not a JWT with an issuer".into()))?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer == iss && p.locations.contains(&loc))
            .ok_or_else(|| Refused(format!("issuer {iss:?} is not accepted")))?;
        let verified = provider.check(&token)?;
        if !provider.forward {
            strip(req, &loc);
        }
        if let Some(name) = &provider.payload_header
            && let Some(payload) = token.split('.').nth(1)
            && let Ok(v) = HeaderValue::from_str(payload)
        {
            req.headers_mut().insert(name.clone(), v);
        }
        for (name, claim) in &provider.claim_headers {
            let path: Vec<String> = claim.split('.').map(str::to_string).collect();
            if let Some(v) = verified.claim_strings(&path)
                && let Ok(v) = HeaderValue::from_str(&v.join(","))
            {
                req.headers_mut().insert(name.clone(), v);
            }
        }
        Ok(Some(verified))
    }
}

impl Provider {
    fn check(&self, token: &str) -> Result<Verified, Refused> {
        let keys = self.keys.as_ref().map_err(|e| Refused(e.clone()))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refused(format!("token header: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        validation.set_required_spec_claims(&["iss"]);
        let candidates = keys.iter().filter(|(kid, _, alg)| {
            header
                .kid
                .as_ref()
                .is_none_or(|k| kid.as_ref().is_none_or(|kid| kid == k))
                && alg.is_none_or(|a| a == header.alg)
        });
        let mut last = Refused("no key of the issuer matches the token".into());
        for (_, key, _) in candidates {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let s = |k: &str| {
                        claims
                            .get(k)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    };
                    return Ok(Verified {
                        issuer: s("iss"),
                        subject: s("sub"),
                        claims,
                    });
                }
                Err(e) => last = Refused(format!("token: {e}")),
            }
        }
        Err(last)
    }
}
