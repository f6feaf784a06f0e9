//! Continuous backup of every hosted tenant to the object store of the node's region.
//!
//! [`replicator`] ships (and alone checkpoints) tenants' WAL, [`format`] says what every object
//! holds and is called, [`restore`] reads it back, [`wal`] reads SQLite's WAL, [`store`] opens
//! the region's object store. Nothing here knows the node above it: the replicator is given the
//! tenant files and the hosted state it ships from.
//!
//! Keeps true: every object is created once under its generation and never overwritten, and
//! nothing a restore needs is removed or checkpointed away before it is in the store.

pub mod format;
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

/// A time as people read it in messages: RFC 3339, UTC, milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses what `--at` takes: `now`, milliseconds since the epoch, or RFC 3339 in UTC
/// (`2026-11-25T08:05:59Z`, `2026-11-25T08:05:59.250Z`, or without the `Z`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(crate::clock::now_ms());
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("{s:?} is not a time: use RFC 3339 in UTC (2026-11-25T08:05:59Z), milliseconds since 1970, or now")
    };
    let t = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = t.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [y, m, day] = d[..] else {
        return Err(bad());
    };
    let [hh, mm, ss] = h[..] else {
        return Err(bad());
    };
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let millis: i64 = format!("{:0<3}", &frac[..frac.len().min(3)])
        .parse()
        .map_err(|_| bad())?;
    Ok(
        (days_from_civil(y, m as u32, day as u32) * 86_400 + hh * 3600 + mm * 60 + ss) * 1000
            + millis,
    )
}

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-11-25",
            "2025-11-25T25:00:00Z",
        ] {
            assert!(super::parse_time(bad).is_err(), "{bad}");
        }
    }
}
