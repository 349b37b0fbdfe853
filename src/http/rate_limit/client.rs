//! Who a request's client is, for the rate limits and the connection caps. A client cannot choose
//! its own key: `X-Forwarded-For` is read only from a trusted proxy and walked from the right
//! (proxies append, so only the entries they wrote can be believed), and an IPv6 client is keyed
//! by its network prefix, since one host is routinely given a whole /64 to pick addresses from.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::config::RateLimitSettings;

/// How a request's client address is found; built from `server.rate_limit`.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    trusted: Vec<IpNet>,
    /// `trust_forwarded_for` without `trusted_proxies`: the connecting peer is taken as the one
    /// trusted proxy, so the right-most entry (the one it appended) is the client.
    trust_any_peer: bool,
    ipv6_prefix: u8,
}

impl ClientIdentity {
    pub fn new(s: &RateLimitSettings) -> Self {
        Self {
            trusted: s.trusted_proxies.iter().map(|n| n.trunc()).collect(),
            trust_any_peer: s.trust_forwarded_for && s.trusted_proxies.is_empty(),
            ipv6_prefix: s.ipv6_prefix,
        }
    }

    /// The key `peer`'s request is counted under: its client's address ([`Self::client`]) cut to
    /// its network prefix ([`client_key`]).
    pub fn key(&self, peer: Option<SocketAddr>, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        client_key(self.client(peer, forwarded_for), self.ipv6_prefix)
    }

    /// The client's address: `peer` itself unless it is a trusted proxy; then the entries of
    /// `X-Forwarded-For` from the right, skipping trusted ones, and the first untrusted one is the
    /// client. An entry that is not an address ends the walk at the trusted hop before it, so a
    /// client writing garbage is counted as that proxy, never under a key of its choosing; when
    /// every entry is trusted, the left-most is the client.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        let (true, Some(list)) = (self.trust_any_peer || self.trusts(peer), forwarded_for) else {
            return peer;
        };
        let mut client = peer;
        for hop in list.rsplit(',') {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// `ip` as a limiter's key: an IPv4 address as is, an IPv6 one cut to its first `ipv6_prefix`
/// bits (an IPv4-mapped IPv6 address is its IPv4 address).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(a) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports for an
/// IPv4 peer) as its IPv4 address, so one client has one key whichever socket it came through.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(canonical(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(trusted: &[&str], trust_forwarded_for: bool, ipv6_prefix: u8) -> ClientIdentity {
        ClientIdentity::new(&RateLimitSettings {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            trust_forwarded_for,
            ipv6_prefix,
            ..RateLimitSettings::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_hops_only() {
        let id = identity(&["10.0.0.0/8", "fd00::/8"], false, 64);
        let proxy = ip("10.0.0.1");
        // The client wrote "6.6.6.6"; the proxy appended the address it saw.
        assert_eq!(id.client(proxy, Some("6.6.6.6, 1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(id.client(proxy, Some("6.6.6.6, 1.2.3.4, 10.1.1.1")), ip("1.2.3.4"));
        assert_eq!(id.client(proxy, Some("[2001:db8::1]:443, fd00::2")), ip("2001:db8::1"));
        assert_eq!(id.client(proxy, Some("1.2.3.4:5678")), ip("1.2.3.4"));
        // Not a trusted peer: its header is ignored.
        assert_eq!(id.client(ip("1.2.3.4"), Some("7.7.7.7")), ip("1.2.3.4"));
        // Garbage ends the walk at the trusted hop before it; all trusted: the left-most.
        assert_eq!(id.client(proxy, Some("7.7.7.7, unknown, 10.2.2.2")), ip("10.2.2.2"));
        assert_eq!(id.client(proxy, Some("garbage")), proxy);
        assert_eq!(id.client(proxy, Some("10.3.3.3, 10.2.2.2")), ip("10.3.3.3"));
        assert_eq!(id.client(proxy, None), proxy);
    }

    #[test]
    fn trust_forwarded_for_alone_takes_the_peer_as_the_one_proxy() {
        let id = identity(&[], true, 64);
        assert_eq!(id.client(ip("10.0.0.1"), Some("6.6.6.6, 1.2.3.4")), ip("1.2.3.4"));
        let off = identity(&[], false, 64);
        assert_eq!(off.client(ip("10.0.0.1"), Some("1.2.3.4")), ip("10.0.0.1"));
        // With trusted_proxies set, they alone are trusted.
        let both = identity(&["10.0.0.0/8"], true, 64);
        assert_eq!(both.client(ip("192.168.0.1"), Some("1.2.3.4")), ip("192.168.0.1"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1"), 48), ip("2001:db8:1::"));
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(client_key(ip("::ffff:10.0.0.7"), 64), ip("10.0.0.7"));
        assert_eq!(client_key(ip("10.0.0.7"), 64), ip("10.0.0.7"));
        let keys: std::collections::HashSet<IpAddr> = (0..10_000u128)
            .map(|i| {
                client_key(IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0005_0006u128 << 64) | (i * 7919))), 64)
            })
            .collect();
        assert_eq!(keys.len(), 1, "10,000 addresses of one /64 are one client");
    }
}
