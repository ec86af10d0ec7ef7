//! Errors the proxy itself produces and the status each stands for. They become
//! responses in one place, [`crate::http::rescue`].

use http::StatusCode;

use crate::vocab::Peer;

/// Name of the response header that says why the proxy, not the app, answered.
pub const PROXY_ERROR_HEADER: &str = "mesh-proxy-error";

/// A boxed, thread-safe error as tower and hyper pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the proxy could not forward a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no authority the proxy could route to.
    #[error("request has no authority")]
    NoAuthority,
    /// The authority is not a valid `host[:port]`.
    #[error("invalid authority {0:?}")]
    BadAuthority(String),
    /// The name resolved to no endpoints.
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    /// Name resolution failed for another reason.
    #[error("resolving {name}: {reason}")]
    Resolve {
        /// The name being resolved.
        name: String,
        /// What the resolver said.
        reason: String,
    },
    /// Too many requests are in flight.
    #[error("proxy overloaded")]
    Overloaded,
    /// Connecting to the endpoint failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// Connecting to the endpoint took longer than the connect timeout.
    #[error("connect to {0} timed out")]
    ConnectTimeout(std::net::SocketAddr),
    /// The HTTP handshake with the endpoint failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The endpoint failed while the proxy waited for its response.
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The client's request could not be sent on: its body stream failed (malformed
    /// chunked encoding, a reset) or it cannot be expressed upstream.
    #[error("invalid request: {0}")]
    BadRequest(hyper::Error),
    /// The request's head is malformed in a way the HTTP parser lets through (two
    /// `Host` headers, say), named in words.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request's path is longer than the proxy accepts.
    #[error("request path of {0} bytes is too long")]
    PathTooLong(usize),
    /// Too many requests to this one destination are in flight.
    #[error("too many requests in flight to {0}")]
    DestinationOverloaded(String),
    /// The backend's connection pool is full: too many requests in flight and
    /// waiting (a DestinationRule's `connectionPool`), refused at once.
    #[error("overflow")]
    Overflow(String),
    /// The route's timeout passed before the response.
    #[error("timeout")]
    Timeout,
    /// The request would be sent back to this proxy.
    #[error("request would loop back to the proxy")]
    Loop,
    /// mTLS with a meshed endpoint failed: most often it presented another identity
    /// than discovery said it has.
    #[error("mTLS with {addr} failed: {reason}")]
    Tls {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// What went wrong, naming the expected and presented identities.
        reason: String,
    },
    /// The proxy has no certificate yet, so it cannot reach meshed endpoints.
    #[error("no mTLS identity yet: the identity service has not issued a certificate")]
    NoIdentity,
    /// Every endpoint of the backend is out of the balancer for failing (failure
    /// accrual): failing at once beats queueing for endpoints that are down.
    #[error("unavailable")]
    Unavailable,
    /// The service's policy answers the request itself with a failure: no route
    /// matches it (404), or its backend does not resolve (500).
    #[error("{1}")]
    Refused(StatusCode, std::sync::Arc<str>),
    /// A rate limit of the port refused the request: 429, with when to try again.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
}

impl ProxyError {
    /// Classifies an error from sending a request to `addr`: a failure of the
    /// client's own request body is the client's fault (400), anything else the
    /// upstream's (502).
    pub fn upstream(addr: std::net::SocketAddr, source: hyper::Error) -> Self {
        if source.is_user() {
            Self::BadRequest(source)
        } else {
            Self::Upstream { addr, source }
        }
    }

    /// The status code a client sees for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoAuthority
            | Self::BadAuthority(_)
            | Self::BadRequest(_)
            | Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::PathTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::NoEndpoints(_)
            | Self::Resolve { .. }
            | Self::Overloaded
            | Self::DestinationOverloaded(_)
            | Self::NoIdentity
            | Self::Overflow(_)
            | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectTimeout(_) | Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect { .. }
            | Self::Handshake { .. }
            | Self::Upstream { .. }
            | Self::Loop
            | Self::Tls { .. } => StatusCode::BAD_GATEWAY,
            Self::Refused(status, _) => *status,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// An error met after the request reached an endpoint, and so was counted against it:
/// the response the client gets is labelled with that endpoint.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct AtPeer {
    /// The endpoint the request was counted against.
    pub peer: Peer,
    /// What went wrong.
    pub error: ProxyError,
}

/// The [`ProxyError`] inside a boxed error, attributed to an endpoint or not.
pub fn cause(error: &BoxError) -> Option<&ProxyError> {
    error
        .downcast_ref::<ProxyError>()
        .or_else(|| error.downcast_ref::<AtPeer>().map(|a| &a.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        assert_eq!(ProxyError::ConnectTimeout(addr).status(), 504);
        assert_eq!(ProxyError::NoEndpoints("x".into()).status(), 503);
        assert_eq!(ProxyError::Overloaded.status(), 503);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProxyError::Connect {
                addr,
                source: refused
            }
            .status(),
            502
        );
    }
}
