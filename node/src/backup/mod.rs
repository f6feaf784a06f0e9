//! Continuous backup of every hosted tenant to the object store of the node's region.
//!
//! [`replicator`] ships (and alone checkpoints) tenants' WAL, [`format`] says what every object
//! holds and is called, [`restore`] reads it back, [`wal`] reads SQLite's WAL, [`store`] opens
//! the region's object store. Nothing here knows the node above it: the replicator is given the
//! tenant files and the hosted state it ships from.
//!
//! Keeps true: every object is created once under its generation and never overwritten (but a
//! pack scrubbed of a purged org, which keeps every other tenant's bytes), and nothing a restore
//! needs is removed or checkpointed away before it is in the store.

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

pub mod format;
pub mod marker;
pub mod replicator;
pub mod restore;
pub mod store;
pub mod wal;

/// An error of the backup machinery itself (a local database, a task), not of the store.
fn internal(e: impl std::fmt::Display) -> hemvist_proto::HemvistError {
    hemvist_proto::HemvistError::internal(format!("backup: {e}"))
}

/// The big-endian `u32` at `at` in `b` (SQLite's WAL and hemvist's object headers use them).
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian `u64` at `at` in `b`.
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// How [`format_time`] writes a time: RFC 3339, UTC, milliseconds.
const TIME_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// What [`parse_time`] reads: RFC 3339 in UTC, the fraction and the `Z` optional.
const TIME_INPUT: &[BorrowedFormatItem<'static>] = format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]][optional [Z]]"
);

/// A time as people read it in messages: RFC 3339, UTC, milliseconds. A time past what the
/// calendar can write (beyond year 9999) reads as its milliseconds, which [`parse_time`] takes.
pub fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(TIME_FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses what `--at` takes: `now`, milliseconds since the epoch, or RFC 3339 in UTC
/// (`2026-11-25T08:05:59Z`, `2026-11-25T08:05:59.250Z`, or without the `Z`). Digits of a
/// second finer than milliseconds are dropped.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(crate::clock::now_ms());
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::PrimitiveDateTime::parse(s, TIME_INPUT).map_err(|_| {
        format!("{s:?} is not a time: use RFC 3339 in UTC (2026-11-25T08:05:59Z), milliseconds since 1970, or now")
    })?;
    let nanos = t.assume_utc().unix_timestamp_nanos();
    // Within i64 milliseconds: the calendar ends at year 9999.
    Ok(nanos.div_euclid(1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_time(1_764_057_600_123),
            "2025-11-25T08:00:00.123Z"
        );
        for ms in [0, 1_764_057_600_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(super::parse_time(&super::format_time(ms)), Ok(ms));
        }
        assert_eq!(
            super::parse_time("2025-11-25T08:00:00Z"),
            Ok(1_764_057_600_000)
        );
        assert_eq!(super::parse_time("1764057600000"), Ok(1_764_057_600_000));
        assert_eq!(
            super::parse_time(" 2025-11-25T08:00:00.25 "),
            Ok(1_764_057_600_250)
        );
        assert_eq!(
            super::parse_time("2025-11-25T08:00:00.123999Z"),
            Ok(1_764_057_600_123)
        );
        assert_eq!(super::format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(super::format_time(i64::MAX), i64::MAX.to_string());
        let now = super::parse_time("now").unwrap();
        assert!((now - crate::clock::now_ms()).abs() < 60_000);
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-11-25",
            "2025-11-25T25:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-11-25T08:00:00+02:00",
            "2025-11-25T08:00:00.Z",
            "2025-11-25T08:00:00Zjunk",
        ] {
            assert!(super::parse_time(bad).is_err(), "{bad}");
        }
    }
}
