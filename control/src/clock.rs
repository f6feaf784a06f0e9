//! Wall-clock time as the control plane records it: milliseconds since the Unix epoch, never
//! failing (a clock before 1970 reads as 0).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-12-02T21:00:00.123Z` for milliseconds since 1970 (UTC, as the audit log shows times).
pub fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A time as operators type it: RFC 3339 (`2026-12-02T21:00:00Z`) or milliseconds since 1970.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!("{s:?} is not a time: use RFC 3339 (2026-12-02T21:00:00Z) or milliseconds since 1970")
        })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_round_trip() {
        assert_eq!(
            super::format_ms(1_764_057_600_123),
            "2025-11-25T08:00:00.123Z"
        );
        assert_eq!(
            super::parse_time("2025-11-25T08:00:00.123Z"),
            Ok(1_764_057_600_123)
        );
        assert_eq!(super::parse_time("1764057600000"), Ok(1_764_057_600_000));
        assert!(super::parse_time("yesterday").is_err());
    }
}
