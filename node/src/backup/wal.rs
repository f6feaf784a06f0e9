//! Reading a tenant's WAL file directly: the transactions committed after a position, each frame
//! verified the way SQLite verifies it (the header's salts and the running checksum), so a torn
//! or stale frame is never shipped. Only whole transactions are returned: frames after the last
//! commit frame are an unfinished transaction and wait for the next read.
//!
//! Layout (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page size,
//! checkpoint sequence, salt-1, salt-2, checksum), then frames of a 24-byte header (page number,
//! database size in pages if it commits, salts, cumulative checksum) and one page.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::be32;

pub const HEADER: u64 = 32;
pub const FRAME_HEADER: u64 = 24;

/// How far a WAL has been read: which incarnation of it (its salts; `None` right after a
/// checkpoint emptied it, when any new header is the expected next one), how many of its frames,
/// and the running checksum after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WalPos {
    pub salts: Option<(u32, u32)>,
    pub frames: u64,
    pub checksum: (u32, u32),
}

/// The transactions read, collapsed: the newest content of every page they wrote, and the
/// database size after the last one. Applying it equals applying them one by one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub page_size: u32,
    pub db_pages: u32,
    pub pages: BTreeMap<u32, Vec<u8>>,
    /// Frames read (committed ones only).
    pub frames: u64,
}

#[derive(Debug)]
pub enum WalRead {
    /// No WAL, or no new committed transaction.
    Nothing,
    /// The WAL now holds another incarnation than the position's: frames may have been
    /// checkpointed without being read, so what was missed must be recovered another way.
    Restarted,
    Read {
        changes: Changes,
        next: WalPos,
    },
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn checksum(little_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let w = [b[0], b[1], b[2], b[3]];
            if little_endian {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        s0 = s0.wrapping_add(word(&pair[0..4]).wrapping_add(s1));
        s1 = s1.wrapping_add(word(&pair[4..8]).wrapping_add(s0));
    }
    (s0, s1)
}

/// Reads the transactions committed after `from` (`None`: from the start of the WAL), stopping
/// after the first commit that brings the collected pages past `max_bytes`.
pub fn read_since(wal: &Path, from: Option<&WalPos>, max_bytes: usize) -> std::io::Result<WalRead> {
    let mut file = match std::fs::File::open(wal) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WalRead::Nothing),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < HEADER {
        return Ok(WalRead::Nothing);
    }
    let mut header = [0u8; HEADER as usize];
    file.read_exact(&mut header)?;
    let magic = be32(&header, 0);
    let little_endian = match magic {
        0x377f0682 => true,
        0x377f0683 => false,
        _ => return Ok(WalRead::Nothing),
    };
    let page_size = be32(&header, 8);
    let salts = (be32(&header, 16), be32(&header, 20));
    let header_sum = (be32(&header, 24), be32(&header, 28));
    if checksum(little_endian, &header[..24], (0, 0)) != header_sum
        || !(512..=65536).contains(&page_size)
        || !page_size.is_power_of_two()
    {
        // A header being rewritten, or not a WAL at all: nothing to ship yet.
        return Ok(WalRead::Nothing);
    }
    let start = match from {
        Some(p) if p.salts == Some(salts) => *p,
        Some(p) if p.salts.is_some() || p.frames > 0 => return Ok(WalRead::Restarted),
        _ => WalPos {
            salts: Some(salts),
            frames: 0,
            checksum: header_sum,
        },
    };
    let frame_len = FRAME_HEADER + page_size as u64;
    file.seek(SeekFrom::Start(HEADER + start.frames * frame_len))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut frame = vec![0u8; frame_len as usize];
    let (mut sum, mut frames) = (start.checksum, start.frames);
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut changes = Changes {
        page_size,
        ..Default::default()
    };
    let mut committed = start;
    let mut bytes = 0usize;
    while HEADER + (frames + 1) * frame_len <= len {
        reader.read_exact(&mut frame)?;
        if (be32(&frame, 8), be32(&frame, 12)) != salts {
            break;
        }
        sum = checksum(little_endian, &frame[..8], sum);
        sum = checksum(little_endian, &frame[FRAME_HEADER as usize..], sum);
        if sum != (be32(&frame, 16), be32(&frame, 20)) {
            break;
        }
        frames += 1;
        let page = be32(&frame, 0);
        pending.push((page, frame[FRAME_HEADER as usize..].to_vec()));
        let commit = be32(&frame, 4);
        if commit > 0 {
            for (page, data) in pending.drain(..) {
                bytes += data.len();
                changes.pages.insert(page, data);
            }
            // A shrinking database drops the pages past its end.
            changes.pages.retain(|&p, _| p <= commit);
            changes.db_pages = commit;
            changes.frames += frames - committed.frames;
            committed = WalPos {
                salts: Some(salts),
                frames,
                checksum: sum,
            };
            if bytes >= max_bytes {
                break;
            }
        }
    }
    if changes.frames == 0 {
        return Ok(WalRead::Nothing);
    }
    Ok(WalRead::Read {
        changes,
        next: committed,
    })
}

/// The WAL file beside a database file.
pub fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    std::path::PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn open(path: &Path) -> Connection {
        let c = Connection::open(path).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no autocheckpoint");
        c
    }

    /// Applies `changes` to a copy of the database file as of before them.
    fn apply(db: &Path, changes: &Changes) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .expect("open db");
        for (page, data) in &changes.pages {
            f.seek(SeekFrom::Start(
                (*page as u64 - 1) * changes.page_size as u64,
            ))
            .expect("seek");
            f.write_all(data).expect("write");
        }
        f.set_len(changes.db_pages as u64 * changes.page_size as u64)
            .expect("truncate");
    }

    #[test]
    fn reads_committed_transactions_and_continues_from_a_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let c = open(&db);
        c.execute_batch("CREATE TABLE t (x TEXT); PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("schema");
        let base = dir.path().join("base.db");
        std::fs::copy(&db, &base).expect("copy");
        c.execute("INSERT INTO t VALUES ('one')", [])
            .expect("insert");
        let WalRead::Read { changes, next } =
            read_since(&wal_path(&db), None, usize::MAX).expect("read")
        else {
            panic!("expected frames");
        };
        assert!(changes.frames >= 1 && changes.db_pages >= 2);
        assert!(matches!(
            read_since(&wal_path(&db), Some(&next), usize::MAX).expect("read"),
            WalRead::Nothing
        ));
        // An unfinished transaction is not shipped; once committed, it is.
        c.execute_batch("BEGIN; INSERT INTO t VALUES ('two');")
            .expect("begin");
        c.execute("INSERT INTO t SELECT x || '!' FROM t", [])
            .expect("more");
        c.execute_batch("COMMIT").expect("commit");
        let WalRead::Read {
            changes: more,
            next: after,
        } = read_since(&wal_path(&db), Some(&next), usize::MAX).expect("read")
        else {
            panic!("expected the second transaction");
        };
        assert!(after.frames > next.frames);
        apply(&base, &changes);
        apply(&base, &more);
        let restored = Connection::open(&base).expect("open restored");
        let rows: Vec<String> = restored
            .prepare("SELECT x FROM t ORDER BY x")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows, ["one", "one!", "two", "two!"]);
    }

    #[test]
    fn a_restarted_wal_is_reported_and_a_torn_frame_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let c = open(&db);
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .expect("schema");
        let WalRead::Read { next, .. } =
            read_since(&wal_path(&db), None, usize::MAX).expect("read")
        else {
            panic!("expected frames");
        };
        // Flip one byte in the last frame: the checksum no longer matches, so the frames from
        // there on are not read.
        let wal = wal_path(&db);
        c.execute("INSERT INTO t VALUES (2)", []).expect("insert");
        let good = std::fs::read(&wal).expect("wal");
        let mut torn = good.clone();
        let last = torn.len() - 10;
        torn[last] ^= 0xff;
        std::fs::write(&wal, &torn).expect("write");
        assert!(matches!(
            read_since(&wal, Some(&next), usize::MAX).expect("read"),
            WalRead::Nothing
        ));
        std::fs::write(&wal, &good).expect("write");
        // A checkpoint that empties the WAL, then a new write: another incarnation.
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
        c.execute("INSERT INTO t VALUES (3)", []).expect("insert");
        assert!(matches!(
            read_since(&wal, Some(&next), usize::MAX).expect("read"),
            WalRead::Restarted
        ));
        // Right after our own checkpoint (no salts expected) any new incarnation is fine.
        let fresh = WalPos::default();
        assert!(matches!(
            read_since(&wal, Some(&fresh), usize::MAX).expect("read"),
            WalRead::Read { .. }
        ));
    }
}
