//! Fault injection for tests, switched on only by the `HEMVIST_FAILPOINTS` environment variable:
//! `name=fail:N` fails the first N passes through `name` with a retryable error, `name=crash`
//! kills the process there (as a power cut would). Unset, every check is one atomic load.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use hemvist_proto::HemvistError;

enum Action {
    Fail(u32),
    Crash,
}

fn points() -> &'static Mutex<HashMap<String, Action>> {
    static POINTS: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let mut map = HashMap::new();
        if let Ok(spec) = std::env::var("HEMVIST_FAILPOINTS") {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let (name, action) = item.split_once('=').unwrap_or((item, "crash"));
                let action = match action.strip_prefix("fail:") {
                    Some(n) => Action::Fail(n.parse().unwrap_or(1)),
                    None => Action::Crash,
                };
                tracing::warn!(failpoint = name, "failpoint armed");
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
