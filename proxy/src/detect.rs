//! Protocol detection: reads the first bytes a client sends and decides whether the
//! connection is HTTP/2 (prior knowledge), HTTP/1, or opaque TCP.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method name we accept when sniffing HTTP/1 (`OPTIONS` and friends fit).
const MAX_METHOD_LEN: usize = 24;
/// A request line longer than this is left to the HTTP parser (which answers 414).
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

/// Decides from a prefix, or returns `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // A TLS handshake record: content type 22, then major version 3.
    if buf[0] == 0x16 {
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
    // HTTP/1: an upper-case method token, a space, and a request line that ends in an
    // `HTTP/` version. A text protocol whose first word looks like a method (a Redis
    // inline command, say) is not HTTP and stays opaque.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b' ' if i > 0 => return request_line(buf),
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD_LEN => {}
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() >= MAX_METHOD_LEN {
        return Some(Protocol::Opaque);
    }
    None
}

/// Decides on a prefix that starts like an HTTP/1 request line.
fn request_line(buf: &[u8]) -> Option<Protocol> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // An enormous URI: let the HTTP parser answer it.
        return (buf.len() >= MAX_REQUEST_LINE).then_some(Protocol::Http1);
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    Some(if version.starts_with(b"HTTP/") {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Reads from `io` until the protocol is known, the client stops sending for `timeout`
/// (then the connection is opaque: server-speaks-first protocols send nothing), or EOF.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<Detected> {
    let mut prefix = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut prefix)).await;
        match read {
            Err(_elapsed) => {
                return Ok(Detected {
                    protocol: Some(Protocol::Opaque),
                    prefix,
                });
            }
            Ok(Ok(0)) => {
                // EOF: whatever arrived is opaque data, or nothing at all.
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
            Ok(Err(e)) => return Err(e),
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
            classify(b"GET / HTTP/1.1"),
            None,
            "the line is not finished yet"
        );
        assert_eq!(
            classify(b"SET key value\r\n"),
            Some(Protocol::Opaque),
            "a Redis inline command"
        );
        assert_eq!(
            classify(b"GET /\r\n"),
            Some(Protocol::Opaque),
            "HTTP/0.9 is not served"
        );
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(classify(&long), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"\x16\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
        assert_eq!(classify(&[b'A'; 30]), Some(Protocol::Opaque));
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
