//! The residency report: per org, its policy, every region that held any byte of its data with
//! exact time intervals (its primary, the copy being prepared during a move, its backups, its
//! branches, its exports' staging), every move with its reason and actor, and a verdict. Built from the store's
//! records alone (`OrgFacts`); rendered as JSON, CSV or a self-contained HTML page for an
//! auditor. `hemvist audit report --verify-stores` adds what each region's bucket holds
//! (`StoreFinding`), so an object the ledger does not explain is a violation too.

use serde::{Deserialize, Serialize};

use super::verify::Verdict;
use crate::clock::format_ms;
use crate::config::RegionConfig;
use crate::residency::ResidencyPolicy;
use crate::store::{BranchRecord, OperationRecord, OrgRecord, PlacementSpan, StoredResidency};

/// What the store knows of one org.
pub struct OrgFacts {
    pub org: OrgRecord,
    pub spans: Vec<PlacementSpan>,
    /// Its moves (operations of kind `move`), oldest first.
    pub moves: Vec<OperationRecord>,
    /// Its branches, destroyed ones included.
    pub branches: Vec<BranchRecord>,
    /// Its policy changes, oldest first: when, and the policy from then on.
    pub policy_changes: Vec<(i64, StoredResidency)>,
    /// The policy it was created with (its current one if it never changed).
    pub initial_policy: ResidencyPolicy,
    /// Its exports: (copy started, handed over, region, node), from `org.exported`.
    pub exports: Vec<(i64, i64, String, String)>,
    /// Its backups deleted from a region by a residency change: (when, region, operation).
    pub purges: Vec<(i64, String, String)>,
}

/// The time range asked for; intervals overlapping it are shown.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    fn overlaps(&self, from: i64, to: Option<i64>) -> bool {
        self.to_ms.is_none_or(|t| from <= t)
            && self.from_ms.is_none_or(|f| to.is_none_or(|e| e >= f))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    /// `primary`, `secondary` (a move's copy being prepared), `backups`, `branch`, `export`.
    pub kind: String,
    pub region: String,
    pub jurisdiction: String,
    pub node: Option<String>,
    pub from_ms: i64,
    /// Open while it lasts.
    pub to_ms: Option<i64>,
    pub from: String,
    pub to: Option<String>,
    pub note: String,
    /// Whether the policy allows the region.
    pub allowed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveSeen {
    pub operation: String,
    pub from_region: String,
    pub to_region: String,
    pub started: String,
    pub finished: Option<String>,
    /// Its last phase: `done`, `rolled_back`, or where it stands.
    pub outcome: String,
    pub requested_by: String,
    pub reason: String,
}

/// What a region's bucket holds under the org's prefix (`--verify-stores`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreFinding {
    pub region: String,
    pub prefix: String,
    pub objects: u64,
    pub bytes: u64,
    /// Whether the ledger explains them (the org or a branch of it lived in that region).
    pub explained: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgReport {
    pub org: String,
    pub name: String,
    pub policy: String,
    /// The regions its policy allows now: what a store may hold of it today.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// The policy over time: (since, policy). One entry while policies cannot change.
    pub policy_history: Vec<(String, String)>,
    pub created: String,
    pub intervals: Vec<Interval>,
    pub moves: Vec<MoveSeen>,
    pub branches: Vec<String>,
    #[serde(default)]
    pub stores: Vec<StoreFinding>,
    /// `compliant` or `violation`.
    pub verdict: String,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub system: String,
    pub generated: String,
    pub window: Window,
    /// The audit chain's verification when the report was made.
    pub verification: Verdict,
    pub orgs: Vec<OrgReport>,
    pub compliant: usize,
    pub violations: usize,
    /// Whether each region's bucket was listed (`--verify-stores`).
    #[serde(default)]
    pub stores_verified: bool,
}

fn region_of<'a>(regions: &'a [RegionConfig], id: &str) -> Option<&'a RegionConfig> {
    regions.iter().find(|r| r.id.as_str() == id)
}

/// One org's section.
pub fn org_report(f: &OrgFacts, regions: &[RegionConfig], window: Window) -> OrgReport {
    let policy = ResidencyPolicy::from_stored(&f.org.residency);
    // The policies in force over time: (since, policy), from the one it was created with.
    let mut policies = vec![(f.org.created_ms, f.initial_policy.clone())];
    for (at, p) in &f.policy_changes {
        policies.push((*at, ResidencyPolicy::from_stored(p)));
    }
    // Whether every policy in force during [from, to] allows the region.
    let allowed_during = |r: &RegionConfig, from: i64, to: Option<i64>| {
        policies.iter().enumerate().all(|(i, (since, p))| {
            let until = policies.get(i + 1).map(|n| n.0);
            let overlaps = until.is_none_or(|u| from < u) && to.is_none_or(|t| t > *since);
            !overlaps || p.allows(r)
        })
    };
    let mut intervals = Vec::new();
    let mut push = |kind: &str,
                    region: &str,
                    node: Option<String>,
                    from: i64,
                    to: Option<i64>,
                    note: String| {
        if !window.overlaps(from, to) {
            return;
        }
        let r = region_of(regions, region);
        intervals.push(Interval {
            kind: kind.into(),
            region: region.into(),
            jurisdiction: r
                .map(|r| r.jurisdiction.clone())
                .unwrap_or_else(|| "?".into()),
            node,
            from_ms: from,
            to_ms: to,
            from: format_ms(from),
            to: to.map(format_ms),
            note,
            allowed: r.is_some_and(|r| allowed_during(r, from, to)),
        });
    };
    for s in &f.spans {
        let why = match &s.operation {
            Some(op) => format!("since move {op}"),
            None => "first placement".to_string(),
        };
        push(
            "primary",
            s.region.as_str(),
            Some(s.node_id.to_string()),
            s.from_ms,
            s.to_ms,
            format!("generation {}, {why}", s.generation),
        );
        // Backups outlive the span: kept for the nodes' retention period, or until a residency
        // change deleted them from the region.
        let purged = s.to_ms.and_then(|left| {
            f.purges
                .iter()
                .filter(|(at, region, _)| *at >= left && region == s.region.as_str())
                .min_by_key(|(at, _, _)| *at)
        });
        let (to, kept) = match (s.to_ms, purged) {
            (Some(_), Some((at, _, op))) => (
                Some(*at),
                format!("continuous backups while it lived here; kept until deleted by residency change {op}"),
            ),
            (Some(left), None) => (
                Some(left),
                "continuous backups while it lived here; kept afterwards for the nodes' retention period, restorable".to_string(),
            ),
            (None, _) => (None, "continuous backups".to_string()),
        };
        push("backups", s.region.as_str(), None, s.from_ms, to, kept);
    }
    let mut moves = Vec::new();
    for m in &f.moves {
        let d = &m.detail;
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        let to_region = text("to_region");
        // The copy being prepared: from the move's start until its switch (the target's span
        // begins) or its end.
        let switched = f
            .spans
            .iter()
            .find(|s| s.operation.as_deref() == Some(m.id.as_str()))
            .map(|s| s.from_ms);
        push(
            "secondary",
            &to_region,
            Some(text("to_node")),
            m.started_ms,
            switched.or(m.finished_ms),
            format!("copy prepared by move {} ({})", m.id, m.phase),
        );
        if window.overlaps(m.started_ms, m.finished_ms) {
            moves.push(MoveSeen {
                operation: m.id.clone(),
                from_region: text("from_region"),
                to_region,
                started: format_ms(m.started_ms),
                finished: m.finished_ms.map(format_ms),
                outcome: m.phase.clone(),
                requested_by: m.requested_by.clone(),
                reason: text("reason"),
            });
        }
    }
    for (from, to, region, node) in &f.exports {
        push(
            "export",
            region,
            Some(node.clone()),
            *from,
            Some(*to),
            "export staging on the home node, from its copy to its handover (then deleted)".into(),
        );
    }
    let mut branches = Vec::new();
    for b in &f.branches {
        let note = match &b.destroyed_why {
            Some(why) => format!("branch {} (masked: {}), destroyed: {why}", b.id, b.masked),
            None => format!(
                "branch {} (masked: {}), expires {}",
                b.id,
                b.masked,
                format_ms(b.expires_ms)
            ),
        };
        push(
            "branch",
            b.region.as_str(),
            None,
            b.created_ms,
            b.destroyed_ms,
            note,
        );
        branches.push(b.id.to_string());
    }
    intervals.sort_by(|a, b| (a.from_ms, &a.kind).cmp(&(b.from_ms, &b.kind)));
    let violations: Vec<String> = intervals
        .iter()
        .filter(|i| !i.allowed)
        .map(|i| {
            format!(
                "{} in {} ({}) from {} to {}: a policy in force then did not allow that region",
                i.kind,
                i.region,
                i.jurisdiction,
                i.from,
                i.to.as_deref().unwrap_or("now"),
            )
        })
        .collect();
    OrgReport {
        org: f.org.id.to_string(),
        name: f.org.name.clone(),
        allowed_regions: policy
            .allowed_regions(regions)
            .into_iter()
            .map(|r| r.id.to_string())
            .collect(),
        policy: policy.describe(),
        policy_history: policies
            .iter()
            .map(|(at, p)| (format_ms(*at), p.describe()))
            .collect(),
        created: format_ms(f.org.created_ms),
        intervals,
        moves,
        branches,
        stores: Vec::new(),
        verdict: if violations.is_empty() {
            "compliant"
        } else {
            "violation"
        }
        .into(),
        violations,
    }
}

impl OrgReport {
    /// Whether the ledger explains data of `org` (this one, or one of its branches) in
    /// `region`: an allowed interval there.
    pub fn explains(&self, org: &str, region: &str) -> bool {
        // What a store holds today must be allowed today: backups left behind in a region the
        // policy has since come to forbid are a violation, whatever the ledger says of the past.
        self.allowed_regions.iter().any(|r| r == region)
            && self.intervals.iter().any(|i| {
                i.allowed
                    && i.region == region
                    && (org == self.org
                        || (i.kind == "branch" && i.note.starts_with(&format!("branch {org} "))))
            })
    }

    /// Adds what a region's bucket holds; objects the ledger does not explain are violations.
    pub fn add_store_finding(&mut self, finding: StoreFinding) {
        if finding.objects > 0 && !finding.explained {
            self.violations.push(format!(
                "{} object(s) ({} bytes) under {} in {}'s store, where the ledger never placed it (or its policy does not allow it now)",
                finding.objects,
                finding.bytes,
                finding.prefix,
                finding.region,
            ));
            self.verdict = "violation".into();
        }
        self.stores.push(finding);
    }
}

impl Report {
    pub fn new(
        system: &str,
        window: Window,
        verification: Verdict,
        orgs: Vec<OrgReport>,
        now_ms: i64,
    ) -> Report {
        let mut r = Report {
            system: system.into(),
            generated: format_ms(now_ms),
            window,
            verification,
            orgs,
            compliant: 0,
            violations: 0,
            stores_verified: false,
        };
        r.count();
        r
    }

    pub fn count(&mut self) {
        self.violations = self
            .orgs
            .iter()
            .filter(|o| o.verdict != "compliant")
            .count();
        self.compliant = self.orgs.len() - self.violations;
    }

    /// One row per interval (and per store finding), with a header.
    pub fn csv(&self) -> String {
        let mut out =
            String::from("org,verdict,policy,kind,region,jurisdiction,node,from,to,allowed,note\n");
        for o in &self.orgs {
            for i in &o.intervals {
                let row = [
                    o.org.as_str(),
                    o.verdict.as_str(),
                    o.policy.as_str(),
                    i.kind.as_str(),
                    i.region.as_str(),
                    i.jurisdiction.as_str(),
                    i.node.as_deref().unwrap_or(""),
                    i.from.as_str(),
                    i.to.as_deref().unwrap_or(""),
                    if i.allowed { "yes" } else { "no" },
                    i.note.as_str(),
                ];
                out.push_str(&row.map(csv_field).join(","));
                out.push('\n');
            }
            for s in &o.stores {
                let note = format!(
                    "{} objects, {} bytes under {}",
                    s.objects, s.bytes, s.prefix
                );
                let row = [
                    o.org.as_str(),
                    o.verdict.as_str(),
                    o.policy.as_str(),
                    "store",
                    s.region.as_str(),
                    "",
                    "",
                    "",
                    "",
                    if s.explained { "yes" } else { "no" },
                    note.as_str(),
                ];
                out.push_str(&row.map(csv_field).join(","));
                out.push('\n');
            }
        }
        out
    }

    /// A self-contained page (no scripts, no external requests) for people, printable.
    pub fn html(&self) -> String {
        let v = &self.verification;
        let mut h = String::new();
        h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
        h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        h.push_str("<title>Residency report</title><style>");
        h.push_str(CSS);
        h.push_str("</style></head><body><main>");
        h.push_str(&format!(
            "<h1>Residency report</h1><p class=\"meta\">System <code>{}</code> · generated {} · window {} to {}</p>",
            esc(&self.system),
            esc(&self.generated),
            self.window.from_ms.map(format_ms).unwrap_or_else(|| "the beginning".into()),
            self.window.to_ms.map(format_ms).unwrap_or_else(|| "now".into()),
        ));
        h.push_str("<section class=\"verification\"><h2>Audit log verification</h2>");
        h.push_str(&format!(
            "<p class=\"{}\" id=\"verification\">{}: {} entries checked, newest {}.</p>",
            if v.ok { "ok" } else { "bad" },
            if v.ok { "Intact" } else { "DAMAGED" },
            v.entries,
            v.head_seq
        ));
        if let Some(b) = &v.first_bad {
            h.push_str(&format!(
                "<p class=\"bad\">First bad entry: {} — {}</p>",
                b.seq,
                esc(&b.problem)
            ));
        }
        match v.checkpoints.as_ref().and_then(|c| c.newest.as_ref().map(|n| (c, n))) {
            Some((c, n)) => h.push_str(&format!(
                "<p>Checked against checkpoint <code>{}</code> (entry {}, signed {}, Object Lock {} until {}) in <code>{}</code>, key <code>{}</code>.</p>",
                esc(&n.name), n.seq, esc(&n.signed_at),
                esc(n.lock_mode.as_deref().unwrap_or("none")),
                esc(n.locked_until.as_deref().unwrap_or("-")),
                esc(&c.store), esc(&c.public_key)
            )),
            None => h.push_str("<p class=\"bad\">No signed checkpoint was available to check the log against.</p>"),
        }
        for w in &v.warnings {
            h.push_str(&format!("<p class=\"warn\">{}</p>", esc(w)));
        }
        h.push_str("</section>");
        h.push_str(&format!(
            "<section><h2>Summary</h2><p id=\"summary\">{} orgs: {} compliant, {} with violations.{}</p></section>",
            self.orgs.len(),
            self.compliant,
            self.violations,
            if self.stores_verified { " Every region's store was listed for each org's objects." } else { "" }
        ));
        for o in &self.orgs {
            h.push_str(&format!(
                "<section class=\"org\" id=\"org-{}\"><h2>{} <small>{}</small> <span class=\"verdict {}\">{}</span></h2>",
                esc(&o.org), esc(&o.name), esc(&o.org),
                if o.verdict == "compliant" { "ok" } else { "bad" },
                esc(&o.verdict)
            ));
            h.push_str(&format!(
                "<p>Policy: <strong>{}</strong> (since {}). Created {}.</p>",
                esc(&o.policy),
                esc(o.policy_history.first().map(|p| p.0.as_str()).unwrap_or("")),
                esc(&o.created)
            ));
            for v in &o.violations {
                h.push_str(&format!("<p class=\"bad\">Violation: {}</p>", esc(v)));
            }
            h.push_str("<table><caption>Where its data lived</caption><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Region</th><th scope=\"col\">Jurisdiction</th><th scope=\"col\">Node</th><th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Allowed</th><th scope=\"col\">Note</th></tr></thead><tbody>");
            for i in &o.intervals {
                h.push_str(&format!(
                    "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&i.kind), esc(&i.kind), esc(&i.region), esc(&i.jurisdiction),
                    esc(i.node.as_deref().unwrap_or("")), esc(&i.from),
                    esc(i.to.as_deref().unwrap_or("now")), if i.allowed { "yes" } else { "<strong>no</strong>" }, esc(&i.note)
                ));
            }
            h.push_str("</tbody></table>");
            if !o.moves.is_empty() {
                h.push_str("<table><caption>Moves</caption><thead><tr><th scope=\"col\">Operation</th><th scope=\"col\">From</th><th scope=\"col\">To</th><th scope=\"col\">Started</th><th scope=\"col\">Finished</th><th scope=\"col\">Outcome</th><th scope=\"col\">By</th><th scope=\"col\">Reason</th></tr></thead><tbody>");
                for m in &o.moves {
                    h.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&m.operation), esc(&m.from_region), esc(&m.to_region), esc(&m.started),
                        esc(m.finished.as_deref().unwrap_or("running")), esc(&m.outcome), esc(&m.requested_by), esc(&m.reason)
                    ));
                }
                h.push_str("</tbody></table>");
            }
            if !o.stores.is_empty() {
                h.push_str("<table><caption>What each region's store holds</caption><thead><tr><th scope=\"col\">Region</th><th scope=\"col\">Prefix</th><th scope=\"col\">Objects</th><th scope=\"col\">Bytes</th><th scope=\"col\">Explained by the ledger</th></tr></thead><tbody>");
                for s in &o.stores {
                    h.push_str(&format!(
                        "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&s.region), esc(&s.prefix), s.objects, s.bytes,
                        if s.explained || s.objects == 0 { "yes" } else { "<strong>no</strong>" }
                    ));
                }
                h.push_str("</tbody></table>");
            }
            h.push_str("</section>");
        }
        h.push_str("</main></body></html>\n");
        h
    }
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fff}\
main{max-width:70rem;margin:0 auto;padding:1.5rem}h1{margin:0 0 .25rem}.meta{color:#555}\
table{border-collapse:collapse;width:100%;margin:.75rem 0 1.25rem;font-size:13px}\
caption{text-align:left;font-weight:600;padding:.25rem 0}th,td{border:1px solid #ccc;padding:.3rem .45rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.ok{color:#0a6b2f}.bad{color:#a40e0e}.warn{color:#7a5200}\
.verdict{font-size:.8em;border:1px solid currentColor;border-radius:.3em;padding:0 .35em}\
section.org{border-top:2px solid #ddd;padding-top:.5rem;break-inside:avoid-page}\
code{font-size:.9em;word-break:break-all}@media print{main{max-width:none;padding:0}a{color:inherit}}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
