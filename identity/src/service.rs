//! The `Certify` gRPC service and the identity service's metrics.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::identity_api::identity_server::Identity;
use mesh_api::identity_api::{CertifyRequest, CertifyResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::ca::{Issuer, Rejection};
use crate::limit::Limits;
use crate::tokens::{AuthError, Authenticator};

/// The largest CSR or token accepted, in bytes.
const MAX_INPUT: usize = 64 * 1024;

/// Certs issued, rejections by reason, and the issuer's expiry.
#[derive(Debug, Default)]
pub struct Metrics {
    issued: Counter,
    rejected: Family<Reason, Counter>,
    issuer_expiry: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "identity_cert_issued",
            "Leaf certificates issued",
            self.issued.clone(),
        );
        registry.register(
            "identity_cert_rejected",
            "Certificate requests refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "identity_issuer_expiry_timestamp_seconds",
            "When the issuer certificate in use expires (Unix time)",
            self.issuer_expiry.clone(),
        );
    }

    /// Records the expiry of the issuer now in use.
    pub fn issuer_loaded(&self, issuer: &Issuer) {
        let secs = issuer
            .not_after()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.issuer_expiry.set(secs);
    }

    fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// How leaves are issued.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Leaf lifetime.
    pub lifetime: Duration,
    /// How far before now a leaf's validity starts, for peers whose clocks lag.
    pub clock_skew: Duration,
}

/// The identity gRPC service.
#[derive(Clone, Debug)]
pub struct Service {
    issuer: watch::Receiver<Arc<Issuer>>,
    auth: Authenticator,
    settings: Settings,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
}

impl Service {
    /// A service issuing with whatever issuer `issuer` holds at the time, within
    /// `limits`.
    pub fn new(
        issuer: watch::Receiver<Arc<Issuer>>,
        auth: Authenticator,
        settings: Settings,
        metrics: Arc<Metrics>,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            issuer,
            auth,
            settings,
            metrics,
            limits,
        }
    }

    fn reject(&self, reason: &str, status: Status) -> Status {
        self.metrics.rejected(reason);
        tracing::info!(
            reason,
            message = status.message(),
            "certificate request refused"
        );
        status
    }
}

#[tonic::async_trait]
impl Identity for Service {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        // Before the token is checked: a flood must not reach the token reviewer.
        let source = request
            .extensions()
            .get::<Option<std::net::SocketAddr>>()
            .copied()
            .flatten();
        if let Some(source) = source
            && !self.limits.allow_source(source.ip())
        {
            return Err(self.reject(
                "rate_limited_source",
                Status::resource_exhausted(format!(
                    "too many certificate requests from {}; retry later",
                    source.ip()
                )),
            ));
        }
        let req = request.into_inner();
        if req.token.len() > MAX_INPUT || req.certificate_signing_request.len() > MAX_INPUT {
            return Err(self.reject(
                "too_large",
                Status::invalid_argument("token or CSR larger than 64 KiB"),
            ));
        }
        let sa = match self.auth.authenticate(&req.token).await {
            Ok(sa) => sa,
            Err(e) => {
                let status = match &e {
                    AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                };
                return Err(self.reject(e.reason(), status));
            }
        };
        if !self.limits.allow_token(&req.token) {
            return Err(self.reject(
                "rate_limited_token",
                Status::resource_exhausted(format!(
                    "too many certificate requests with the token of {}.{}; retry later",
                    sa.name, sa.namespace
                )),
            ));
        }
        let allowed = mesh_api::identity::dns_name(&sa.name, &sa.namespace);
        if req.identity != allowed {
            let e = Rejection::WrongIdentity {
                asked: req.identity,
                allowed,
            };
            return Err(self.reject(e.reason(), Status::permission_denied(e.to_string())));
        }
        let issuer = self.issuer.borrow().clone();
        let issued = issuer
            .certify(
                &req.certificate_signing_request,
                &sa.name,
                &sa.namespace,
                self.settings.lifetime,
                self.settings.clock_skew,
                SystemTime::now(),
            )
            .map_err(|e| {
                let status = match &e {
                    Rejection::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                    Rejection::Internal(_) => Status::internal(e.to_string()),
                    Rejection::IssuerExpired(_) => {
                        tracing::error!(error = %e, "cannot issue: the issuer has expired");
                        Status::unavailable(e.to_string())
                    }
                    _ => Status::invalid_argument(e.to_string()),
                };
                self.reject(e.reason(), status)
            })?;
        self.metrics.issued.inc();
        let valid_until_unix_ms = issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tracing::info!(identity = %allowed, "certificate issued");
        Ok(Response::new(CertifyResponse {
            leaf_certificate: issued.leaf.to_vec(),
            intermediate_certificates: issued.intermediates.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix_ms,
        }))
    }
}
