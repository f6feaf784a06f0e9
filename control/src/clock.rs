//! Wall-clock time as the control plane records it: milliseconds since the Unix epoch, never
//! failing (a clock before 1970 reads as 0).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
