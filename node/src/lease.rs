//! The node's lease from the control plane. Writes are acknowledged only while it is live; the
//! node measures it from when it *sent* the heartbeat, so it always expires here no later than
//! the control plane believes it does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lease {
    until: Mutex<Option<Instant>>,
}

impl Lease {
    pub fn renew(&self, heartbeat_sent: Instant, ttl: Duration) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let new = heartbeat_sent + ttl;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
    }

    pub fn is_live(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    pub fn remaining(&self) -> Duration {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|u| u.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}
