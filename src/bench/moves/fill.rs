//! Filling a tenant to a size through the node's own write path (the write gate, the tenant's
//! writer, the replicator's dirty mark), then waiting until its backups hold all of it.
//!
//! The bulk is in the contacts' notes: text whose "letters" are ASCII punctuation. It
//! compresses about as text does (a vocabulary of words, some far more common than others),
//! but FTS5's unicode61 tokenizer sees only separators in it, so the fill costs its bytes and
//! not an index the size of the data. It goes in one transaction: filled in several, a large
//! tenant would be snapshotted whole after every 64 MiB of WAL the replicator ships.

use std::time::Duration;

use anyhow::{bail, Context};
use hemvist_node::Node;
use hemvist_proto::OrgId;

use super::system::System;
use crate::dev::demo::Rng;

/// The size of one contact's notes.
const NOTES_BYTES: usize = 64 * 1024;
/// The "letters" of the filler text: separators to FTS5's unicode61 tokenizer.
const MARKS: &[u8] = b"!#$%&*+-./:;<=>?@^_~|";

/// Words of 2 to 9 marks.
fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..4096)
        .map(|_| {
            let len = 2 + (rng.next_u64() % 8) as usize;
            (0..len)
                .map(|_| MARKS[(rng.next_u64() % MARKS.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn notes(rng: &mut Rng, words: &[Vec<u8>]) -> String {
    let mut out = Vec::with_capacity(NOTES_BYTES + 16);
    while out.len() < NOTES_BYTES {
        // The product of two uniform picks: small indexes (common words) come far more often.
        let a = rng.next_u64() % words.len() as u64;
        let b = rng.next_u64() % words.len() as u64;
        out.extend_from_slice(&words[(a * b / words.len() as u64) as usize]);
        out.push(b' ');
    }
    // Only ASCII marks and spaces: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

fn file_bytes(node: &Node, org: &OrgId) -> anyhow::Result<u64> {
    Ok(node.writer.read(org, |c| {
        c.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get::<_, i64>(0),
        )
    })? as u64)
}

/// Fills `org` on `node` to at least `mb` MiB of database; its size in bytes.
pub fn fill(node: &Node, org: &OrgId, mb: u64) -> anyhow::Result<u64> {
    let target = (mb << 20) as i64;
    let mut rng = Rng::new(0x6d6f_7665 ^ mb);
    let words = vocabulary(&mut rng);
    node.writer
        .write(org, |tx| {
            let mut insert = tx.prepare(
                "INSERT INTO contacts (name, email, company, city, phone, notes, created_ms, updated_ms)
                 VALUES (?1, ?2, 'Fyllnad AB', 'Uppsala', '', ?3, ?4, ?4)",
            )?;
            let mut size = tx.prepare(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            )?;
            let mut i = 0u64;
            while size.query_row([], |r| r.get::<_, i64>(0))? < target {
                for _ in 0..16 {
                    i += 1;
                    insert.execute(rusqlite::params![
                        format!("Fill Contact {i}"),
                        format!("fill{i}@example.com"),
                        notes(&mut rng, &words),
                        hemvist_node::now_ms(),
                    ])?;
                }
            }
            Ok(())
        })
        .with_context(|| format!("fill {org}"))?;
    file_bytes(node, org)
}

/// Waits until the org's backups hold everything and its newest snapshot is after the fill
/// (so no snapshot the fill made due falls into a measured move), and the control plane sees
/// its replication lag at 0.
pub fn settle_backups(sys: &System, org: &OrgId) -> anyhow::Result<()> {
    let node = sys.node_hosting(org)?;
    let backup = node
        .backup
        .as_ref()
        .context("the org's node keeps no backups")?;
    for _ in 0..10 {
        // A pass looks at the tenant only when it is marked; a due snapshot is taken then.
        let mark = backup.mark_dirty(org);
        backup
            .wait_durable(org, mark, Duration::from_secs(600))
            .with_context(|| format!("wait for {org}'s backups"))?;
        let shipped = backup.shipped(org).context("nothing shipped")?;
        if shipped.snapshot_lsn.is_some()
            && shipped.since_snapshot < backup.config.snapshot_after_bytes
        {
            return sys.wait_for(
                &format!("{org}'s replication lag at 0"),
                Duration::from_secs(60),
                || {
                    let shown = sys.org(org).ok()?;
                    (shown["replication_lag_ms"] == 0 && !shown["backed_up_ms"].is_null())
                        .then_some(())
                },
            );
        }
    }
    bail!("{org}'s backups did not settle after 10 passes")
}
