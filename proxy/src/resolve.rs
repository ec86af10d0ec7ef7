//! Resolves an authority to endpoint addresses: IP literals directly, names through DNS.
//!
//! DNS is the fallback for names the destination service does not know; until that
//! service is wired in, it is the only source of endpoints.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::{
    Resolver, TokioResolver, config::ResolverConfig, net::runtime::TokioRuntimeProvider,
};

use crate::discover::{Answer, Discover, Dst};
use crate::error::ProxyError;
use crate::profile::Profile;
use std::sync::Arc;

/// A `host:port` the proxy routes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NameAddr {
    /// A DNS name or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `host:port` as written once (`[v6]:port`): the key every lookup uses.
    text: Arc<str>,
}

impl NameAddr {
    /// Parses an authority such as `web.default.svc.cluster.local:80`, `[::1]:8080` or
    /// `web` (port `default_port`); user-info is refused.
    pub fn parse(authority: &str, default_port: u16) -> Result<Self, ProxyError> {
        let bad = || ProxyError::BadAuthority(authority.chars().take(256).collect());
        let a: http::uri::Authority = authority.parse().map_err(|_| bad())?;
        // `http` accepts a non-numeric port and reports no port; refuse it instead of
        // silently routing to the default port.
        let has_port = a
            .as_str()
            .rsplit_once(']')
            .map_or(a.as_str(), |(_, rest)| rest)
            .contains(':');
        if authority.contains('@') || a.host().is_empty() || (has_port && a.port_u16().is_none()) {
            return Err(bad());
        }
        let host = a
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = a.port_u16().unwrap_or(default_port);
        let text = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            host,
            port,
            text: text.into(),
        })
    }

    /// `host:port` (`[v6]:port`), as the controller and the metrics name it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for NameAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The most authorities [`Names`] keeps parsed; past it, it starts over (clients
/// choose `Host`, so the cache must stay bounded).
const MAX_NAMES: usize = 1024;

/// Authorities already parsed, by their text: a connection's requests name the same
/// few, and parsing one costs more than the rest of routing it.
#[derive(Debug, Default)]
pub struct Names(std::sync::Mutex<std::collections::HashMap<Box<str>, (u16, NameAddr)>>);

impl Names {
    /// [`NameAddr::parse`], answered from the cache when `authority` was parsed with
    /// the same default port before. Refusals are not kept.
    pub fn parse(&self, authority: &str, default_port: u16) -> Result<NameAddr, ProxyError> {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((port, name)) = names.get(authority)
            && *port == default_port
        {
            return Ok(name.clone());
        }
        let name = NameAddr::parse(authority, default_port)?;
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert(authority.into(), (default_port, name.clone()));
        Ok(name)
    }
}

/// Turns names into endpoints: the destination service's answer when it knows the
/// name, DNS otherwise.
pub struct Resolve {
    dns: TokioResolver,
    discover: Option<Discover>,
    /// Authorities parsed before.
    pub names: Names,
}

impl std::fmt::Debug for Resolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolve").finish_non_exhaustive()
    }
}

impl Resolve {
    /// Asks `discover` first, for every name and address.
    pub fn with_discovery(mut self, discover: Discover) -> Self {
        self.discover = Some(discover);
        self
    }

    /// The controller's client, when one is configured.
    pub fn discovery(&self) -> Option<&Discover> {
        self.discover.as_ref()
    }

    /// Whether a destination service is configured (else no profile ever applies).
    pub fn has_discovery(&self) -> bool {
        self.discover.is_some()
    }

    /// The profile that applies to `dst` (empty without a destination service).
    pub async fn profile(&self, dst: &NameAddr) -> Arc<Profile> {
        match &self.discover {
            Some(discover) => discover.profile(dst.as_str()).await,
            None => Arc::default(),
        }
    }

    /// The endpoints of `dst`, from the destination service or else DNS.
    pub async fn endpoints(&self, dst: &NameAddr) -> Result<Vec<Dst>, ProxyError> {
        if let Some(discover) = &self.discover {
            match discover.resolve(dst.as_str()).await {
                Answer::Endpoints(list) if list.is_empty() => {
                    return Err(ProxyError::NoEndpoints(dst.to_string()));
                }
                Answer::Endpoints(list) => return Ok(list.to_vec()),
                Answer::Unknown | Answer::Pending => {}
            }
        }
        Ok(self
            .resolve(dst)
            .await?
            .into_iter()
            .map(Dst::direct)
            .collect())
    }

    /// The endpoints of `dst` whose pods carry all of `labels` (a DestinationRule's
    /// subset): only the destination service knows pods' labels, so without it, or
    /// when it does not know the name, there are none.
    pub async fn subset_endpoints(
        &self,
        dst: &NameAddr,
        labels: &crate::vocab::Labels,
    ) -> Result<Vec<Dst>, ProxyError> {
        let none = || ProxyError::NoEndpoints(format!("{dst} (subset {labels:?})"));
        let discover = self.discover.as_ref().ok_or_else(none)?;
        match discover.resolve_selected(dst.as_str(), labels).await {
            Answer::Endpoints(list) if !list.is_empty() => Ok(list.to_vec()),
            _ => Err(none()),
        }
    }

    /// A resolver from the system's configuration (`/etc/resolv.conf`, `/etc/hosts`).
    pub fn from_system() -> Result<Self, ProxyError> {
        let builder = match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(error) => {
                // No usable resolv.conf (a bare container, say): names can still come
                // from /etc/hosts and IP literals; every other lookup fails clearly.
                tracing::warn!(%error, "no system DNS configuration; only /etc/hosts names resolve");
                Resolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let dns = builder.build().map_err(|e| ProxyError::Resolve {
            name: "(resolver)".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            dns,
            discover: None,
            names: Names::default(),
        })
    }

    /// The endpoints of `dst`; an empty answer is an error.
    pub async fn resolve(&self, dst: &NameAddr) -> Result<Vec<SocketAddr>, ProxyError> {
        if let Ok(ip) = dst.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, dst.port)]);
        }
        // A trailing dot makes the name absolute: no search-list expansion, so a name
        // like `x.invalid` is answered locally instead of being retried as
        // `x.invalid.<search domain>` over the network.
        let fqdn = if dst.host.ends_with('.') {
            dst.host.clone()
        } else {
            format!("{}.", dst.host)
        };
        match self.dns.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addrs: Vec<SocketAddr> = lookup
                    .iter()
                    .map(|ip| SocketAddr::new(ip, dst.port))
                    .collect();
                if addrs.is_empty() {
                    Err(ProxyError::NoEndpoints(dst.to_string()))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) if e.is_no_records_found() => Err(ProxyError::NoEndpoints(dst.to_string())),
            Err(e) => Err(ProxyError::Resolve {
                name: dst.host.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_answer_as_parsing_does_and_stay_bounded() {
        let names = Names::default();
        for (authority, default_port) in [("Web.NS", 80), ("web.ns", 8080), ("[::1]:9", 80)] {
            let direct = NameAddr::parse(authority, default_port).expect("parses");
            assert_eq!(names.parse(authority, default_port).expect("first"), direct);
            assert_eq!(
                names.parse(authority, default_port).expect("cached"),
                direct
            );
            assert_eq!(
                names
                    .parse(authority, default_port)
                    .expect("cached")
                    .as_str(),
                direct.to_string()
            );
        }
        // The same text with another default port is parsed again, not mixed up.
        assert_eq!(names.parse("web.ns", 80).expect("parses").port, 80);
        assert_eq!(names.parse("web.ns", 9090).expect("parses").port, 9090);
        // Refusals are never cached.
        for _ in 0..2 {
            assert!(names.parse("web:nope", 80).is_err());
        }
        for i in 0..(MAX_NAMES * 2) {
            names.parse(&format!("h{i}:80"), 80).expect("parses");
        }
        assert!(names.0.lock().expect("lock").len() <= MAX_NAMES);
    }

    #[test]
    fn parses_authorities() {
        let n = NameAddr::parse("Web.Default:8080", 80).expect("valid");
        assert_eq!((n.host.as_str(), n.port), ("web.default", 8080));
        assert_eq!(NameAddr::parse("web", 80).expect("valid").port, 80);
        let v6 = NameAddr::parse("[::1]:9", 80).expect("valid");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:9");
        assert!(NameAddr::parse("user@web:80", 80).is_err());
        assert!(NameAddr::parse("web:notaport", 80).is_err());
        assert!(NameAddr::parse("", 80).is_err());
    }

    #[tokio::test]
    async fn resolves_literals_localhost_and_refuses_invalid() {
        let r = Resolve::from_system().expect("resolver");
        let lit = r
            .resolve(&NameAddr::parse("127.0.0.7:81", 80).expect("valid"))
            .await
            .expect("literal");
        assert_eq!(lit, vec![SocketAddr::from(([127, 0, 0, 7], 81))]);
        let local = r
            .resolve(&NameAddr::parse("localhost:80", 80).expect("valid"))
            .await
            .expect("localhost");
        assert!(local.iter().all(|a| a.ip().is_loopback()), "{local:?}");
        let none = r
            .resolve(&NameAddr::parse("nothing.invalid:80", 80).expect("valid"))
            .await;
        assert!(matches!(none, Err(ProxyError::NoEndpoints(_))), "{none:?}");
    }
}
