//! The orgs a case fails over or drains, each with a little data written the way its users
//! write: an org is created (`POST /orgs`), a user is added (`POST /orgs/{id}/users`), signs
//! in at the org's node through the real form and adds a few contacts through the real form;
//! only a 303 counts as acknowledged. Then the case waits until the control plane has stored,
//! for every org, a backup position its node reported after shipping all of that.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use super::super::moves::session::{sign_in, Answer};
use super::plane::{Plane, REGION};

/// How many orgs are being set up at once (each costs two password hashes).
const PARALLEL: usize = 4;

pub struct Loaded {
    pub org: String,
    /// Contacts the node acknowledged (303).
    pub acked: u64,
    /// After the last acknowledgement (ms since the epoch, this machine's clock).
    pub written_ms: i64,
}

/// The name of the `i`th contact written to an org (counted again after the failover).
pub const ROW_PREFIX: &str = "failover-bench-row";

async fn load_one(plane: &Plane, org: String, rows: u32) -> anyhow::Result<Loaded> {
    let c = &plane.control;
    let _: Value = c
        .post(
            "/orgs",
            &json!({"id": org, "name": format!("Bench {org}"), "region": REGION,
                "residency": "EU"}),
        )
        .await
        .with_context(|| format!("create {org}"))?;
    let mut url = None;
    for _ in 0..600 {
        let shown: Value = c.get(&format!("/orgs/{org}")).await?;
        if shown["ready"] == true {
            url = shown["node_url"].as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = url.with_context(|| format!("{org} did not become ready within 30 s"))?;
    let password = hemvist_proto::random::hex(12)?;
    let email = format!("bench@{org}.example");
    let _: Value = c
        .post(
            &format!("/orgs/{org}/users"),
            &json!({"email": email, "name": "Bench User", "password": password}),
        )
        .await?;
    let session = sign_in(&url, &org, &email, &password).await?;
    let mut acked = 0;
    for i in 0..rows {
        let to = format!("{url}/o/{org}/contacts");
        match session.add_contact(&to, &format!("{ROW_PREFIX} {i}")).await {
            Answer::Acked => acked += 1,
            other => bail!("{org}: a write answered {}", other.describe()),
        }
    }
    Ok(Loaded {
        org,
        acked,
        written_ms: hemvist_node::now_ms(),
    })
}

/// Creates `orgs` (on whichever node the control plane places them: the case has started
/// only one) and writes `rows` contacts to each.
pub fn load(plane: &Plane, orgs: &[String], rows: u32) -> anyhow::Result<Vec<Loaded>> {
    let results: Vec<anyhow::Result<Loaded>> = plane.rt.block_on(
        futures::stream::iter(orgs.iter().cloned())
            .map(|org| load_one(plane, org, rows))
            .buffer_unordered(PARALLEL)
            .collect(),
    );
    results.into_iter().collect()
}

/// Waits until the control plane has stored, for every org, the position its node reported
/// after shipping everything written before `written_ms` (as tests/support/restores.rs does:
/// a report from before the writes would not do).
pub fn wait_shipped(plane: &Plane, loaded: &[Loaded], limit: Duration) -> anyhow::Result<()> {
    let mut left: HashSet<usize> = (0..loaded.len()).collect();
    plane.wait_for("every org's backup position", limit, || {
        left.retain(|&i| {
            let l = &loaded[i];
            let Ok(shown) = plane.get::<Value>(&format!("/orgs/{}", l.org)) else {
                return true;
            };
            let (known, reported) = (&shown["known_position"], &shown["replication"]);
            let shipped = reported["unshipped_since_ms"].is_null()
                && reported["shipped_ms"].as_i64() >= Some(l.written_ms)
                && known["lsn"].is_u64()
                && known["lsn"] == reported["lsn"];
            !shipped
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
        left.is_empty().then_some(())
    })
}

/// The bench's contacts in a tenant file (read with the node stopped, or from a restored copy).
pub fn count_rows(file: &std::path::Path) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("open {}", file.display()))?;
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM contacts WHERE name LIKE ?1",
            [format!("{ROW_PREFIX} %")],
            |r| r.get(0),
        )
        .with_context(|| format!("count rows in {}", file.display()))?;
    Ok(n as u64)
}

/// Rows acknowledged but not found, over all orgs, reading each org's file with `file_of`.
pub fn rows_lost(
    loaded: &[Loaded],
    file_of: impl Fn(&str) -> std::path::PathBuf,
) -> anyhow::Result<(u64, u64)> {
    let (mut acked, mut lost) = (0, 0);
    for l in loaded {
        let found = count_rows(&file_of(&l.org))?;
        acked += l.acked;
        lost += l.acked.saturating_sub(found);
    }
    Ok((acked, lost))
}
