//! The headers the proxy reads and writes: its own (`mesh-*`), hop-by-hop headers, and
//! the request head made fit for the upstream protocol.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version as HttpVersion};

/// The header with which an outbound proxy tells a peer's inbound proxy which port of
/// its pod a request is for, when no iptables redirect carries that (local mode).
/// (The proxy's own header names are parsed once, here: a lookup by `&str` parses
/// and lowercases the name on every call.)
pub const TARGET_PORT_HEADER: HeaderName = HeaderName::from_static("mesh-target-port");

/// The header with which an outbound proxy marks an HTTP/1 request it carries to a
/// peer over HTTP/2; the peer's inbound proxy restores HTTP/1 for the application.
pub const ORIG_PROTO_HEADER: HeaderName = HeaderName::from_static("mesh-orig-proto");

/// The header carrying the verified identity of the client to the application; never
/// taken from the client itself.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("mesh-client-id");

/// gRPC's status header, in a response's headers (trailers-only) or trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The port a peer proxy named in [`TARGET_PORT_HEADER`]: exactly one header, a
/// decimal port (no sign, no spaces), or none.
pub fn target_port(headers: &HeaderMap) -> Option<u16> {
    let mut values = headers.get_all(TARGET_PORT_HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The request's authority: the URI's (absolute-form or `:authority`), else `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The `grpc-status` of a response's headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether a request asks to upgrade its connection (WebSocket, say).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `name` is one of the fixed hop-by-hop names (`Connection` names the rest).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed set and any named in
/// `Connection` (but `Host`). An upgrade keeps `Upgrade` and `Connection: upgrade`. Requests keep
/// `te: trailers`: the proxy forwards trailers, so it may ask for them on the client's
/// behalf (gRPC needs it, and HTTP/1 servers only send trailers when asked).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // Most messages carry none: one pass over their few names instead of a hashed
    // removal per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        // `Host` is not the client's to drop: the request is routed, limited and sent
        // by it (a `Connection: host` would route by one authority and send another).
        .filter(|n| n != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // `Trailer` is end to end: hyper only sends HTTP/1 trailers that it names.
    for name in [
        header::TE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Makes a request fit to send upstream (its hop-by-hop headers already removed): the
/// URI in the form the upstream protocol needs, and `Host` consistent with the target
/// authority.
pub fn normalize_request<B>(req: &mut Request<B>, authority: Option<&str>, endpoint: SocketAddr) {
    let h2 = req.version() == HttpVersion::HTTP_2;
    let authority = authority
        .map(str::to_owned)
        .unwrap_or_else(|| endpoint.to_string());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    if h2 {
        // HTTP/2 carries the authority in `:authority`, taken from the URI.
        req.headers_mut().remove(header::HOST);
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
    } else {
        if req.uri().authority().is_some() {
            // Absolute-form (the app used us as an HTTP proxy): the URI's authority
            // wins over any Host header (RFC 9112 §3.2.2), and upstream gets origin-form.
            if let Ok(host) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert(header::HOST, host);
            }
            if let Ok(uri) = path.parse() {
                *req.uri_mut() = uri;
            }
        } else if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&authority)
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn connection_cannot_drop_host() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("host, x-a"));
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::HOST], "web");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        let mut req = Request::get("http://web.default:8080/a?b=1")
            .header("host", "wrong")
            .body(())
            .expect("req");
        let ep: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let authority = request_authority(&req).map(str::to_owned);
        normalize_request(&mut req, authority.as_deref(), ep);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "web.default:8080");
    }

    #[test]
    fn h2_requests_keep_their_authority() {
        let mut req = Request::post("/pkg.Svc/M")
            .version(HttpVersion::HTTP_2)
            .body(())
            .expect("req");
        normalize_request(
            &mut req,
            Some("grpc.default:50051"),
            ([127, 0, 0, 1], 1).into(),
        );
        assert_eq!(req.uri(), "http://grpc.default:50051/pkg.Svc/M");
    }
}
