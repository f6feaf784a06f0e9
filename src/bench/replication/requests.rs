//! Reading the proxy's log: which replicator made a request, which tenants it carries, and the
//! run's successful uploads.
//!
//! Keeps true: requests are attributed to tenants from what was sent (keys, a pack's index),
//! the same way for both replicators, never from what either says about itself.

use std::collections::HashSet;

use super::proxy::Logged;
use super::setup::BUCKET;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Replicator {
    Hemvist,
    Litestream,
}

impl Replicator {
    pub fn name(self) -> &'static str {
        match self {
            Replicator::Hemvist => "hemvist",
            Replicator::Litestream => "Litestream",
        }
    }

    /// The tenants whose data a request carries: from its key (hemvist:
    /// `tenants/{org}/...`; Litestream: `.../{org}.db/...`), or a hemvist pack's index.
    pub fn orgs(self, r: &Logged) -> Vec<&str> {
        if !r.pack_orgs.is_empty() {
            return r.pack_orgs.iter().map(String::as_str).collect();
        }
        let org = match self {
            Replicator::Hemvist => r
                .path
                .split_once("/tenants/")
                .and_then(|(_, rest)| rest.split('/').next()),
            Replicator::Litestream => r.path.split('/').find_map(|s| s.strip_suffix(".db")),
        };
        org.into_iter().collect()
    }
}

/// Successful PUTs under `prefix` (the run's own objects), completed by `until_us`.
pub fn puts<'a>(
    log: &'a [Logged],
    prefix: &'a str,
    until_us: i64,
) -> impl Iterator<Item = &'a Logged> {
    let marker = format!("/{BUCKET}/{prefix}/");
    log.iter().filter(move |r| {
        r.method == http::Method::PUT
            && r.ok()
            && r.end_us <= until_us
            && r.path.starts_with(&marker)
    })
}

/// The tenants with at least one object stored under `prefix` by `until_us`.
pub fn backed_up<'a>(
    log: &'a [Logged],
    replicator: Replicator,
    prefix: &'a str,
    until_us: i64,
) -> HashSet<&'a str> {
    puts(log, prefix, until_us)
        .flat_map(|r| replicator.orgs(r))
        .collect()
}
