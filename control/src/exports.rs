//! GDPR export, the control plane's part: which node makes it (the org's home, in its own
//! region, so the staging never leaves it), the ticket that node accepts, and the audit entry
//! of the handover (`org.exported`). The bytes pass through the admin API on their way to the
//! requester and are never stored here.

use hemvist_proto::{HemvistError, NodeId, OrgId, RegionId};

use crate::plane::Plane;

/// Where to fetch an export from, and with what.
pub struct ExportSource {
    pub org: OrgId,
    pub node: NodeId,
    pub region: RegionId,
    /// The node's URL, then the path and query to ask.
    pub url: String,
    /// `Authorization: Bearer` for the node; never logged.
    pub ticket: String,
}

/// How long a ticket is good for: the node must start the export within it.
const TICKET_MS: i64 = 5 * 60_000;

impl Plane {
    pub fn export_source(&self, org: &str, format: &str) -> Result<ExportSource, HemvistError> {
        let org = OrgId::parse(org)?;
        if !["sqlite", "jsonl"].contains(&format) {
            return Err(HemvistError::invalid(format!(
                "format {format:?}: use sqlite or jsonl"
            )));
        }
        let record = self
            .store
            .org(&org)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))?;
        if !self.nodes.healthy(&record.node_id) {
            return Err(HemvistError::unavailable(format!(
                "{org}'s node {} is not connected: its export is made there, in its region",
                record.node_id
            )));
        }
        let node = self.store.node(&record.node_id)?.ok_or_else(|| {
            HemvistError::unavailable(format!("node {} is unknown", record.node_id))
        })?;
        let expires = crate::clock::now_ms() + TICKET_MS;
        let ticket = hemvist_proto::ticket::export_ticket(
            &self.config.join_token,
            org.as_str(),
            format,
            expires,
        );
        Ok(ExportSource {
            url: format!(
                "{}/internal/v1/exports/{org}?format={format}&expires_ms={expires}",
                node.public_url.trim_end_matches('/')
            ),
            org,
            node: record.node_id,
            region: record.home_region,
            ticket,
        })
    }

    /// Audits the handover of an export: who, which node and region made it, and its manifest.
    pub fn record_export(
        &self,
        source: &ExportSource,
        actor: &str,
        manifest: &serde_json::Value,
    ) -> Result<(), HemvistError> {
        self.store.audit(
            actor,
            "org.exported",
            Some(&source.org),
            &serde_json::json!({
                "node": source.node,
                "region": source.region,
                "format": manifest["format"],
                "bytes": manifest["bytes"],
                "sha256": manifest["sha256"],
                "tables": manifest["tables"],
                "as_of_ms": manifest["as_of_ms"],
                "requested_by": actor,
            }),
        )?;
        Ok(())
    }
}
