//! The limits every listener enforces, as configured (`[limits]` in a config file, in ms).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// From accept to a finished TLS handshake (or, in plain text, to the first byte).
    pub handshake_timeout_ms: u64,
    /// For a request's headers to arrive, and for the next request on an idle HTTP connection.
    pub header_read_timeout_ms: u64,
    /// The longest a connection may send nothing (after its first bytes).
    pub idle_timeout_ms: u64,
    /// Connections one client address may hold at once; more are closed on accept.
    pub max_connections_per_client: usize,
    /// Connections the listener holds at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            max_connections_per_client: 256,
            max_connections: 10_000,
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms.max(1))
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }

    /// Refuses limits that would close every connection or none.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections_per_client >= 1 && self.max_connections >= 1,
            "limits: connection caps must be at least 1"
        );
        anyhow::ensure!(
            self.handshake_timeout_ms >= 100
                && self.header_read_timeout_ms >= 100
                && self.idle_timeout_ms >= 30_000,
            "limits: timeouts this short would close healthy connections (handshake and headers \
             at least 100 ms; idle at least 30000 ms, since a request may wait that long for its \
             answer without the client sending anything)"
        );
        Ok(())
    }
}
