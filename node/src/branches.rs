//! The branches this node hosts, as their pages show them: of what, as of when, until when
//! (labels the control plane sends, in memory only: it sends them all again after each state
//! report), and the keepalives users asked for on those pages, waiting to go to the control
//! plane.
//!
//! Keeps true: memory stays bounded: labels only for what the control plane names, and at most
//! [`MAX_PENDING`] keepalives waiting (one per branch; a second press while one waits is the
//! same request).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use hemvist_proto::OrgId;
use tokio::sync::Notify;

/// Keepalives waiting to be sent, at most.
pub const MAX_PENDING: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub parent: OrgId,
    /// The parent's point in time the branch holds.
    pub at_ms: i64,
    pub expires_ms: i64,
    /// From here on the pages warn that it is about to expire.
    pub warn_from_ms: i64,
    pub keepalive_on_use: bool,
}

#[derive(Default)]
pub struct Branches {
    labels: RwLock<HashMap<OrgId, Label>>,
    pending: Mutex<HashMap<OrgId, String>>,
    /// A keepalive is waiting.
    pub asked: Notify,
    /// A label changed (a keepalive's answer).
    pub changed: Notify,
}

impl Branches {
    pub fn label(&self, org: &OrgId) -> Option<Label> {
        self.labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
    }

    /// `full`: these are all of them.
    pub fn apply(&self, full: bool, labels: Vec<(OrgId, Label)>, removed: Vec<OrgId>) {
        {
            let mut all = self.labels.write().unwrap_or_else(|p| p.into_inner());
            if full {
                all.clear();
            }
            for org in removed {
                all.remove(&org);
            }
            all.extend(labels);
        }
        self.changed.notify_waiters();
    }

    /// A signed-in user (`who`) asked to keep `org` alive; false if too many wait already.
    pub fn ask_keepalive(&self, org: &OrgId, who: &str) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING && !pending.contains_key(org) {
            return false;
        }
        pending.insert(org.clone(), who.to_string());
        drop(pending);
        self.asked.notify_one();
        true
    }

    /// The keepalives waiting, taken.
    pub fn take_keepalives(&self) -> Vec<(OrgId, String)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(OrgId, String)> = pending.drain().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(expires_ms: i64) -> Label {
        Label {
            parent: OrgId::parse("acme").unwrap(),
            at_ms: 1,
            expires_ms,
            warn_from_ms: expires_ms - 10,
            keepalive_on_use: false,
        }
    }

    #[test]
    fn labels_are_replaced_in_full_or_changed_one_by_one_and_keepalives_wait_once() {
        let b = Branches::default();
        let qa = OrgId::parse("acme--qa").unwrap();
        let dev = OrgId::parse("acme--dev").unwrap();
        b.apply(
            true,
            vec![(qa.clone(), label(100)), (dev.clone(), label(5))],
            vec![],
        );
        assert_eq!(b.label(&qa).unwrap().expires_ms, 100);
        b.apply(false, vec![(qa.clone(), label(200))], vec![dev.clone()]);
        assert_eq!(b.label(&qa).unwrap().expires_ms, 200);
        assert!(b.label(&dev).is_none());
        b.apply(true, vec![], vec![]);
        assert!(b.label(&qa).is_none());

        assert!(b.ask_keepalive(&qa, "ann@example.com"));
        assert!(b.ask_keepalive(&qa, "bo@example.com"));
        assert_eq!(
            b.take_keepalives(),
            vec![(qa.clone(), "bo@example.com".to_string())]
        );
        assert!(b.take_keepalives().is_empty());
    }
}
