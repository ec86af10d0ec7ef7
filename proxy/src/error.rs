//! Errors the proxy itself produces, and the one place that maps them to HTTP responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::BoxBody;

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
            | Self::NoIdentity => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectTimeout(_) | Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect { .. }
            | Self::Handshake { .. }
            | Self::Upstream { .. }
            | Self::Loop
            | Self::Tls { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Turns any error from the stack into the response the client sees.
///
/// This is the one place that classifies causes; everything below it returns errors.
pub fn rescue(error: BoxError, is_grpc: bool) -> Response<BoxBody> {
    let error = match error.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(other) if other.is::<tower::load_shed::error::Overloaded>() => ProxyError::Overloaded,
        Err(other) => {
            tracing::warn!(error = %other, "unexpected proxy error");
            return error_response(StatusCode::BAD_GATEWAY, &other.to_string(), is_grpc);
        }
    };
    tracing::debug!(%error, "proxy error");
    error_response(error.status(), &error.to_string(), is_grpc)
}

/// A response the proxy makes itself, carrying the `mesh-proxy-error` header.
pub fn error_response(status: StatusCode, message: &str, is_grpc: bool) -> Response<BoxBody> {
    let header = header_value(message);
    let mut builder = Response::builder().header(PROXY_ERROR_HEADER, header.clone());
    if is_grpc {
        // gRPC clients read the outcome from grpc-status; a "trailers-only" response
        // carries it in the headers with HTTP 200, as the gRPC spec asks.
        builder = builder
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .header("grpc-status", grpc_code(status))
            .header("grpc-message", header);
        return builder
            .body(crate::body::empty())
            .unwrap_or_else(|_| Response::new(crate::body::empty()));
    }
    builder
        .status(status)
        .header("content-type", "text/plain")
        .body(
            Full::new(Bytes::from(format!("{message}\n")))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| Response::new(crate::body::empty()))
}

/// The gRPC status code that corresponds to a proxy-made HTTP status.
fn grpc_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::GATEWAY_TIMEOUT => "4",      // DEADLINE_EXCEEDED
        StatusCode::SERVICE_UNAVAILABLE => "14", // UNAVAILABLE
        StatusCode::BAD_REQUEST => "3",          // INVALID_ARGUMENT
        StatusCode::BAD_GATEWAY => "14",         // UNAVAILABLE
        _ => "2",                                // UNKNOWN
    }
}

/// A header value made from free text: control characters are replaced.
fn header_value(message: &str) -> HeaderValue {
    let cleaned: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
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

    #[test]
    fn rescue_maps_load_shed_to_503_with_header() {
        let rsp = rescue(Box::new(tower::load_shed::error::Overloaded::new()), false);
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "proxy overloaded");
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let rsp = error_response(StatusCode::GATEWAY_TIMEOUT, "timeout", true);
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "4");
    }

    #[test]
    fn header_values_are_sanitised() {
        assert_eq!(header_value("a\r\nb"), "a??b");
    }
}
