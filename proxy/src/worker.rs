//! Workers: with `MESH_PROXY_WORKERS` above one, the proxy runs one single-threaded
//! runtime per worker, each accepting on its own `SO_REUSEPORT` socket of the inbound
//! and outbound addresses (the kernel spreads connections over them), with its own
//! upstream connection pools. A request is served start to end on the thread that
//! accepted its connection: no work stealing and no cross-thread wake-ups, which on a
//! sidecar's one or two cores cost more than they balance (`docs/benchmarks.md`).
//! Policy, discovery, identity and metrics are shared; the control plane and the
//! admin server run on the first worker.

use std::cell::Cell;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

thread_local! {
    static INDEX: Cell<u16> = const { Cell::new(0) };
}

/// The worker this thread runs (0: the first, or the only one).
pub fn index() -> u16 {
    INDEX.with(Cell::get)
}

/// Marks this thread as worker `i`.
pub fn enter(i: u16) {
    INDEX.with(|c| c.set(i));
}

/// How many workers to run for `requested`: no more than the CPUs this process may run
/// on (its affinity mask and cgroup CPU quota, as `std::thread::available_parallelism`
/// reads them), since a worker without a core of its own only adds wake-ups and
/// contention — two workers pinned to one CPU serve less than one. A warning says so.
pub fn usable(requested: u16) -> u16 {
    let cpus = std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX))
        .unwrap_or(1);
    let workers = cap(requested, cpus);
    if workers < requested {
        tracing::warn!(
            requested,
            cpus,
            workers,
            "MESH_PROXY_WORKERS is above the CPUs this proxy may use: running one worker per CPU"
        );
    }
    workers
}

/// `requested` workers, at most `cpus` and at least one.
fn cap(requested: u16, cpus: u16) -> u16 {
    requested.min(cpus).max(1)
}

/// A listening socket on `addr` that other workers' sockets may share
/// (`SO_REUSEPORT`; Linux shares a port only between sockets of one user).
pub fn shared_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port() {
        let first = shared_listener("127.0.0.1:0".parse().expect("addr")).expect("first");
        let addr = first.local_addr().expect("addr");
        let second = shared_listener(addr).expect("a second socket on the same port");
        assert_eq!(second.local_addr().expect("addr"), addr);
        // A plain socket on the port is refused: only workers share it.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }

    #[test]
    fn workers_are_capped_at_the_usable_cpus() {
        assert_eq!(cap(1, 8), 1);
        assert_eq!(cap(4, 8), 4);
        assert_eq!(cap(4, 2), 2);
        assert_eq!(cap(2, 1), 1);
        assert_eq!(cap(3, 0), 1, "at least one worker");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(usize::from(usable(256)) <= cpus.max(1));
        assert_eq!(usable(1), 1);
    }

    #[test]
    fn each_thread_knows_its_worker() {
        assert_eq!(index(), 0);
        std::thread::spawn(|| {
            enter(3);
            assert_eq!(index(), 3);
        })
        .join()
        .expect("thread");
        assert_eq!(index(), 0);
    }
}
