//! Fault injection for tests, switched on only by the `HEMVIST_FAILPOINTS` environment variable
//! (read once): `name=fail:N` fails the first N passes through `name` with a retryable error,
//! `name=sleep:MS` stalls every pass there for MS milliseconds, `name=crash` kills the process
//! there (as a power cut would). Shared by the control plane and the nodes; a point names its
//! side (`control.move.fencing`, `node.fence.fenced`). Unset, a check finds an empty map.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::HemvistError;

enum Action {
    Fail(u32),
    Sleep(u64),
    Crash,
}

fn points() -> &'static Mutex<HashMap<String, Action>> {
    static POINTS: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let mut map = HashMap::new();
        if let Ok(spec) = std::env::var("HEMVIST_FAILPOINTS") {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let (name, action) = item.split_once('=').unwrap_or((item, "crash"));
                let action = if let Some(n) = action.strip_prefix("fail:") {
                    Action::Fail(n.parse().unwrap_or(1))
                } else if let Some(ms) = action.strip_prefix("sleep:") {
                    Action::Sleep(ms.parse().unwrap_or(1_000))
                } else {
                    Action::Crash
                };
                eprintln!("failpoint {name} armed");
                map.insert(name.to_string(), action);
            }
        }
        Mutex::new(map)
    })
}

pub fn check(name: &str) -> Result<(), HemvistError> {
    let mut points = points().lock().unwrap_or_else(|p| p.into_inner());
    match points.get_mut(name) {
        None => Ok(()),
        Some(Action::Sleep(ms)) => {
            let ms = *ms;
            drop(points);
            eprintln!("failpoint {name}: sleeping {ms} ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        Some(Action::Crash) => {
            eprintln!("failpoint {name}: crashing");
            std::process::abort();
        }
        Some(Action::Fail(0)) => Ok(()),
        Some(Action::Fail(n)) => {
            *n -= 1;
            Err(HemvistError::unavailable(format!("failpoint {name}")))
        }
    }
}
