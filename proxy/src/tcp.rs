//! Opaque TCP: bytes forwarded both ways with half-close honoured, and byte counting.

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
    let server = tokio::time::timeout(connect_timeout, TcpStream::connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {target} timed out"),
            )
        })??;
    let _origin = origins.track(&server);
    let _ = server.set_nodelay(true);
    let mut server = CountingIo::new(server, metrics.tcp_open(direction, "dst", tls));
    // copy_bidirectional shuts down each write side when its read side reaches EOF, so a
    // half-close travels through and the other direction keeps flowing.
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
