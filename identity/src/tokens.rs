//! Authenticating a proxy's service-account token: with the Kubernetes TokenReview API
//! in a cluster, or against a token file that the local control plane writes.

use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde::Deserialize;

/// The audience proxies' projected service-account tokens are bound to.
pub const AUDIENCE: &str = "identity.mesh.io";

/// The service account a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token is not known, or not a service-account token.
    #[error("unknown token")]
    Unknown,
    /// The token was valid once but has expired.
    #[error("expired token")]
    Expired,
    /// The token is not bound to this service's audience.
    #[error("token is not bound to audience {AUDIENCE}")]
    WrongAudience,
    /// The authority that checks tokens could not answer.
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `reason` label value in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_token",
            Self::Expired => "expired_token",
            Self::WrongAudience => "wrong_audience",
            Self::Unavailable(_) => "token_review_failed",
        }
    }
}

/// Where tokens are checked.
#[derive(Clone)]
pub enum Authenticator {
    /// A YAML token file (local mode), read on each request so updates apply at once.
    File(PathBuf),
    /// The Kubernetes TokenReview API, with audience-bound tokens.
    Kubernetes(kube::Client),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Kubernetes(_) => f.write_str("Kubernetes"),
        }
    }
}

/// The token file: what the local control plane writes for its proxies.
///
/// ```yaml
/// tokens:
/// - token: 9f8e…            # what the proxy reads from MESH_PROXY_TOKEN_PATH
///   namespace: default
///   serviceAccount: web
///   expiresAt: 2026-12-01T00:00:00Z   # optional
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens.
    pub tokens: Vec<TokenEntry>,
}

/// One token in a [`TokenFile`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenEntry {
    /// The secret token.
    pub token: String,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// When the token stops being accepted (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenFile {
    /// Parses a token file; errors name the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: mesh_api::yaml::Value =
            mesh_api::yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("field {path}: {}", e.into_inner())
        })
    }

    /// The service account whose token `token` is, as of `now`.
    pub fn authenticate(&self, token: &[u8], now: SystemTime) -> Result<ServiceAccount, AuthError> {
        // A token file's trailing newline is not part of the token (TokenReview trims too).
        let token = token.trim_ascii();
        let entry = self
            .tokens
            .iter()
            .find(|e| constant_time_eq(e.token.as_bytes(), token))
            .ok_or(AuthError::Unknown)?;
        if entry
            .expires_at
            .is_some_and(|t| time::OffsetDateTime::from(now) >= t)
        {
            return Err(AuthError::Expired);
        }
        Ok(ServiceAccount {
            namespace: entry.namespace.clone(),
            name: entry.service_account.clone(),
        })
    }
}

impl Authenticator {
    /// The service account `token` belongs to.
    pub async fn authenticate(&self, token: &[u8]) -> Result<ServiceAccount, AuthError> {
        match self {
            Self::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    AuthError::Unavailable(format!("token file {}: {e}", path.display()))
                })?;
                let file = TokenFile::parse(&text).map_err(|e| {
                    AuthError::Unavailable(format!("token file {}: {e}", path.display()))
                })?;
                file.authenticate(token, SystemTime::now())
            }
            Self::Kubernetes(client) => token_review(client.clone(), token).await,
        }
    }
}

/// Asks the API server who `token` belongs to, requiring our audience.
pub async fn token_review(client: kube::Client, token: &[u8]) -> Result<ServiceAccount, AuthError> {
    let token = std::str::from_utf8(token).map_err(|_| AuthError::Unknown)?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.trim().to_owned(),
            audiences: Some(vec![AUDIENCE.to_owned()]),
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client);
    let review = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let error = status.error.unwrap_or_default();
        return Err(if error.contains("expired") {
            AuthError::Expired
        } else {
            AuthError::Unknown
        });
    }
    if !status
        .audiences
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|a| a == AUDIENCE)
    {
        return Err(AuthError::WrongAudience);
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    // system:serviceaccount:NAMESPACE:NAME
    let mut parts = username.splitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("system"), Some("serviceaccount"), Some(ns), Some(name))
            if !ns.is_empty() && !name.is_empty() =>
        {
            Ok(ServiceAccount {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(AuthError::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_file_checks_tokens_and_expiry() {
        let file = TokenFile::parse(
            "tokens:\n- token: aaa\n  namespace: default\n  serviceAccount: a\n- token: old\n  namespace: default\n  serviceAccount: b\n  expiresAt: 2020-01-01T00:00:00Z\n",
        )
        .expect("parses");
        let now = SystemTime::now();
        assert_eq!(
            file.authenticate(b"aaa", now),
            Ok(ServiceAccount {
                namespace: "default".into(),
                name: "a".into()
            })
        );
        assert_eq!(file.authenticate(b"aab", now), Err(AuthError::Unknown));
        assert!(
            file.authenticate(b"aaa\n", now).is_ok(),
            "a trailing newline is not the token"
        );
        assert_eq!(file.authenticate(b"", now), Err(AuthError::Unknown));
        assert_eq!(file.authenticate(b"old", now), Err(AuthError::Expired));
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        assert!(file.authenticate(b"old", before).is_ok());
    }

    #[test]
    fn bad_token_files_name_the_field() {
        let err = TokenFile::parse("tokens:\n- token: a\n  namespace: n\n").expect_err("missing");
        assert!(
            err.contains("tokens[0]") && err.contains("serviceAccount"),
            "{err}"
        );
        let err = TokenFile::parse(
            "tokens:\n- token: a\n  namespace: n\n  serviceAccount: s\n  expiresAt: tomorrow\n",
        )
        .expect_err("bad time");
        assert!(err.contains("tokens[0].expiresAt"), "{err}");
    }
}
