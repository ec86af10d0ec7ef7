//! Inbound authorization of HTTP requests: the port's policy decides each request
//! (routes, JWT, authorizations, rate limits) before it goes on; refusals are errors
//! the rescue layer turns into 404, 401, 403 or 429 (gRPC statuses for gRPC).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use super::named_port;
use crate::authz::metrics::{Key, Outcome};
use crate::authz::{Client, Decision, Http, Label, PortPolicy};
use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};
use crate::http::{BoxFuture, ConnInfo, Shared};

/// Counts a decision (and the audits it matched) for `policy`'s port.
pub fn record(
    shared: &Shared,
    policy: &PortPolicy,
    client: &Client<'_>,
    id: Option<&Arc<str>>,
    http: bool,
    decision: &Decision,
    audits: &[Label],
) {
    let key = |outcome, by: &Label| Key {
        http,
        outcome,
        port: client.dst.port(),
        by: by.clone(),
        client: id.cloned(),
    };
    let m = &shared.metrics.authz;
    for a in audits {
        tracing::info!(client = %client.addr, client_id = ?id, port = client.dst.port(), audit = %a, allowed = decision.allowed(), "audited");
        m.count(key(Outcome::Audit, a));
    }
    match decision {
        Decision::Allow(by) => {
            if policy.audits_default() && &*by.kind == "default" {
                tracing::info!(client = %client.addr, client_id = ?id, port = client.dst.port(), "admitted by the audit policy only: deny would refuse it");
                m.count(key(Outcome::Audit, by));
            }
            m.count(key(Outcome::Allow, by));
        }
        Decision::Deny(by) => m.count(key(Outcome::Deny, by)),
    }
}

/// Puts [`Authorize`] over a service.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    shared: Arc<Shared>,
}

impl AuthorizeLayer {
    /// Authorizes by the policies `shared`'s discovery gives.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Decides each request by its port's policy.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn refused(status: StatusCode, message: &'static str) -> BoxError {
    ProxyError::Refused(status, message.into()).into()
}

/// Checks `req` against `policy`: `Ok` when it may go on (its token then stripped as
/// the policy asks).
fn check<B>(
    shared: &Shared,
    policy: &PortPolicy,
    conn: &ConnInfo,
    port: u16,
    req: &mut Request<B>,
) -> Result<(), BoxError> {
    let id = conn.peer.id.as_ref();
    let client = Client {
        addr: conn.client.ip(),
        identity: id.map(|i| &**i),
        dst: SocketAddr::new(conn.local.ip(), port),
    };
    let count = |outcome, by: &Label| {
        shared.metrics.authz.count(Key {
            http: true,
            outcome,
            port,
            by: by.clone(),
            client: id.cloned(),
        });
    };
    if !policy.routed(req) {
        return Err(refused(StatusCode::NOT_FOUND, "no route"));
    }
    if policy.is_probe(&client, req) {
        count(
            Outcome::Allow,
            &Label {
                kind: "default".into(),
                name: "probe".into(),
            },
        );
        return Ok(());
    }
    let auth = match policy.jwt.verify(req) {
        Ok(auth) => auth,
        Err(why) => {
            tracing::info!(client = %conn.client, client_id = ?id, port, reason = %why, "request refused: invalid JWT");
            let by = policy.sources.first().cloned().unwrap_or(Label {
                kind: "RequestAuthentication".into(),
                name: "unknown".into(),
            });
            count(Outcome::Unauthenticated, &by);
            return Err(refused(StatusCode::UNAUTHORIZED, "unauthenticated"));
        }
    };
    let http = Http {
        req: &*req,
        auth: auth.as_ref(),
    };
    let (decision, audits) = policy.decide(&client, Some(http));
    record(shared, policy, &client, id, true, &decision, &audits);
    if let Decision::Deny(by) = &decision {
        tracing::info!(client = %conn.client, client_id = ?id, port, method = %req.method(), path = req.uri().path(), %by, "request denied");
        return Err(refused(StatusCode::FORBIDDEN, "forbidden"));
    }
    if let Err(over) = policy.limits.check(id) {
        tracing::debug!(client = %conn.client, client_id = ?id, port, limit = %over.label, "request rate limited");
        count(Outcome::RateLimited, &over.label);
        return Err(ProxyError::RateLimited(over.retry_after).into());
    }
    Ok(())
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The ready service goes into the future; its clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let mtls = shared.endpoints.mtls();
            let conn = req.extensions().get::<ConnInfo>().cloned();
            let port = conn
                .as_ref()
                .and_then(|c| named_port(c, &req, mtls).or(c.target.map(|t| t.port())));
            let policy = match port {
                Some(port) => super::port_policy(&shared, port).await,
                None => None,
            };
            if let (Some(conn), Some(port), Some(policy)) = (conn, port, policy) {
                check(&shared, &policy, &conn, port, &mut req)?;
            }
            inner.call(req).await
        })
    }
}
