//! The proxy's settings: command-line flags, each backed by a `MESH_PROXY_*` variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// mesh-proxy: the mesh's sidecar proxy.
#[derive(Clone, Debug, Parser)]
#[command(name = "mesh-proxy", version, about)]
pub struct Config {
    /// Where peers' traffic to this pod arrives (iptables redirects inbound here).
    #[arg(long, env = "MESH_PROXY_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: SocketAddr,

    /// Where the application's outbound traffic arrives; also usable as an HTTP proxy.
    #[arg(
        long,
        env = "MESH_PROXY_OUTBOUND_ADDR",
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_addr: SocketAddr,

    /// Admin server: /metrics, /live, /ready, POST /shutdown, and /tap for processes
    /// on loopback.
    #[arg(long, env = "MESH_PROXY_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,

    /// The tap server: live calls over mTLS, for `MESH_PROXY_TAP_CLIENTS` only (the
    /// injector sets `0.0.0.0:4190`). Needs an identity; unset: tap only on the admin
    /// port, from loopback.
    #[arg(long, env = "MESH_PROXY_TAP_ADDR")]
    pub tap_addr: Option<SocketAddr>,

    /// The identities that may tap this proxy over mTLS (comma-separated).
    #[arg(
        long,
        env = "MESH_PROXY_TAP_CLIENTS",
        value_delimiter = ',',
        default_value = "mesh-viz.mesh.serviceaccount.identity.mesh.cluster.local"
    )]
    pub tap_clients: Vec<String>,

    /// The application's address, for inbound connections that were not redirected by
    /// iptables (local mode). Redirected connections go to their original destination.
    #[arg(long, env = "MESH_PROXY_INBOUND_APP_ADDR")]
    pub inbound_app_addr: Option<SocketAddr>,

    /// Worker threads, each a single-threaded runtime on its own `SO_REUSEPORT`
    /// sockets of the inbound and outbound addresses (`mesh_proxy::worker`). One suits
    /// a sidecar sharing its pod's CPU with the app; give more to a proxy that must
    /// carry more than one core's worth of traffic. Capped at the CPUs the proxy may
    /// run on (its affinity and CPU quota).
    #[arg(long, env = "MESH_PROXY_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// The destination service (`host:port`): where endpoints, identities and profiles
    /// come from. Without it the proxy forwards by DNS alone.
    #[arg(long, env = "MESH_PROXY_DESTINATION_ADDR")]
    pub destination_addr: Option<String>,

    /// The identity service (`host:port`). Without it the proxy runs without mTLS:
    /// plaintext, labelled `tls="disabled"` in metrics.
    #[arg(long, env = "MESH_PROXY_IDENTITY_ADDR")]
    pub identity_addr: Option<String>,

    /// This proxy's identity: `SA.NS.serviceaccount.identity.mesh.cluster.local`.
    #[arg(long, env = "MESH_PROXY_IDENTITY_NAME")]
    pub identity_name: Option<String>,

    /// The identity service's own identity, checked on its certificate.
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY_SVC_NAME",
        default_value = "mesh-identity.mesh.serviceaccount.identity.mesh.cluster.local"
    )]
    pub identity_svc_name: String,

    /// Trust anchors: PEM text, or the path of a PEM file.
    #[arg(long, env = "MESH_PROXY_TRUST_ANCHORS")]
    pub trust_anchors: Option<String>,

    /// The service-account token file presented to the identity service.
    #[arg(
        long,
        env = "MESH_PROXY_TOKEN_PATH",
        default_value = "/var/run/secrets/tokens/mesh-identity-token"
    )]
    pub token_path: std::path::PathBuf,

    /// Inbound TLS mode for the workload: `permissive` accepts plaintext beside mTLS,
    /// `strict` refuses every connection that is not mTLS from a meshed peer.
    #[arg(long, env = "MESH_PROXY_INBOUND_TLS", value_enum, default_value_t = TlsMode::Permissive)]
    pub inbound_tls: TlsMode,

    /// Application ports that are strict whatever the workload's mode (comma-separated).
    #[arg(long, env = "MESH_PROXY_INBOUND_STRICT_PORTS", value_delimiter = ',')]
    pub inbound_strict_ports: Vec<u16>,

    /// Application ports that are permissive whatever the workload's mode.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND_PERMISSIVE_PORTS",
        value_delimiter = ','
    )]
    pub inbound_permissive_ports: Vec<u16>,

    /// The pod's name: with a destination service, the proxy asks the controller for
    /// its ports' inbound policy (mTLS mode); the flags above are the fallback.
    #[arg(long, env = "MESH_PROXY_POD_NAME")]
    pub pod_name: Option<String>,

    /// The pod's namespace, for resolving short service names.
    #[arg(long, env = "MESH_PROXY_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,mesh_proxy=debug`).
    #[arg(long, env = "MESH_PROXY_LOG", default_value = "info")]
    pub log: String,

    /// The access log on stdout, a line per request: `text` or `json` (Linkerd's
    /// `apache` is taken for `text`); unset: none.
    #[arg(long, env = "MESH_PROXY_ACCESS_LOG")]
    pub access_log: Option<crate::access_log::Format>,

    /// Where spans are exported (`host:port` or `http://host:port[/path]`): the proxy
    /// then joins each request's trace (W3C `traceparent` or B3), sets `x-request-id`
    /// when absent, and records a server span inbound and a client span outbound.
    /// Unset: no tracing.
    #[arg(long, env = "MESH_PROXY_TRACE_COLLECTOR")]
    pub trace_collector: Option<String>,

    /// How spans are exported: `otlp` (gRPC) or `zipkin` (v2 JSON over HTTP).
    #[arg(long, env = "MESH_PROXY_TRACE_PROTOCOL", default_value = "otlp")]
    pub trace_protocol: crate::trace::Protocol,

    /// The share (0 to 1) of traces started here that are recorded; a caller's own
    /// sampling decision always wins.
    #[arg(long, env = "MESH_PROXY_TRACE_SAMPLING", default_value_t = 0.01, value_parser = parse_share)]
    pub trace_sampling: f64,

    /// The `service.name` spans are reported under (default: the identity's
    /// `SA.NS`, else the pod's name).
    #[arg(long, env = "MESH_PROXY_TRACE_SERVICE_NAME")]
    pub trace_service_name: Option<String>,

    /// How long a connection to an endpoint may take before the request fails with 504.
    #[arg(long, env = "MESH_PROXY_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long to wait for a client's first bytes before treating the connection as
    /// opaque TCP (server-speaks-first protocols send nothing).
    #[arg(long, env = "MESH_PROXY_DETECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Ports whose traffic is opaque TCP, never HTTP: connections to them (by their
    /// original destination or target port) skip protocol detection, so
    /// server-speaks-first protocols need not wait for the detect timeout, and line
    /// protocols (memcached's `get key`) are not taken for HTTP. Inbound, a strict port
    /// still requires the mesh's mTLS. The default is Linkerd's list: SMTP, MySQL,
    /// Galera, PostgreSQL, Redis, Elasticsearch, memcached.
    #[arg(
        long,
        env = "MESH_PROXY_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<u16>,

    /// How long an HTTP/1 client may take to send a request's headers.
    #[arg(long, env = "MESH_PROXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a request may wait for its response headers when its route sets no
    /// timeout of its own (`0s`: no limit). One hung backend then cannot hold requests,
    /// and their in-flight slots, for ever.
    #[arg(long, env = "MESH_PROXY_RESPONSE_HEADERS_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub response_headers_timeout: Duration,

    /// How long a destination may go unused before the proxy drops what it holds for
    /// it: its endpoint and policy watches on the controller, and its endpoints'
    /// connection pools (`0s`: never).
    #[arg(long, env = "MESH_PROXY_DISCOVERY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub discovery_idle_timeout: Duration,

    /// How long an HTTP/2 connection a client opened may stay without a stream open
    /// (from its handshake on) before the proxy closes it with GOAWAY.
    #[arg(long, env = "MESH_PROXY_HTTP2_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http2_idle_timeout: Duration,

    /// Longest request path accepted, in bytes; longer ones get 414. Route matching
    /// (regular expressions among them) never reads more than this.
    #[arg(long, env = "MESH_PROXY_MAX_PATH_BYTES", default_value_t = 8 * 1024)]
    pub max_path_bytes: usize,

    /// Largest request head accepted, in bytes; larger heads get 431.
    #[arg(long, env = "MESH_PROXY_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Open connections accepted per listener; more wait in the kernel's backlog.
    #[arg(long, env = "MESH_PROXY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Requests in flight per direction; more are answered 503 at once.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_IN_FLIGHT_REQUESTS",
        default_value_t = 10_000
    )]
    pub max_in_flight_requests: usize,

    /// Requests in flight to one destination (outbound: one authority; inbound: one
    /// application port); more are answered 503 at once, so that one hung backend
    /// cannot take every slot from the others.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_IN_FLIGHT_PER_DESTINATION",
        default_value_t = 1_000
    )]
    pub max_in_flight_per_destination: usize,

    /// Concurrent streams per HTTP/2 connection.
    #[arg(
        long,
        env = "MESH_PROXY_MAX_CONCURRENT_STREAMS",
        default_value_t = 1_000
    )]
    pub max_concurrent_streams: u32,

    /// How long an idle upstream HTTP/1 connection is kept for reuse.
    #[arg(long, env = "MESH_PROXY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Whether `POST /shutdown` on the admin port stops the proxy (for jobs whose app
    /// must stop its sidecar). Off by default; when on, it is served only to clients
    /// on loopback that did not come through the proxy itself.
    #[arg(long, env = "MESH_PROXY_SHUTDOWN_ENDPOINT_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub shutdown_endpoint_enabled: bool,

    /// How long in-flight requests may take to finish after shutdown begins.
    #[arg(long, env = "MESH_PROXY_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,
}

/// Whether inbound plaintext is accepted.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plaintext accepted beside mTLS (labelled `tls="no_identity"`).
    Permissive,
    /// Only mTLS from meshed peers; plaintext connections are closed.
    Strict,
}

impl Config {
    /// Whether inbound traffic to application port `port` must be mTLS.
    pub fn strict_port(&self, port: Option<u16>) -> bool {
        match port {
            Some(p) if self.inbound_strict_ports.contains(&p) => true,
            Some(p) if self.inbound_permissive_ports.contains(&p) => false,
            _ => self.inbound_tls == TlsMode::Strict,
        }
    }

    /// Whether connections to `port` skip protocol detection.
    pub fn opaque_port(&self, port: Option<u16>) -> bool {
        port.is_some_and(|p| self.opaque_ports.contains(&p))
    }

    /// The tracing settings, if a collector is configured.
    pub fn tracing(&self) -> Option<crate::trace::Settings> {
        let collector = self.trace_collector.clone()?;
        let service = self.trace_service_name.clone().unwrap_or_else(|| {
            match self
                .identity_name
                .as_deref()
                .map(|n| n.split('.').collect::<Vec<_>>())
            {
                Some(labels) if labels.len() >= 2 => format!("{}.{}", labels[0], labels[1]),
                _ => self
                    .pod_name
                    .clone()
                    .unwrap_or_else(|| "mesh-proxy".to_string()),
            }
        });
        Some(crate::trace::Settings {
            collector,
            protocol: self.trace_protocol,
            sampling: self.trace_sampling,
            service,
            pod: self.pod_name.clone(),
            namespace: self.namespace.clone(),
        })
    }

    /// The identity settings, if an identity service is configured; an error names what
    /// is missing.
    pub fn identity(&self) -> Result<Option<crate::identity::Settings>, String> {
        let Some(addr) = &self.identity_addr else {
            return Ok(None);
        };
        let name = self
            .identity_name
            .clone()
            .ok_or("MESH_PROXY_IDENTITY_ADDR is set but MESH_PROXY_IDENTITY_NAME is not")?;
        let anchors = self
            .trust_anchors
            .as_deref()
            .ok_or("MESH_PROXY_IDENTITY_ADDR is set but MESH_PROXY_TRUST_ANCHORS is not")?;
        let trust_anchors = crate::identity::read_anchors(anchors, "MESH_PROXY_TRUST_ANCHORS")?;
        Ok(Some(crate::identity::Settings {
            addr: addr.clone(),
            name,
            service_name: self.identity_svc_name.clone(),
            trust_anchors,
            token_path: self.token_path.clone(),
        }))
    }
}

/// Parses a share from 0 to 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: expected a number from 0 to 1")),
    }
}

/// Parses a duration flag in the mesh's grammar ([`mesh_api::duration`]): nothing the
/// proxy waits for is meant to last longer than a day, and larger values would
/// overflow deadline arithmetic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(s, Duration::ZERO..=Duration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("2").is_err(), "a unit is needed");
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10000000000000000000").is_err());
    }

    #[test]
    fn defaults_match_the_architecture() {
        let c = Config::try_parse_from(["mesh-proxy"]).expect("defaults parse");
        assert_eq!(c.inbound_addr.port(), 4143);
        assert_eq!(c.outbound_addr.to_string(), "127.0.0.1:4140");
        assert_eq!(c.admin_addr.port(), 4191);
        assert!(c.tracing().is_none());
    }

    #[test]
    fn tracing_settings() {
        let c = Config::try_parse_from([
            "mesh-proxy",
            "--trace-collector",
            "zipkin:9411",
            "--trace-protocol",
            "zipkin",
            "--trace-sampling",
            "0.25",
            "--identity-name",
            "web.shop.serviceaccount.identity.mesh.cluster.local",
        ])
        .expect("parses");
        let t = c.tracing().expect("on");
        assert_eq!(t.service, "web.shop");
        assert_eq!(t.protocol, crate::trace::Protocol::Zipkin);
        assert_eq!(t.sampling, 0.25);
        for bad in ["1.5", "-0.1", "lots"] {
            assert!(
                Config::try_parse_from(["mesh-proxy", "--trace-sampling", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Config::try_parse_from(["mesh-proxy", "--trace-protocol", "jaeger"]).is_err());
    }
}
