//! The proxy's own outgoing connections, by their two ends. A connection the proxy
//! accepts whose ends are one of them, swapped, came through the proxy itself: a loop (a request
//! routed back to one of its listeners under an address no list of its own names, such
//! as `0.0.0.0`, `[::ffff:127.0.0.1]` or the pod's IP), or a request relayed to its
//! admin server, which must never serve one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

/// The connections the proxy has open to upstreams, as (local, remote) address pairs.
/// Both ends are needed: the kernel gives one local port to several connections with
/// different remote ends, so a client of the proxy may share a port with one of the
/// proxy's own upstream connections.
#[derive(Debug, Default)]
pub struct Origins(Mutex<HashSet<(SocketAddr, SocketAddr)>>);

/// One tracked connection: forgotten when dropped, so keep it as long as the
/// connection.
#[derive(Debug)]
#[must_use = "the connection is only tracked while its Origin lives"]
pub struct Origin {
    origins: Arc<Origins>,
    ends: Option<(SocketAddr, SocketAddr)>,
}

/// `addr` with an IPv4-mapped IPv6 address as plain IPv4, so that both spellings of
/// one socket compare equal.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Origins {
    /// Tracks `stream`, a connection the proxy opened, until the returned guard drops.
    pub fn track(self: &Arc<Self>, stream: &TcpStream) -> Origin {
        let ends = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(local), Ok(remote)) => Some((canonical(local), canonical(remote))),
            _ => None,
        };
        if let Some(ends) = ends {
            self.lock().insert(ends);
        }
        Origin {
            origins: self.clone(),
            ends,
        }
    }

    /// Whether an accepted connection from `peer` to `local` is one the proxy itself
    /// opened (its local end is `peer`, its remote end `local`).
    pub fn contains(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        self.lock().contains(&(canonical(peer), canonical(local)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(SocketAddr, SocketAddr)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(ends) = self.ends {
            self.origins.lock().remove(&ends);
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
        assert!(origins.contains(peer, addr));
        let mapped = SocketAddr::new(
            std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
            peer.port(),
        );
        assert!(origins.contains(mapped, addr), "IPv4-mapped spelling");
        // Another connection from the same local port to another listener is not ours
        // (the kernel shares ephemeral ports across remote ends).
        let other: SocketAddr = ([127, 0, 0, 1], addr.port().wrapping_add(1)).into();
        assert!(!origins.contains(peer, other));
        drop(origin);
        assert!(!origins.contains(peer, addr));
    }
}
