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
