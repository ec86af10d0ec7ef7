//! The access log: a line per request (time, direction, method, authority, path,
//! status, latency, response bytes, route, client and server identities, trace id),
//! as text or JSON, on
//! stdout. Lines are handed to a writer thread through a bounded queue: a request
//! never waits for the log, and lines the queue has no room for are dropped and
//! counted.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use crate::tap::{Call, rfc3339};

/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `key=value` pairs, one request a line.
    Text,
    /// One JSON object a line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // Linkerd's `apache` is its text form.
            "text" | "apache" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: expected text or json")),
        }
    }
}

/// The access log of this proxy.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log in `format`, written to stdout by a thread of its own; lines dropped are
    /// counted in `dropped`.
    pub fn stdout(format: Format, dropped: Arc<AtomicU64>) -> Arc<Self> {
        let (log, rx) = Self::counted(format, dropped);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_all(rx, std::io::stdout()));
        if let Err(error) = spawned {
            tracing::warn!(%error, "no access log writer: lines are dropped");
        }
        log
    }

    /// A log and the receiving end of its lines (tests read them).
    pub fn new(format: Format) -> (Arc<Self>, Receiver<String>) {
        Self::counted(format, Arc::default())
    }

    fn counted(format: Format, dropped: Arc<AtomicU64>) -> (Arc<Self>, Receiver<String>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let log = Arc::new(Self {
            format,
            tx,
            dropped,
        });
        (log, rx)
    }

    /// Lines dropped for want of room so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Logs `e`, without waiting.
    pub fn log(&self, e: &Call<'_>) {
        let line = self.line(e);
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn line(&self, e: &Call<'_>) -> String {
        let (client, server) = (e.client_id, e.server_id);
        let time = rfc3339(e.at);
        let direction = e.direction.as_str();
        let latency_ms = e.latency.as_secs_f64() * 1000.0;
        match self.format {
            Format::Json => serde_json::json!({
                "time": time,
                "direction": direction,
                "method": e.method,
                "authority": e.authority,
                "path": e.path,
                "status": e.status,
                "latency_ms": (latency_ms * 1000.0).round() / 1000.0,
                "bytes": e.bytes,
                "route": e.route,
                "client_id": client,
                "server_id": server,
                "trace_id": e.trace_id,
            })
            .to_string(),
            Format::Text => format!(
                "{time} {direction} {method} {authority} {path} {status} {latency_ms:.3}ms bytes={bytes} route={route} client_id={client} server_id={server} trace_id={trace}",
                method = e.method,
                authority = quoted(e.authority),
                path = quoted(e.path),
                status = e.status,
                bytes = e.bytes,
                trace = e.trace_id.unwrap_or("-"),
                route = quoted(e.route),
                client = client.unwrap_or("-"),
                server = server.unwrap_or("-"),
            ),
        }
    }
}

/// `s`, or `"s"` with escapes when it holds spaces, quotes or controls (a request's
/// path is the client's to choose: a line must stay one line).
fn quoted(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        s.to_string()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

/// Writes every line received to `out`, flushing when no more are waiting.
fn write_all(rx: Receiver<String>, out: impl Write) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = writeln!(out, "{line}");
        while let Ok(more) = rx.try_recv() {
            let _ = writeln!(out, "{more}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Direction;
    use std::time::Duration;

    /// An outbound call from `client` (this proxy's identity, if it has one).
    fn entry<'a>(path: &'a str, client: Option<&'a str>) -> Call<'a> {
        Call {
            at: std::time::UNIX_EPOCH + Duration::from_millis(1_796_349_600_123),
            direction: Direction::Outbound,
            method: "GET",
            authority: "reviews.default.svc.cluster.local:9080",
            path,
            status: 200,
            grpc_status: None,
            latency: Duration::from_micros(1500),
            bytes: 1024,
            route: "reviews/jason",
            client_id: client,
            server_id: Some("reviews.default.serviceaccount.identity.mesh.cluster.local"),
            tls: "true",
            client_addr: None,
            endpoint: None,
            dst_workload: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        }
    }

    #[test]
    fn lines_are_text_or_json_and_never_block() {
        let me = Some("web.default.serviceaccount");
        let (log, rx) = AccessLog::new(Format::Text);
        log.log(&entry("/books?x=1", me));
        let line = rx.recv().expect("line");
        assert_eq!(
            line,
            "2026-12-04T02:00:00.123Z outbound GET reviews.default.svc.cluster.local:9080 /books?x=1 200 1.500ms bytes=1024 route=reviews/jason client_id=web.default.serviceaccount server_id=reviews.default.serviceaccount.identity.mesh.cluster.local trace_id=4bf92f3577b34da6a3ce929d0e0e4736"
        );
        log.log(&entry("/a b\n\"c\"", me));
        let line = rx.recv().expect("line");
        assert!(line.contains(r#""/a b\n\"c\"""#), "{line}");
        assert!(!line.contains('\n'));

        let (log, rx) = AccessLog::new(Format::Json);
        log.log(&entry("/books", None));
        let v: serde_json::Value = serde_json::from_str(&rx.recv().expect("line")).expect("json");
        assert_eq!(v["status"], 200);
        assert_eq!(v["route"], "reviews/jason");
        assert_eq!(v["client_id"], serde_json::Value::Null);
        assert_eq!(v["bytes"], 1024);
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        // A full queue drops lines instead of waiting.
        for _ in 0..QUEUE + 10 {
            log.log(&entry("/", None));
        }
        assert_eq!(log.dropped(), 10);
        assert!("apache".parse::<Format>().is_ok() && "xml".parse::<Format>().is_err());
    }
}
