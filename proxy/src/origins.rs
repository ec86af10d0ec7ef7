//! The proxy's own outgoing connections, by their local address. A connection the
//! proxy accepts from one of them came through the proxy itself: a loop (a request
//! routed back to one of its listeners under an address no list of its own names, such
//! as `0.0.0.0`, `[::ffff:127.0.0.1]` or the pod's IP), or a request relayed to its
//! admin server, which must never serve one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

/// The local addresses of the connections the proxy has open to upstreams.
#[derive(Debug, Default)]
pub struct Origins(Mutex<HashSet<SocketAddr>>);

/// One tracked connection: forgotten when dropped, so keep it as long as the
/// connection.
#[derive(Debug)]
#[must_use = "the connection is only tracked while its Origin lives"]
pub struct Origin {
    origins: Arc<Origins>,
    addr: Option<SocketAddr>,
}

/// `addr` with an IPv4-mapped IPv6 address as plain IPv4, so that both spellings of
/// one socket compare equal.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Origins {
    /// Tracks `stream`, a connection the proxy opened, until the returned guard drops.
    pub fn track(self: &Arc<Self>, stream: &TcpStream) -> Origin {
        let addr = stream.local_addr().ok().map(canonical);
        if let Some(addr) = addr {
            self.lock().insert(addr);
        }
        Origin {
            origins: self.clone(),
            addr,
        }
    }

    /// Whether a connection from `peer` is one the proxy itself opened.
    pub fn contains(&self, peer: SocketAddr) -> bool {
        self.lock().contains(&canonical(peer))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(addr) = self.addr {
            self.origins.lock().remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_to_ourselves_is_recognised_until_it_closes() {
        let origins = Arc::new(Origins::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let out = TcpStream::connect(addr).await.expect("connect");
        let origin = origins.track(&out);
        let (_in, peer) = listener.accept().await.expect("accept");
        assert!(origins.contains(peer));
        let mapped = SocketAddr::new(
            std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
            peer.port(),
        );
        assert!(origins.contains(mapped), "IPv4-mapped spelling");
        drop(origin);
        assert!(!origins.contains(peer));
    }
}
