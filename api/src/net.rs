//! Networks by CIDR, less some of their parts.

use std::net::IpAddr;

use crate::policy as pb;

/// One CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address seen through an IPv6 socket is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A network: a CIDR, less the listed parts of it. One that does not parse contains
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    cidr: Option<Cidr>,
    except: Vec<Cidr>,
}

impl Net {
    /// Parses a CIDR or an address.
    pub fn parse(s: &str) -> Self {
        Self {
            cidr: Cidr::parse(s.trim()),
            except: vec![],
        }
    }

    /// A network containing nothing.
    pub fn never() -> Self {
        Self {
            cidr: None,
            except: vec![],
        }
    }

    /// Compiles a policy's network.
    pub fn compile(n: &pb::Network) -> Self {
        Self {
            cidr: Cidr::parse(n.cidr.trim()),
            // An exception that does not parse takes nothing out, but the controller
            // refuses those.
            except: n
                .except
                .iter()
                .filter_map(|e| Cidr::parse(e.trim()))
                .collect(),
        }
    }

    /// Whether `ip` is in it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.is_some_and(|c| c.contains(ip)) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Whether `s` is a CIDR or an address, for validation.
pub fn valid(s: &str) -> bool {
    Cidr::parse(s.trim()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn cidrs_contain_their_addresses_less_the_exceptions() {
        let n = Net::compile(&pb::Network {
            cidr: "10.0.0.0/8".into(),
            except: vec!["10.1.0.0/16".into()],
        });
        assert!(n.contains(ip("10.2.3.4")));
        assert!(!n.contains(ip("10.1.3.4")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.2.3.4")), "IPv4-mapped");
        assert!(Net::parse("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(Net::parse("::/0").contains(ip("::1")));
        assert!(Net::parse("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!Net::parse("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(!Net::parse("10.0.0.0/33").contains(ip("10.0.0.1")));
        assert!(!Net::parse("nonsense").contains(ip("10.0.0.1")));
        assert!(Net::parse("fd00::/8").contains(ip("fd12::1")));
        assert!(valid("192.168.0.0/16") && !valid("192.168.0.0/") && !valid("x"));
    }
}
