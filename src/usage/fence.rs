//! Which addresses a usage source may reach: the admin's allow/deny list of hosts and CIDRs, and the ranges denied
//! whatever the list says (link-local, which holds cloud metadata at 169.254.169.254; loopback, where a sidecar's
//! admin port lives; unspecified).
//!
//! The check runs on the *resolved* address at connect time: [`FencedResolver`] is the HTTP client's resolver, so a
//! name that resolves to a forbidden address (DNS rebinding included) is refused before any connection is made. URLs
//! whose host is an IP literal are never resolved, so the source checks them with [`AddressPolicy::check_ip`]
//! before sending.
//!
//! Rules, in order: a denied built-in range (loopback only unless `--allow-loopback-sources`) refuses; a deny entry
//! (host or CIDR) refuses; an allow list that is not empty refuses what none of its entries matches; anything else is
//! allowed. An allow entry never re-opens a built-in range: link-local and unspecified stay closed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address. The network's host bits must be zero, so that `10.0.0.1/8`
    /// (most likely a typo) is an error rather than silently `10.0.0.0/8`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { network, prefix };
        if cidr.mask(network) != bits(network) {
            return Err(format!("{text:?}: the address has bits set beyond the /{prefix} prefix"));
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: addresses are matched in their IPv4 form (see `contains`).
        match network {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Ok(Cidr { network: IpAddr::V4(v4), prefix: prefix - 96 }),
                None => Ok(cidr),
            },
            _ => Ok(cidr),
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is matched as the IPv4
    /// address it carries, so `::ffff:127.0.0.1` is in `127.0.0.0/8`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && self.mask(ip) == bits(self.network)
    }

    fn mask(&self, ip: IpAddr) -> u128 {
        let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        // NB: a shift by 128 overflows; /0 keeps no bits at all.
        let keep = if host_bits >= 128 { 0 } else { u128::MAX << host_bits };
        bits(ip) & keep
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// One entry of `--source-allow` / `--source-deny`: a CIDR (or address), or a host name matched on the name in the
/// URL: `gateway.shop.svc` exactly, `*.shop.svc` (or `.shop.svc`) for every name under `shop.svc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Matches resolved addresses.
    Network(Cidr),
    /// Matches this name exactly (lower case, without a trailing dot).
    Host(String),
    /// Matches every name ending in `.<suffix>`.
    Suffix(String),
}

impl Rule {
    /// Parses one entry; surrounding blanks are ignored.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty entry".to_owned());
        }
        if text.contains('/') || text.parse::<IpAddr>().is_ok() {
            return Cidr::parse(text).map(Rule::Network);
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, rest) = match name.strip_prefix("*.").or_else(|| name.strip_prefix('.')) {
            Some(rest) => (true, rest.to_owned()),
            None => (false, name.clone()),
        };
        let valid = !rest.is_empty()
            && rest.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(format!("{text:?} is neither a CIDR nor a host name (`name`, `*.domain`)"));
        }
        Ok(if suffix { Rule::Suffix(rest) } else { Rule::Host(rest) })
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Rule::Network(_) => false,
            Rule::Host(name) => host == name,
            Rule::Suffix(suffix) => host.strip_suffix(suffix.as_str()).is_some_and(|head| head.ends_with('.')),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, Rule::Network(cidr) if cidr.contains(ip))
    }
}

/// Ranges refused whatever the lists say (loopback unless allowed by flag).
const LINK_LOCAL_V4: Cidr = Cidr { network: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), prefix: 16 };
const LINK_LOCAL_V6: Cidr = Cidr { network: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), prefix: 10 };
const LOOPBACK_V4: Cidr = Cidr { network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 };
/// `0.0.0.0/8` is "this network": connecting to any of it reaches the local host on Linux.
const UNSPECIFIED_V4: Cidr = Cidr { network: IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), prefix: 8 };

/// Why an address or host is refused (for the debug log; conditions name only the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// 127.0.0.0/8 or ::1, without `--allow-loopback-sources`.
    Loopback,
    /// 0.0.0.0/8 or ::.
    Unspecified,
    /// A `--source-deny` entry.
    Denied,
    /// Not matched by any `--source-allow` entry.
    NotAllowed,
}

/// The admin's policy for usage sources' addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// `--source-allow`: when not empty, only what these match is reachable.
    pub allow: Vec<Rule>,
    /// `--source-deny`: never reachable.
    pub deny: Vec<Rule>,
    /// `--allow-loopback-sources`.
    pub allow_loopback: bool,
}

impl AddressPolicy {
    /// Whether the source named `host` (lower case, as in the URL) may connect to `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if LINK_LOCAL_V4.contains(ip) || LINK_LOCAL_V6.contains(ip) {
            return Err(Refusal::LinkLocal);
        }
        if UNSPECIFIED_V4.contains(ip) || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            return Err(Refusal::Unspecified);
        }
        if (LOOPBACK_V4.contains(ip) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)) && !self.allow_loopback {
            return Err(Refusal::Loopback);
        }
        let host = host.trim_end_matches('.');
        if self.deny.iter().any(|rule| rule.matches_host(host) || rule.matches_ip(ip)) {
            return Err(Refusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|rule| rule.matches_host(host) || rule.matches_ip(ip)) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// [`check`](Self::check) for a URL whose host is the IP literal `ip` (reqwest does not resolve those).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check(&ip.to_string(), ip)
    }

    /// The addresses of `addrs` that `host` may connect to, or why none may.
    pub fn filter(&self, host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let mut kept = Vec::new();
        let mut refused = None;
        for addr in addrs {
            match self.check(host, addr.ip()) {
                Ok(()) => kept.push(addr),
                Err(why) => refused = refused.or(Some(why)),
            }
        }
        match (kept.is_empty(), refused) {
            (true, Some(why)) => Err(why),
            _ => Ok(kept),
        }
    }
}

/// The error a source's connection fails with when its address is refused; found again in the HTTP client's error
/// chain to report `SourceForbidden`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the address of {host} is forbidden for usage sources ({why:?})")]
pub struct Forbidden {
    /// The host as written in the URL.
    pub host: String,
    /// Which rule refused it.
    pub why: Refusal,
}

/// A name that resolved to no address at all.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves to no address")]
pub struct NoAddress {
    /// The host as written in the URL.
    pub host: String,
}

/// The HTTP client's resolver: resolves with the system resolver, then keeps only the addresses the policy allows.
/// Connecting happens right after, to exactly these addresses, so a second answer (rebinding) is never used.
pub struct FencedResolver {
    policy: Arc<AddressPolicy>,
}

impl FencedResolver {
    /// A resolver that applies `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for FencedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(Box::new(NoAddress { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            match policy.filter(&host, addrs) {
                Ok(kept) => Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs),
                Err(why) => {
                    tracing::debug!(%host, ?why, "usage source refused at name resolution");
                    Err(Box::new(Forbidden { host, why }) as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "fence_tests/mod.rs"]
mod tests;
