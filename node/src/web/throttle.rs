//! Counting failures per key in fixed windows: at most `limit` in the `window` that began with
//! the first of them. A key's entry is a start and a count, and the entries are the most recently
//! charged `capacity` keys, so memory stays bounded whatever is thrown at it.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

pub struct Throttle<K: Hash + Eq> {
    limit: u32,
    window: Duration,
    entries: Mutex<LruCache<K, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Refused: the key used up its window; it opens again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// The first refusal of this window (worth a log line; the rest are not).
    pub first: bool,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(limit: u32, window: Duration, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Throttle {
            limit,
            window,
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Counts one attempt against `key` before it is made, so attempts in flight count too;
    /// [`Throttle::refund`] takes it back if it succeeds.
    pub fn charge(&self, key: &K, now: Instant) -> Result<(), Throttled> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Window {
            start: now,
            count: 1,
        };
        let Some(w) = entries.get_mut(key) else {
            entries.put(key.clone(), fresh);
            return Ok(());
        };
        let ends = w.start + self.window;
        if now >= ends {
            *w = fresh;
            return Ok(());
        }
        if w.count >= self.limit {
            let first = w.count == self.limit;
            if first {
                // Marks the window as refused once, so only its first refusal is logged.
                w.count += 1;
            }
            return Err(Throttled {
                retry_after: ends - now,
                first,
            });
        }
        w.count += 1;
        Ok(())
    }

    /// Takes back a charge whose attempt succeeded or was never made.
    pub fn refund(&self, key: &K) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = entries.peek_mut(key) {
            if w.count <= self.limit {
                w.count = w.count.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_past_the_limit_is_refused_until_the_window_ends() {
        let t = Throttle::new(3, Duration::from_secs(60), 16);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.charge(&"a", start).is_ok());
        }
        let refused = t.charge(&"a", start + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(50));
        assert!(refused.first);
        assert!(
            !t.charge(&"a", start + Duration::from_secs(11))
                .unwrap_err()
                .first
        );
        assert!(t.charge(&"b", start).is_ok(), "other keys are not affected");
        assert!(t.charge(&"a", start + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn refunds_give_back_successful_attempts() {
        let t = Throttle::new(2, Duration::from_secs(60), 16);
        let now = Instant::now();
        for _ in 0..10 {
            t.charge(&1, now).unwrap();
            t.refund(&1);
        }
        t.charge(&1, now).unwrap();
        t.charge(&1, now).unwrap();
        assert!(t.charge(&1, now).is_err());
    }

    #[test]
    fn memory_is_the_most_recent_keys() {
        let t = Throttle::new(1, Duration::from_secs(60), 4);
        let now = Instant::now();
        for k in 0..1000 {
            t.charge(&k, now).unwrap();
        }
        assert_eq!(t.entries.lock().unwrap().len(), 4);
    }
}
