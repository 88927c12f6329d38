//! Times written as RFC 3339 (UTC, whole seconds) for people and logs, without a
//! panic: `humantime::format_rfc3339_seconds(t).to_string()` panics for a time
//! before 1970 or past year 9999, and such times come from peers and files (a
//! router's `KeyRotated`, a history file).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 can write, in Unix seconds: 9999-12-31T23:59:59Z.
pub const LAST_UNIX_SECOND: u64 = 253_402_300_799;

/// `t` as RFC 3339 (`2026-12-01T18:00:00Z`), or `None` when it is before 1970 or
/// past year 9999.
pub fn rfc3339(t: SystemTime) -> Option<String> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() <= LAST_UNIX_SECOND).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// Unix seconds `secs` as RFC 3339, or `None` past year 9999.
pub fn unix_rfc3339(secs: u64) -> Option<String> {
    if secs > LAST_UNIX_SECOND {
        return None;
    }
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_rfc3339_can_write_are_written() {
        assert_eq!(unix_rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            unix_rfc3339(LAST_UNIX_SECOND).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_764_612_000)).as_deref(),
            Some("2025-12-01T18:00:00Z")
        );
    }

    #[test]
    fn times_past_year_9999_or_before_1970_are_none() {
        assert_eq!(unix_rfc3339(LAST_UNIX_SECOND + 1), None);
        assert_eq!(unix_rfc3339(u64::MAX), None);
        let year_10000 = UNIX_EPOCH + Duration::from_secs(LAST_UNIX_SECOND + 1);
        assert_eq!(rfc3339(year_10000), None);
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), None);
    }
}
