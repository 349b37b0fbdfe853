//! `[server]`: where the HTTP endpoints listen, the limits that keep one client from starving the
//! others, and how long a stop may take.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub connections: ConnectionSettings,
    /// `/ready` and `/metrics`: a budget of their own, apart from the searches'.
    #[serde(default)]
    pub probe_limit: ProbeLimitSettings,
    /// The whole graceful stop (pipeline drained, writer flushed, answers in flight finished) must
    /// end within this; past it the process exits and says what it left behind.
    #[serde(with = "humantime_serde", default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ServerSettings {
    pub fn validate(&self) -> Result<(), String> {
        self.rate_limit.validate()?;
        self.connections.validate()?;
        self.probe_limit.validate()?;
        if self.shutdown_timeout.is_zero() {
            return Err("server.shutdown_timeout must be positive".into());
        }
        Ok(())
    }
}

/// The budget of `/ready` and `/metrics` (see `http::probes`): probes and scrapes come a few times
/// a second at most, so a client asking much faster is refused with a `429` before its request
/// costs a store ping or a render. Per client IP (the peer address: probes come straight, not
/// through a proxy), and for all clients together.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeLimitSettings {
    pub per_client_per_second: u32,
    pub per_client_burst: u32,
    pub global_per_second: u32,
    pub global_burst: u32,
}

impl Default for ProbeLimitSettings {
    fn default() -> Self {
        Self {
            per_client_per_second: 100,
            per_client_burst: 200,
            global_per_second: 1000,
            global_burst: 2000,
        }
    }
}

impl ProbeLimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        if [self.per_client_per_second, self.per_client_burst, self.global_per_second, self.global_burst]
            .contains(&0)
        {
            return Err("server.probe_limit values must all be positive".into());
        }
        Ok(())
    }
}

/// Limits that keep one client's sockets from starving the others (see `http::server`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    /// Open connections in total; beyond, new ones get a `503` and are closed.
    pub max_connections: usize,
    /// Open connections from one client IP; beyond, new ones get a `503` and are closed.
    pub max_connections_per_client: usize,
    /// A connection with no byte either way and no request being answered is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request's headers must be complete within this long of their first byte.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_client: 256,
            idle_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return Err("server.connections limits must be positive".into());
        }
        if self.idle_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err("server.connections timeouts must be positive".into());
        }
        Ok(())
    }
}

/// `[server.rate_limit]`: requests admitted per client and in total, and who a client is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_client_per_second: u32,
    pub per_client_burst: u32,
    pub global_per_second: u32,
    pub global_burst: u32,
    /// Bytes of work (built, or compressed at [`COMPRESSED_BYTE_COST`] each) a client's answers
    /// may cost per second, besides its request count; cached answers cost nothing.
    ///
    /// [`COMPRESSED_BYTE_COST`]: crate::http::rate_limit::COMPRESSED_BYTE_COST
    #[serde(default = "default_work_per_second")]
    pub per_client_work_per_second: u64,
    /// The work a client may take at once before its rate applies.
    #[serde(default = "default_work_burst")]
    pub per_client_work_burst: u64,
    /// Read `X-Forwarded-For` from any peer, taken as the one proxy in front (its right-most
    /// entry is the client). Kept for older configurations: `trusted_proxies` says which peers.
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs, or single addresses): the header is
    /// walked from the right past these, and the first other address is the client.
    #[serde(default, with = "nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// An IPv6 client is keyed by this many leading bits of its address (rate limits and
    /// connection caps): a host is routinely given a /64 and may use any address in it.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

fn default_work_per_second() -> u64 {
    64 << 20
}

fn default_work_burst() -> u64 {
    256 << 20
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_client_per_second: 5000,
            per_client_burst: 10000,
            global_per_second: 20000,
            global_burst: 40000,
            per_client_work_per_second: default_work_per_second(),
            per_client_work_burst: default_work_burst(),
            trust_forwarded_for: false,
            trusted_proxies: Vec::new(),
            ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

impl RateLimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        if [self.per_client_per_second, self.per_client_burst, self.global_per_second, self.global_burst]
            .contains(&0)
        {
            return Err("server.rate_limit values must all be positive".into());
        }
        if self.per_client_work_per_second == 0 || self.per_client_work_burst == 0 {
            return Err("server.rate_limit.per_client_work_* must be positive".into());
        }
        if self.ipv6_prefix > 128 {
            return Err(format!("server.rate_limit.ipv6_prefix {} is over 128", self.ipv6_prefix));
        }
        Ok(())
    }
}

/// `trusted_proxies` as strings: `10.0.0.0/8`, `2001:db8::/32`, or an address alone (one host).
mod nets {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|v| parse(v).map_err(serde::de::Error::custom)).collect()
    }

    pub(super) fn parse(v: &str) -> Result<IpNet, String> {
        let v = v.trim();
        v.parse::<IpNet>().or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(|_| {
            format!("trusted proxy {v:?} is not a CIDR (10.0.0.0/8, 2001:db8::/32) or an address")
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn cidrs_and_single_addresses_parse_and_garbage_is_named() {
            assert_eq!(super::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
            assert_eq!(super::parse(" 10.1.2.3 ").unwrap().to_string(), "10.1.2.3/32");
            assert_eq!(super::parse("::1").unwrap().to_string(), "::1/128");
            assert!(super::parse("10.0.0.0/33").unwrap_err().contains("\"10.0.0.0/33\""));
        }
    }
}
