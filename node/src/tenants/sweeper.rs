//! Invariant 4 (idle tenants cost nothing): one timer for the whole node, never one per tenant,
//! closes the tenants that went idle.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::TenantStore;

/// Closes tenants unused for `idle`, until `shutdown`.
pub async fn close_idle_tenants(
    tenants: Arc<TenantStore>,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let idle = idle.max(Duration::from_millis(1));
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let closed = tenants.close_idle(idle);
        if closed > 0 {
            tracing::debug!(closed, "closed idle tenants");
        }
    }
}
