//! A bounded HTTP/1 or HTTP/2 load generator: open-loop at a fixed rate (latency
//! measured from each request's scheduled start, so a stalled server cannot hide its
//! queueing) and closed-loop at a fixed concurrency (for maximum throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::BodyExt;

use crate::client;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// Requests that got a 2xx response.
    pub ok: u64,
    /// Requests that failed or got another status.
    pub errors: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Outcome {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// Where to send requests: the connect address and the `Host` header.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header (HTTP/2: the `:authority`).
    pub host: String,
    /// The path.
    pub path: String,
    /// HTTP/2 with prior knowledge (each connection one stream at a time, as a unary
    /// gRPC client's channel per caller), else HTTP/1.1.
    pub h2: bool,
}

/// One keep-alive connection of the load.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<crate::backend::Body>),
    H2(hyper::client::conn::http2::SendRequest<crate::backend::Body>),
    /// Could not connect: every request on it fails until it reconnects.
    Down,
}

async fn connect(t: &Target) -> Conn {
    let conn = if t.h2 {
        client::try_h2(t.addr).await.map(Conn::H2)
    } else {
        client::try_h1(t.addr).await.map(Conn::H1)
    };
    conn.unwrap_or(Conn::Down)
}

async fn one(tx: &mut Conn, t: &Target) -> bool {
    let req = match tx {
        Conn::H1(_) => Request::get(t.path.as_str()).header("host", t.host.as_str()),
        Conn::H2(_) => Request::get(format!("http://{}{}", t.host, t.path)),
        Conn::Down => return false,
    };
    let Ok(req) = req.body(client::body(Bytes::new())) else {
        return false;
    };
    let sent = match tx {
        Conn::H1(tx) => tx.send_request(req).await,
        Conn::H2(tx) => tx.send_request(req).await,
        Conn::Down => return false,
    };
    match sent {
        Ok(rsp) => {
            let ok = rsp.status().is_success();
            ok & rsp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Sends `rate` requests per second for `duration` over `connections` keep-alive
/// connections, measuring each latency from when the request was due.
pub async fn fixed_rate(t: &Target, rate: u32, duration: Duration, connections: u32) -> Outcome {
    let connections = connections.max(1);
    let per_conn_interval = Duration::from_secs_f64(connections as f64 / rate.max(1) as f64);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let per_conn = total / connections as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = connect(&t).await;
            let mut h = histogram();
            let (mut ok, mut errors) = (0, 0);
            // Stagger connections so that requests are spread evenly over time.
            let offset = per_conn_interval.mul_f64(c as f64 / connections as f64);
            let mut previous_done = start;
            for i in 0..per_conn {
                let due = start + offset + per_conn_interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                // Latency counts from when the request was due if the previous response
                // made it late (coordinated omission), but not the timer's own
                // millisecond granularity when the connection was idle in time.
                let from = if previous_done > due {
                    due
                } else {
                    Instant::now()
                };
                let success = one(&mut tx, &t).await;
                previous_done = Instant::now();
                if success {
                    ok += 1;
                    h.saturating_record(from.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    tx = connect(&t).await;
                }
            }
            (h, ok, errors)
        }));
    }
    collect(tasks, start).await
}

/// Keeps `concurrency` requests in flight for `duration` (closed loop).
pub async fn max_throughput(t: &Target, concurrency: u32, duration: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (t, sent) = (t.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = connect(&t).await;
            let mut h = histogram();
            let (mut ok, mut errors) = (0, 0);
            while Instant::now() < deadline {
                let began = Instant::now();
                sent.fetch_add(1, Ordering::Relaxed);
                if one(&mut tx, &t).await {
                    ok += 1;
                    h.saturating_record(began.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    tx = connect(&t).await;
                }
            }
            (h, ok, errors)
        }));
    }
    collect(tasks, start).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, u64, u64)>>,
    start: Instant,
) -> Outcome {
    let mut out = Outcome {
        latency: histogram(),
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        if let Ok((h, ok, errors)) = t.await {
            let _ = out.latency.add(&h);
            out.ok += ok;
            out.errors += errors;
        }
    }
    out.elapsed = start.elapsed();
    out
}
