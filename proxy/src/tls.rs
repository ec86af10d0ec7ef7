//! Inbound TLS: telling the mesh's mTLS (a ClientHello naming this proxy's identity)
//! from an application's own TLS, which passes through untouched.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes buffered while waiting for a whole ClientHello.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads until `prefix` holds a whole ClientHello and returns the server name it asks
/// for. `None` when it names none, is not a ClientHello, or does not complete in time;
/// the bytes read stay in `prefix` either way, to be replayed.
pub async fn client_hello_sni<I: AsyncRead + Unpin>(
    io: &mut I,
    prefix: &mut BytesMut,
    timeout: Duration,
) -> std::io::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    // One acceptor, fed each byte once: a client dribbling its hello costs nothing more.
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        let mut rest = &prefix[fed..];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
        fed = prefix.len();
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_owned));
            }
            Ok(None) if prefix.len() < MAX_CLIENT_HELLO => {}
            Ok(None) | Err(_) => return Ok(None),
        }
        match tokio::time::timeout_at(deadline, io.read_buf(prefix)).await {
            Err(_) | Ok(Ok(0)) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client asking for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = crate::identity::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[tokio::test]
    async fn reads_the_server_name_across_partial_reads() {
        let hello = client_hello("web.default.serviceaccount.identity.mesh.cluster.local");
        let (mut a, mut b) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in hello.chunks(7) {
                b.write_all(chunk).await.expect("write");
            }
            b
        });
        let mut prefix = BytesMut::new();
        let sni = client_hello_sni(&mut a, &mut prefix, Duration::from_secs(5))
            .await
            .expect("read");
        assert_eq!(
            sni.as_deref(),
            Some("web.default.serviceaccount.identity.mesh.cluster.local")
        );
        drop(writer.await);
    }

    #[tokio::test]
    async fn junk_is_not_a_client_hello() {
        let (mut a, _b) = tokio::io::duplex(16);
        let mut prefix = BytesMut::from(&b"\x16\x03\x01\x00\x05hello"[..]);
        let sni = client_hello_sni(&mut a, &mut prefix, Duration::from_millis(50))
            .await
            .expect("read");
        assert_eq!(sni, None);
        assert_eq!(
            &prefix[..],
            b"\x16\x03\x01\x00\x05hello",
            "bytes kept for replay"
        );
    }
}
