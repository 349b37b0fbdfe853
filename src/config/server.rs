//! `[server]`: where `/search` listens and the limits that keep one client from starving the others.

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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub per_client_per_second: u32,
    pub per_client_burst: u32,
    pub global_per_second: u32,
    pub global_burst: u32,
    pub trust_forwarded_for: bool,
}

impl RateLimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        if [self.per_client_per_second, self.per_client_burst, self.global_per_second, self.global_burst]
            .contains(&0)
        {
            return Err("server.rate_limit values must all be positive".into());
        }
        Ok(())
    }
}
