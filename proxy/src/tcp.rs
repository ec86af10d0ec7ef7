//! Opaque TCP: bytes forwarded both ways with half-close honoured, and byte counting;
//! between meshed proxies, over mTLS with a transport header naming the target port.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::{Metrics, TcpStats};
use crate::origins::Origins;
use crate::vocab::{Direction, Tls};

pin_project_lite::pin_project! {
    /// A stream that counts the bytes read and written, and its close, in [`TcpStats`].
    #[derive(Debug)]
    pub struct CountingIo<I> {
        #[pin]
        io: I,
        stats: Arc<TcpStats>,
    }

    impl<I> PinnedDrop for CountingIo<I> {
        fn drop(this: Pin<&mut Self>) {
            this.stats.closed();
        }
    }
}

impl<I> CountingIo<I> {
    /// Wraps `io`; the connection counts as closed when the wrapper is dropped.
    pub fn new(io: I, stats: Arc<TcpStats>) -> Self {
        Self { io, stats }
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        this.stats.read(buf.filled().len() - before);
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.stats.wrote(n);
        }
        res
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.stats.wrote(n);
        }
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

fn timed_out(target: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connect to {target} timed out"),
    )
}

/// A connection to `target` within `timeout`, without Nagle's delay.
async fn connect(target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| timed_out(target))??;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Forwards `client` to `target` byte for byte until both directions have closed; the
/// upstream connection is tracked in `origins` meanwhile.
pub async fn forward<I>(
    mut client: I,
    target: SocketAddr,
    connect_timeout: Duration,
    metrics: &Metrics,
    origins: &Arc<Origins>,
    direction: Direction,
    tls: Tls,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let server = connect(target, connect_timeout).await?;
    let _origin = origins.track(&server);
    let mut server = CountingIo::new(server, metrics.tcp_open(direction, "dst", tls));
    // copy_bidirectional shuts down each write side when its read side reaches EOF, so a
    // half-close travels through and the other direction keeps flowing.
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// What an opaque connection between proxies starts with (after the mTLS handshake,
/// ALPN [`crate::identity::ALPN_OPAQUE`]): these four bytes, then the target port
/// (big-endian `u16`), then the client's bytes.
pub const TRANSPORT_MAGIC: &[u8; 4] = b"MTH1";

/// The transport header for `port`.
pub fn transport_header(port: u16) -> [u8; 6] {
    let [hi, lo] = port.to_be_bytes();
    let m = TRANSPORT_MAGIC;
    [m[0], m[1], m[2], m[3], hi, lo]
}

/// Reads a transport header within `timeout`: the target port, or why not.
pub async fn read_transport_header<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 6];
    tokio::time::timeout(timeout, io.read_exact(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no transport header in time"))??;
    if &buf[..4] != TRANSPORT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a mesh transport header",
        ));
    }
    let port = u16::from_be_bytes([buf[4], buf[5]]);
    if port == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "target port 0"));
    }
    Ok(port)
}

/// Forwards `client` over mTLS to a meshed peer's proxy at `connect`, which must
/// present `identity`, naming `target_port` in the transport header; both directions
/// until closed.
#[allow(clippy::too_many_arguments)]
pub async fn forward_mtls<I>(
    mut client: I,
    connect: SocketAddr,
    identity: &str,
    target_port: u16,
    tls: &crate::identity::Identity,
    connect_timeout: Duration,
    metrics: &Metrics,
    origins: &Arc<Origins>,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let tcp = self::connect(connect, connect_timeout).await?;
    let _origin = origins.track(&tcp);
    let name = rustls::pki_types::ServerName::try_from(identity.to_string())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid peer identity"))?;
    let io = CountingIo::new(
        tcp,
        metrics.tcp_open(Direction::Outbound, "dst", Tls::Secured),
    );
    let connector = tokio_rustls::TlsConnector::from(tls.client_config_opaque());
    let mut server = tokio::time::timeout(connect_timeout, connector.connect(name, io))
        .await
        .map_err(|_| timed_out(connect))??;
    if server.get_ref().1.alpn_protocol() != Some(crate::identity::ALPN_OPAQUE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{connect}: the peer's proxy does not carry opaque TCP"),
        ));
    }
    server.write_all(&transport_header(target_port)).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transport_headers_round_trip_and_garbage_is_refused() {
        let mut ok: &[u8] = &transport_header(8080);
        assert_eq!(
            read_transport_header(&mut ok, Duration::from_secs(1))
                .await
                .expect("header"),
            8080
        );
        let mut bad: &[u8] = b"GET / HTTP/1.1";
        assert!(
            read_transport_header(&mut bad, Duration::from_secs(1))
                .await
                .is_err()
        );
        let mut zero: &[u8] = &transport_header(0);
        assert!(
            read_transport_header(&mut zero, Duration::from_secs(1))
                .await
                .is_err()
        );
        let mut short: &[u8] = b"MTH";
        assert!(
            read_transport_header(&mut short, Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
