//! Protocol detection: reads the first bytes a client sends and decides whether the
//! connection is HTTP/2 (prior knowledge), HTTP/1, or opaque TCP.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How far into a connection detection reads before it stops looking: a request line
/// (or run of leading empty lines) this long is left to the HTTP parser, which answers
/// it (414, 400) rather than passing it on raw.
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What a connection speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x requests.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
    /// A TLS ClientHello: the mesh's mTLS when it names this proxy, else the
    /// application's own TLS (forwarded byte for byte).
    Tls,
    /// Anything else: forwarded byte for byte.
    Opaque,
}

/// The outcome of sniffing a connection, with the bytes consumed while doing so.
#[derive(Debug)]
pub struct Detected {
    /// The protocol, or `None` when the client closed before sending anything.
    pub protocol: Option<Protocol>,
    /// The bytes already read; they must be replayed before the rest of the stream.
    pub prefix: BytesMut,
}

/// Why detection gave up on a connection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Reading failed.
    #[error("reading the first bytes failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client began something that may be HTTP (or TLS, or the HTTP/2 preface)
    /// and stopped before it could be told apart: it is closed, never passed on raw,
    /// so that a request held back cannot skip the proxy's HTTP handling.
    #[error("client stalled after {0} bytes that may begin an HTTP request")]
    Stalled(usize),
}

/// Whether `b` may appear in an HTTP token (RFC 9110 §5.6.2), e.g. a method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a lenient HTTP/1 server could take `b` for whitespace between the parts of
/// a request line: RFC 9112's SP and HTAB, and what Python's `str.split` also splits
/// on (`http.server`, wsgiref and werkzeug parse request lines that way).
fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0)
}

/// Whether a connection's first byte says binary: no text protocol starts with it.
fn is_binary(b: u8) -> bool {
    !(is_separator(b) || b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b))
}

/// Decides from a prefix, or returns `None` when more bytes are needed.
///
/// Whatever an HTTP/1 server, however lenient, could take for a request is HTTP here,
/// so that it gets the proxy's HTTP handling (header hygiene, the verified
/// `mesh-client-id`, limits) or the HTTP parser's refusal, never a raw path to the
/// application. After any leading empty lines and whitespace, the first line is HTTP
/// when it names an `HTTP/` version anywhere, or when it begins with a token and a
/// separator (an HTTP/0.9-style `GET /path`: some servers still parse headers after
/// it). Text that is neither (`PING`, Redis's `*3`) is opaque once its first line ends;
/// so is a connection whose first byte no text protocol starts with (binary protocols:
/// PostgreSQL, MongoDB, Kafka). Line protocols such as memcached's belong on opaque
/// ports (`MESH_PROXY_OPAQUE_PORTS`, which lists the well-known ones by default).
///
/// A decision never changes as more bytes arrive: it depends on the first
/// [`MAX_REQUEST_LINE`] bytes alone, and is HTTP/1 when those leave it open.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let decided = classify_prefix(&buf[..buf.len().min(MAX_REQUEST_LINE)]);
    match decided {
        None if buf.len() >= MAX_REQUEST_LINE => Some(Protocol::Http1),
        d => d,
    }
}

/// [`classify`] on at most [`MAX_REQUEST_LINE`] bytes: `None` while undecided.
fn classify_prefix(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    // A TLS handshake record: content type 22, then major version 3.
    if first == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if is_binary(first) {
        return Some(Protocol::Opaque);
    }
    // Only empty lines and whitespace so far: an HTTP server would keep waiting.
    let start = buf
        .iter()
        .position(|&b| !(b == b'\r' || b == b'\n' || is_separator(b)))?;
    let rest = &buf[start..];
    let end = rest.iter().position(|&b| b == b'\n');
    let line = &rest[..end.unwrap_or(rest.len())];
    if line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/")) {
        return Some(Protocol::Http1);
    }
    let method = line.iter().take_while(|&&b| is_tchar(b)).count();
    if method > 0 && line.get(method).copied().is_some_and(is_separator) {
        return Some(Protocol::Http1);
    }
    end.map(|_| Protocol::Opaque)
}

/// Reads from `io` until the protocol is known, or EOF. A client that sends nothing
/// for `timeout` is opaque (server-speaks-first protocols send nothing); one that sent
/// a beginning it did not finish is [`DetectError::Stalled`].
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> Result<Detected, DetectError> {
    let mut prefix = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut prefix)).await;
        match read {
            Err(_elapsed) if prefix.is_empty() => {
                return Ok(Detected {
                    protocol: Some(Protocol::Opaque),
                    prefix,
                });
            }
            Err(_elapsed) => return Err(DetectError::Stalled(prefix.len())),
            Ok(Ok(0)) => {
                // EOF: whatever arrived is opaque data, or nothing at all. Bytes cut
                // short of a first line's end cannot carry a header, so passing them
                // on is safe (and what a client that writes one word then half-closes
                // expects).
                let protocol = (!prefix.is_empty()).then_some(Protocol::Opaque);
                return Ok(Detected { protocol, prefix });
            }
            Ok(Ok(_)) => {
                if let Some(protocol) = classify(&prefix) {
                    return Ok(Detected {
                        protocol: Some(protocol),
                        prefix,
                    });
                }
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        // The version decides; hyper then judges it (HTTP/9.9 gets its 400).
        assert_eq!(classify(b"GET / HTTP/9.9\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"GET / HTT"),
            Some(Protocol::Http1),
            "a method and a separator are enough"
        );
        assert_eq!(
            classify(b"*1\r\n$4\r\nPING\r\n"),
            Some(Protocol::Opaque),
            "a Redis command (RESP)"
        );
        assert_eq!(
            classify(b"GET /\r\n"),
            Some(Protocol::Http1),
            "HTTP/0.9-style: hyper refuses it, it never reaches the app raw"
        );
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(classify(&long), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"\x16\x01"), Some(Protocol::Opaque));
        assert_eq!(
            classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            Some(Protocol::Opaque)
        );
        assert_eq!(classify(b"PING\r\n"), Some(Protocol::Opaque));
    }

    /// Everything an HTTP/1 server would parse as a request is HTTP, so that it never
    /// reaches the application raw (a forged `mesh-client-id` rides along otherwise).
    #[test]
    fn what_http_servers_accept_is_http() {
        for prefix in [
            b"\r\nGET / HTTP/1.1\r\n".as_slice(),
            b"\n\n\r\nGET / HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n",
            b"FOO-BAR_baz / HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET / http/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA / HTTP/1.1\n",
            // What Python's http.server, wsgiref and werkzeug accept.
            b"GET\t/\tHTTP/1.1\r\n",
            b"\x0bGET / HTTP/1.1\r\n",
            b"\x0cGET\x0c/ HTTP/1.1\r\n",
            b"GET /secret\r\nmesh-client-id: x\r\n",
            b"G\"ET / HTTP/1.1\r\n",
            b"(x) / HTTP/1.1\r\n",
            b"SET key value\r\n",
        ] {
            assert_eq!(
                classify(prefix),
                Some(Protocol::Http1),
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
        // Still undecided: each may become a request.
        for prefix in [b"\r\n".as_slice(), b"get", &[b'A'; 30], b"(x"] {
            assert_eq!(
                classify(prefix),
                None,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
        // Never opaque, however long: the HTTP parser answers it.
        assert_eq!(classify(&[b'\n'; MAX_REQUEST_LINE]), Some(Protocol::Http1));
        assert_eq!(classify(&[b'A'; MAX_REQUEST_LINE]), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn a_stalled_request_line_is_an_error_not_opaque() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        server.write_all(b"\r\nGE").await.expect("write");
        let d = detect(&mut client, Duration::from_millis(20)).await;
        assert!(matches!(d, Err(DetectError::Stalled(4))), "{d:?}");
    }

    #[tokio::test]
    async fn one_word_then_eof_is_opaque() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        server.write_all(b"hello").await.expect("write");
        drop(server);
        let d = detect(&mut client, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(d.protocol, Some(Protocol::Opaque));
        assert_eq!(&d.prefix[..], b"hello");
    }

    #[tokio::test]
    async fn server_first_protocols_time_out_as_opaque() {
        let (mut client, _server) = tokio::io::duplex(64);
        let d = detect(&mut client, Duration::from_millis(20))
            .await
            .expect("detect");
        assert_eq!(d.protocol, Some(Protocol::Opaque));
        assert!(d.prefix.is_empty());
    }

    #[tokio::test]
    async fn split_preface_is_reassembled() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            b.write_all(&H2_PREFACE[..5]).await.expect("write");
            tokio::task::yield_now().await;
            b.write_all(&H2_PREFACE[5..]).await.expect("write");
            b
        });
        let d = detect(&mut a, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(d.protocol, Some(Protocol::Http2));
        assert_eq!(&d.prefix[..], H2_PREFACE);
        drop(writer.await);
    }
}
